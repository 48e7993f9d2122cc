//! A line-oriented SMTP client for driving a server by hand in tests.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a [`Client`] talks over: TCP, or TLS over TCP after STARTTLS.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

/// Limit for connecting, each reply and each write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Client::is_closed`] waits for the server to close.
pub const CLOSE_PROBE: Duration = Duration::from_secs(2);
const MAX_REPLY_LINES: usize = 1_000;
const MAX_LINE: usize = 64 * 1024;
const MAX_READS: usize = 100_000;

/// One SMTP reply. `lines` hold the text after "NNN-" / "NNN ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines' text joined with "\n".
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// "NNN first-line-text", what [`Reply::matches`] compares against.
    pub fn first_line(&self) -> String {
        format!("{} {}", self.code, self.lines.first().map_or("", |l| l))
    }

    /// Whether the reply starts with `expect`: "2", "250", "550 5.7.1", ...
    pub fn matches(&self, expect: &str) -> bool {
        self.first_line().starts_with(expect)
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// For EHLO replies: whether some line's keyword is `keyword`
    /// (case-insensitive), e.g. `has_capability("CHUNKING")`.
    pub fn has_capability(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

impl fmt::Display for Reply {
    /// The reply as it was on the wire, lines separated by "\n".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        if n == 0 {
            write!(f, "{}", self.code)?;
        }
        Ok(())
    }
}

/// Dot-stuffs message data for DATA: a '.' starting a line (at the very
/// start or after CRLF) is doubled.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut bol = true;
    for (i, &b) in data.iter().enumerate() {
        if bol && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        bol = b == b'\n' && i > 0 && data[i - 1] == b'\r';
    }
    out
}

/// SMTP client over a TCP connection; every read is bounded by
/// [`IO_TIMEOUT`].
pub struct Client {
    stream: Box<dyn ClientStream>,
    local: SocketAddr,
    buf: Vec<u8>,
    greeting: Reply,
    peer: SocketAddr,
}

impl Client {
    /// Connects and reads the greeting (whatever its code); panics on
    /// failure.
    pub async fn connect(addr: SocketAddr) -> Client {
        match Self::try_connect(addr).await {
            Ok(client) => client,
            Err(e) => panic!("Client::connect({addr}): {e}"),
        }
    }

    /// Connects and reads the greeting; an error if either fails.
    pub async fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let mut client = Client {
            stream: Box::new(stream),
            local,
            buf: Vec::new(),
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
            peer: addr,
        };
        client.greeting = client
            .read_reply_inner()
            .await
            .map_err(|e| io::Error::other(format!("reading greeting: {e}")))?;
        Ok(client)
    }

    /// The greeting read by `connect`.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The server address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Our own address (to tell connections apart).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `STARTTLS`, expects `220`, and does the handshake with `tls`
    /// (anything pipelined is up to the caller: send it with `send_raw` first).
    /// Bytes the server sent before the handshake are discarded.
    pub async fn starttls(
        &mut self,
        tls: &tokio_rustls::TlsConnector,
        name: &str,
    ) -> io::Result<()> {
        self.cmd("STARTTLS", "220").await;
        self.handshake(tls, name).await
    }

    /// The TLS handshake on this connection, now (after a `220` to STARTTLS).
    pub async fn handshake(
        &mut self,
        tls: &tokio_rustls::TlsConnector,
        name: &str,
    ) -> io::Result<()> {
        let name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::empty()));
        self.buf.clear();
        let stream = tokio::time::timeout(IO_TIMEOUT, tls.connect(name, plain))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.stream = Box::new(stream);
        Ok(())
    }

    /// Writes `line` + CRLF; panics on failure.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Writes the bytes as they are; panics on failure.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send_raw(bytes).await {
            panic!("Client::send_raw to {}: {e}", self.peer);
        }
    }

    /// Writes the bytes as they are.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.try_send_raw_within(bytes, IO_TIMEOUT).await
    }

    /// [`Client::try_send_raw`] allowed `limit` instead of [`IO_TIMEOUT`] (a
    /// load test whose relay reads many sessions at once, in back-pressure).
    pub async fn try_send_raw_within(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        match tokio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Reads one (possibly multi-line) reply; panics on EOF, timeout or a
    /// malformed line.
    pub async fn read_reply(&mut self) -> Reply {
        match self.read_reply_inner().await {
            Ok(reply) => reply,
            Err(e) => panic!("Client::read_reply from {}: {e}", self.peer),
        }
    }

    /// Reads one reply; `None` on EOF, timeout or a malformed line.
    pub async fn try_read_reply(&mut self) -> Option<Reply> {
        self.read_reply_inner().await.ok()
    }

    /// Sends `line`, reads the reply and asserts it starts with `expect`
    /// ("250", "550 5.7.1", ...).
    pub async fn cmd(&mut self, line: &str, expect: &str) -> Reply {
        self.send(line).await;
        let reply = match self.read_reply_inner().await {
            Ok(reply) => reply,
            Err(e) => panic!("command {line:?}: expected reply starting with {expect:?}, got {e}"),
        };
        assert!(
            reply.matches(expect),
            "command {line:?}: expected reply starting with {expect:?}, got:\n{reply}"
        );
        reply
    }

    /// `EHLO name`, expecting 250; returns the capability reply.
    pub async fn ehlo(&mut self, name: &str) -> Reply {
        self.cmd(&format!("EHLO {name}"), "250").await
    }

    /// `QUIT`, expecting 221.
    pub async fn quit(&mut self) -> Reply {
        self.cmd("QUIT", "221").await
    }

    /// MAIL FROM, RCPT TO for each (each expecting 250), DATA (expecting
    /// 354), the dot-stuffed data and ".CRLF"; returns the final reply
    /// unchecked. EHLO must have been done; `data` must end with CRLF.
    pub async fn send_message(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> Reply {
        assert!(
            data.ends_with(b"\r\n"),
            "Client::send_message: data must end with CRLF"
        );
        self.envelope(from, rcpts).await;
        self.cmd("DATA", "354").await;
        let mut body = dot_stuff(data);
        body.extend_from_slice(b".\r\n");
        self.send_raw(&body).await;
        self.read_reply().await
    }

    /// Like [`Client::send_message`] but any refusal along the way (MAIL,
    /// RCPT, DATA) is returned instead of panicking, the transaction reset.
    pub async fn try_send_message(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> Reply {
        let mut lines = vec![format!("MAIL FROM:<{from}>")];
        lines.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
        lines.push("DATA".into());
        for line in lines {
            self.send(&line).await;
            let reply = self.read_reply().await;
            if reply.code >= 400 {
                if reply.code != 421 {
                    self.send("RSET").await;
                    let _ = self.read_reply().await;
                }
                return reply;
            }
        }
        let mut body = dot_stuff(data);
        body.extend_from_slice(b".\r\n");
        self.send_raw(&body).await;
        self.read_reply().await
    }

    /// Like [`Client::send_message`] but with BDAT chunks of `chunk` bytes
    /// (LAST on the final one; "BDAT 0 LAST" for empty data). Each
    /// intermediate chunk must get 250; returns the final reply unchecked.
    pub async fn send_bdat(
        &mut self,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
        chunk: usize,
    ) -> Reply {
        assert!(chunk > 0, "Client::send_bdat: chunk size must be > 0");
        self.envelope(from, rcpts).await;
        if data.is_empty() {
            self.send("BDAT 0 LAST").await;
            return self.read_reply().await;
        }
        let n = data.len().div_ceil(chunk);
        for (i, part) in data.chunks(chunk).enumerate() {
            let last = i + 1 == n;
            let mut bytes =
                format!("BDAT {}{}\r\n", part.len(), if last { " LAST" } else { "" }).into_bytes();
            bytes.extend_from_slice(part);
            self.send_raw(&bytes).await;
            let reply = self.read_reply().await;
            if last {
                return reply;
            }
            assert!(
                reply.matches("250"),
                "BDAT chunk {} of {n} ({} bytes): expected 250, got:\n{reply}",
                i + 1,
                part.len()
            );
        }
        unreachable!("send_bdat: data has at least one chunk")
    }

    async fn envelope(&mut self, from: &str, rcpts: &[&str]) {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for rcpt in rcpts {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), "250").await;
        }
    }

    /// True if the server has closed the connection (EOF or reset within
    /// [`CLOSE_PROBE`]). Bytes read meanwhile stay available to
    /// `read_reply`.
    pub async fn is_closed(&mut self) -> bool {
        let deadline = Instant::now() + CLOSE_PROBE;
        let mut tmp = [0u8; 4096];
        for _ in 0..MAX_READS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.stream.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits up to `wait` for the server to send a complete line, keeping what
    /// arrives for [`Client::read_reply`]: true once a line is buffered, false
    /// on timeout, EOF or a read error. For pacing slow writers without sleeping.
    pub async fn line_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut tmp = [0u8; 4096];
        for _ in 0..MAX_READS {
            if self.buf.contains(&b'\n') {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.stream.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
        false
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut code = 0u16;
        let mut lines = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = self.read_line(deadline).await?;
            let bytes = line.as_bytes();
            let this_code = match line.get(..3).map(str::parse::<u16>) {
                Some(Ok(c)) if bytes[..3].iter().all(u8::is_ascii_digit) => c,
                _ => return Err(format!("malformed reply line {line:?}")),
            };
            if lines.is_empty() {
                code = this_code;
            } else if this_code != code {
                return Err(format!(
                    "reply code changed mid-reply: {code} then {line:?}"
                ));
            }
            let more = match bytes.get(3) {
                None | Some(b' ') => false,
                Some(b'-') => true,
                Some(_) => return Err(format!("malformed reply line {line:?}")),
            };
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
        Err(format!("more than {MAX_REPLY_LINES} reply lines"))
    }

    async fn read_line(&mut self, deadline: Instant) -> Result<String, String> {
        let mut tmp = [0u8; 4096];
        for _ in 0..MAX_READS {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let raw = &raw[..i];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                return Ok(String::from_utf8_lossy(raw).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("reply line longer than {MAX_LINE} bytes"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let partial = |buf: &[u8]| String::from_utf8_lossy(buf).into_owned();
            match tokio::time::timeout(left, self.stream.read(&mut tmp)).await {
                Err(_) => {
                    return Err(format!(
                        "timed out after {IO_TIMEOUT:?} waiting for a reply (partial: {:?})",
                        partial(&self.buf)
                    ));
                }
                Ok(Ok(0)) => {
                    return Err(format!(
                        "connection closed by server (partial: {:?})",
                        partial(&self.buf)
                    ));
                }
                Ok(Err(e)) => {
                    return Err(format!(
                        "read error: {e} (partial: {:?})",
                        partial(&self.buf)
                    ));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
        Err("too many reads for one line".to_string())
    }
}

/// Sends one message from `s@client.test` to each of `rcpts` over one
/// session (`Subject: m0`, `m1`, ...), asserting every `250`; returns the
/// queue ids from the replies.
pub async fn send_each(smtp: SocketAddr, rcpts: &[&str]) -> Vec<String> {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    let mut ids = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        let data = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        let reply = c.send_message("s@client.test", &[r], data.as_bytes()).await;
        assert!(reply.matches("250 2.0.0 Ok: queued as"), "{r}: {reply}");
        ids.push(
            reply
                .first_line()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    c.quit().await;
    ids
}
