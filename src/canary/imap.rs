//! A small IMAP4rev1 client (RFC 3501, also fine with IMAP4rev2 servers, RFC
//! 9051) for the canary's end-to-end check: log in, select the mailbox,
//! `UID SEARCH HEADER X-Breakwater-Canary TOKEN`, and delete what it finds
//! (`UID STORE +FLAGS.SILENT (\Deleted)`, then `UID EXPUNGE` with UIDPLUS or
//! `EXPUNGE`). Responses are read whole, literals (`{N}`) included; every
//! read has a timeout; sizes and counts are bounded; no server input panics.
//!
//! TLS (`tls`, `starttls`) uses the delivery client's configuration: ring,
//! TLS 1.2/1.3, and, like towards the backends, no certificate verification
//! (the IMAP server is the organisation's own, often self-signed).

use super::{ImapConfig, ImapTls};
use crate::delivery::tls::Stream;
use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connecting, and each read or write, may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest response line (literals not counted).
const MAX_LINE: usize = 64 * 1024;
/// Largest literal taken.
const MAX_LITERAL: usize = 1024 * 1024;
/// Most bytes in one logical line (line and literals).
const MAX_RESPONSE_LINE: usize = 4 * 1024 * 1024;
/// Most untagged lines before a tagged answer.
const MAX_UNTAGGED: usize = 100_000;
/// Most bytes of untagged lines kept for one command's answer.
const MAX_ANSWER: usize = 8 * 1024 * 1024;
/// Most UIDs taken from SEARCH answers.
const MAX_UIDS: usize = 10_000;

/// Why an IMAP exchange failed.
#[derive(Debug)]
pub enum Error {
    /// Connection trouble (refused, reset, TLS).
    Io(std::io::Error),
    /// No answer in time.
    Timeout(&'static str),
    /// The server answered NO or BAD (or BYE).
    Refused(String),
    /// The server said something we cannot read.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "imap: {e}"),
            Error::Timeout(what) => write!(f, "imap: no answer in time ({what})"),
            Error::Refused(t) => write!(f, "imap: refused: {t}"),
            Error::Protocol(t) => write!(f, "imap: {t}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// Logs in with `cfg`, looks for messages whose `X-Breakwater-Canary` header
/// holds `token`, deletes them and logs out. True if any was found.
pub async fn find_and_delete(cfg: &ImapConfig, token: &str) -> Result<bool, Error> {
    let password = cfg.password().map_err(Error::Protocol)?;
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(&cfg.host))
        .await
        .map_err(|_| Error::Timeout("connect"))??;
    let server = cfg
        .host
        .rsplit_once(':')
        .map_or(cfg.host.as_str(), |(h, _)| h);
    let server = server
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut conn = match cfg.tls {
        ImapTls::None => Conn::new(Stream::Plain(tcp)),
        ImapTls::Tls => Conn::new(Stream::Tls(Box::new(handshake(tcp, &server).await?))),
        ImapTls::Starttls => {
            let mut plain = Conn::new(tcp);
            plain.greeting().await?;
            plain.command(&[Arg::Atom("STARTTLS")]).await?;
            let tcp = plain.into_inner()?;
            let mut c = Conn::new(Stream::Tls(Box::new(handshake(tcp, &server).await?)));
            c.greeted = true;
            c
        }
    };
    let found = conn.session(cfg, &password, token).await;
    // Polite, bounded, and its outcome changes nothing.
    let _ = tokio::time::timeout(TIMEOUT, conn.command(&[Arg::Atom("LOGOUT")])).await;
    found
}

async fn handshake(
    tcp: TcpStream,
    server: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let name = rustls::pki_types::ServerName::try_from(server.to_owned())
        .map_err(|e| Error::Protocol(format!("server name {server:?}: {e}")))?;
    let connector = crate::delivery::tls::connector();
    tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::Timeout("TLS handshake"))?
        .map_err(Error::Io)
}

/// One argument of a command.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    /// Sent as is (keywords, sequence sets).
    Atom(&'a str),
    /// Sent as a quoted string, or as a literal if it cannot be quoted.
    Str(&'a str),
}

/// A connection: the stream, what was read past the last line, the tag.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    tag: u32,
    greeted: bool,
}

/// A tagged answer and the untagged lines before it.
#[derive(Debug)]
struct Answer {
    untagged: Vec<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
            tag: 0,
            greeted: false,
        }
    }

    /// The stream back, for STARTTLS; refused if the server sent more than
    /// its answer (bytes that would be taken as if they came over TLS).
    fn into_inner(self) -> Result<S, Error> {
        if !self.buf.is_empty() {
            return Err(Error::Protocol(
                "data after the STARTTLS answer (injection?)".into(),
            ));
        }
        Ok(self.stream)
    }

    /// Log in, select, search, delete.
    async fn session(
        &mut self,
        cfg: &ImapConfig,
        password: &str,
        token: &str,
    ) -> Result<bool, Error> {
        self.greeting().await?;
        self.command(&[Arg::Atom("LOGIN"), Arg::Str(&cfg.user), Arg::Str(password)])
            .await?;
        let caps = self.command(&[Arg::Atom("CAPABILITY")]).await?;
        let uidplus = caps.untagged.iter().any(|l| {
            let l = String::from_utf8_lossy(l).to_ascii_uppercase();
            l.starts_with("* CAPABILITY ") && l.split(' ').any(|w| w == "UIDPLUS")
        });
        self.command(&[Arg::Atom("SELECT"), Arg::Str(&cfg.mailbox)])
            .await?;
        let search = self
            .command(&[
                Arg::Atom("UID SEARCH HEADER"),
                Arg::Str("X-Breakwater-Canary"),
                Arg::Str(token),
            ])
            .await?;
        let uids = search_uids(&search.untagged);
        if uids.is_empty() {
            return Ok(false);
        }
        let set = uids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.command(&[
            Arg::Atom("UID STORE"),
            Arg::Atom(&set),
            Arg::Atom("+FLAGS.SILENT (\\Deleted)"),
        ])
        .await?;
        if uidplus {
            self.command(&[Arg::Atom("UID EXPUNGE"), Arg::Atom(&set)])
                .await?;
        } else {
            self.command(&[Arg::Atom("EXPUNGE")]).await?;
        }
        Ok(true)
    }

    /// Reads the greeting: `* OK` or `* PREAUTH` goes on, `* BYE` refuses.
    async fn greeting(&mut self) -> Result<(), Error> {
        if self.greeted {
            return Ok(());
        }
        let line = self.read_line().await?;
        let text = String::from_utf8_lossy(&line);
        let upper = text.to_ascii_uppercase();
        if upper.starts_with("* OK") || upper.starts_with("* PREAUTH") {
            self.greeted = true;
            Ok(())
        } else if upper.starts_with("* BYE") {
            Err(Error::Refused(text.into_owned()))
        } else {
            Err(Error::Protocol(format!("unexpected greeting {text:?}")))
        }
    }

    /// Sends one command and reads up to its tagged answer: `Ok` for OK,
    /// [`Error::Refused`] for NO, BAD, or a BYE before it.
    async fn command(&mut self, args: &[Arg<'_>]) -> Result<Answer, Error> {
        self.tag = self.tag.wrapping_add(1);
        let tag = format!("bw{}", self.tag);
        let mut out = tag.clone().into_bytes();
        for arg in args {
            out.push(b' ');
            match arg {
                Arg::Atom(a) => out.extend_from_slice(a.as_bytes()),
                Arg::Str(s) if quotable(s) => {
                    out.push(b'"');
                    for b in s.bytes() {
                        if b == b'"' || b == b'\\' {
                            out.push(b'\\');
                        }
                        out.push(b);
                    }
                    out.push(b'"');
                }
                Arg::Str(s) => {
                    // A synchronizing literal: wait for the server's "+".
                    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
                    self.write(&out).await?;
                    out.clear();
                    let line = self.read_line().await?;
                    if !line.starts_with(b"+") {
                        return Err(Error::Refused(String::from_utf8_lossy(&line).into_owned()));
                    }
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        self.write(&out).await?;
        let mut untagged = Vec::new();
        let mut kept = 0usize;
        for _ in 0..MAX_UNTAGGED {
            let line = self.read_line().await?;
            kept += line.len();
            if kept > MAX_ANSWER {
                return Err(Error::Protocol(format!(
                    "an answer of more than {MAX_ANSWER} bytes"
                )));
            }
            if let Some(rest) = line
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            {
                let text = String::from_utf8_lossy(rest).into_owned();
                let status = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
                return match status.as_str() {
                    "OK" => Ok(Answer { untagged }),
                    "NO" | "BAD" => Err(Error::Refused(text)),
                    _ => Err(Error::Protocol(format!("bad tagged answer {text:?}"))),
                };
            }
            if line.starts_with(b"* ") {
                let is_bye = line.len() >= 5 && line[2..5].eq_ignore_ascii_case(b"BYE");
                if is_bye
                    && args
                        .first()
                        .is_some_and(|a| !matches!(a, Arg::Atom("LOGOUT")))
                {
                    return Err(Error::Refused(String::from_utf8_lossy(&line).into_owned()));
                }
                untagged.push(line);
            } else if line.starts_with(b"+") {
                return Err(Error::Protocol("unexpected continuation request".into()));
            } else {
                return Err(Error::Protocol(format!(
                    "unexpected line {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )));
            }
        }
        Err(Error::Protocol("too many untagged lines".into()))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| Error::Timeout("write"))?
        .map_err(Error::Io)
    }

    /// One logical response line without its CRLF: a line, and for each
    /// `{N}` it ends with, N literal bytes and the line that follows them.
    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        let mut logical = Vec::new();
        // Each round takes a line and maybe a literal: bounded by the size cap.
        loop {
            let line = self.physical_line().await?;
            let literal = literal_len(&line);
            logical.extend_from_slice(&line);
            let Some(n) = literal.transpose()? else {
                return Ok(logical);
            };
            if n > MAX_LITERAL || logical.len() + n > MAX_RESPONSE_LINE {
                return Err(Error::Protocol(format!(
                    "literal of {n} bytes is too large"
                )));
            }
            logical.extend_from_slice(b"\r\n");
            while self.buf.len() < n {
                self.fill().await?;
            }
            logical.extend(self.buf.drain(..n));
        }
    }

    /// A line up to CRLF (the CRLF removed).
    async fn physical_line(&mut self) -> Result<Vec<u8>, Error> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].windows(2).position(|w| w == b"\r\n") {
                let end = searched + i;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(Error::Protocol("response line too long".into()));
            }
            searched = self.buf.len().saturating_sub(1);
            self.fill().await?;
        }
    }

    /// Reads more bytes into `buf`, within [`TIMEOUT`].
    async fn fill(&mut self) -> Result<(), Error> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| Error::Timeout("read"))??;
        if n == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the IMAP server",
            )));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// True if `s` can go as a quoted string (7-bit, no CR, LF or NUL).
fn quotable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.len() < 1000
}

/// The length of the literal a line announces at its end (`{N}` or `{N+}`).
fn literal_len(line: &[u8]) -> Option<Result<usize, Error>> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = &body[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| Error::Protocol("literal length out of range".into())),
    )
}

/// The UIDs of `* SEARCH n n n` lines.
fn search_uids(untagged: &[Vec<u8>]) -> Vec<u32> {
    let mut uids = Vec::new();
    for line in untagged {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split(' ');
        if words.next() != Some("*")
            || !words
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("SEARCH"))
        {
            continue;
        }
        for w in words {
            if let Ok(uid) = w.parse::<u32>()
                && uid > 0
                && uids.len() < MAX_UIDS
            {
                uids.push(uid);
            }
        }
    }
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `conn.command(args)` against a server that answers `script`;
    /// returns the answer and what the client wrote.
    async fn exchange(script: &[u8], args: &[Arg<'_>]) -> (Result<Answer, Error>, Vec<u8>) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        server.write_all(script).await.unwrap();
        server.shutdown().await.unwrap();
        let mut conn = Conn::new(client);
        conn.greeted = true;
        let result = tokio::time::timeout(Duration::from_secs(5), conn.command(args))
            .await
            .expect("bounded");
        drop(conn);
        let mut sent = Vec::new();
        let _ = server.read_to_end(&mut sent).await;
        (result, sent)
    }

    #[tokio::test]
    async fn literals_are_read_whole_and_tagged_answers_decide() {
        let script = b"* 1 FETCH (BODY[HEADER] {16}\r\nA: b\r\nbw1 OK x\r\n)\r\n* SEARCH 4 9\r\nbw1 OK done\r\n";
        let (r, sent) = exchange(script, &[Arg::Atom("NOOP")]).await;
        let a = r.unwrap();
        assert_eq!(a.untagged.len(), 2, "{:?}", a.untagged);
        assert!(
            a.untagged[0].ends_with(b"A: b\r\nbw1 OK x\r\n)"),
            "a tag inside a literal is data"
        );
        assert_eq!(search_uids(&a.untagged), vec![4, 9]);
        assert_eq!(sent, b"bw1 NOOP\r\n");

        let (r, _) = exchange(
            b"* OK fine\r\nbw1 NO [AUTHENTICATIONFAILED] nope\r\n",
            &[Arg::Atom("X")],
        )
        .await;
        assert!(matches!(r, Err(Error::Refused(t)) if t.contains("AUTHENTICATIONFAILED")));
        let (r, _) = exchange(b"bw1 BAD syntax\r\n", &[Arg::Atom("X")]).await;
        assert!(matches!(r, Err(Error::Refused(_))));
        let (r, _) = exchange(b"* BYE going away\r\n", &[Arg::Atom("X")]).await;
        assert!(matches!(r, Err(Error::Refused(_))));
    }

    #[tokio::test]
    async fn strings_are_quoted_or_sent_as_literals() {
        let (r, sent) = exchange(
            b"bw1 OK\r\n",
            &[Arg::Atom("LOGIN"), Arg::Str("a\"b\\c"), Arg::Str("pw")],
        )
        .await;
        r.unwrap();
        assert_eq!(sent, b"bw1 LOGIN \"a\\\"b\\\\c\" \"pw\"\r\n");
        let (r, sent) = exchange(
            b"+ go\r\nbw1 OK\r\n",
            &[Arg::Atom("LOGIN"), Arg::Str("jörg")],
        )
        .await;
        r.unwrap();
        assert_eq!(sent, "bw1 LOGIN {5}\r\njörg\r\n".as_bytes());
    }

    #[tokio::test]
    async fn hostile_input_is_an_error_not_a_panic() {
        let long = [b"* ".as_slice(), &vec![b'x'; MAX_LINE + 10]].concat();
        let huge = b"* 1 FETCH {99999999999}\r\n".to_vec();
        let overflow = b"* 1 FETCH {999999999999999999999999}\r\n".to_vec();
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"bw1".to_vec(),
            b"+ \r\n".to_vec(),
            b"garbage\r\n".to_vec(),
            b"bw1 MAYBE\r\n".to_vec(),
            b"* 1 FETCH {5}\r\nab".to_vec(),
            long,
            huge,
            overflow,
            b"\xff\xfe\r\nbw1 OK\r\n".to_vec(),
        ];
        for script in cases {
            let (r, _) = exchange(&script, &[Arg::Atom("NOOP")]).await;
            assert!(
                r.is_err(),
                "{:?}",
                String::from_utf8_lossy(&script[..script.len().min(40)])
            );
        }
        assert!(literal_len(b"* x {12+}").is_some_and(|r| r.unwrap() == 12));
        assert!(literal_len(b"* x {}").is_none());
        assert!(literal_len(b"* x }").is_none());
        assert_eq!(
            search_uids(&[b"* SEARCH".to_vec(), b"* SEARCH 0 x 7 (MODSEQ 3)".to_vec()]),
            vec![7]
        );
    }

    #[tokio::test]
    async fn starttls_refuses_bytes_after_the_answer() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"bw1 OK go\r\n* injected\r\n")
            .await
            .unwrap();
        let mut conn = Conn::new(client);
        conn.greeted = true;
        conn.command(&[Arg::Atom("STARTTLS")]).await.unwrap();
        assert!(conn.into_inner().is_err());
    }
}
