//! The per-connection I/O loop: read with a timeout (or stop on shutdown), feed
//! every complete command to the [`Session`], write the replies, flush when the
//! input runs dry (so pipelined commands get their replies in one write).
//!
//! Command lines are framed here (bounded length, and the raw line is kept for
//! checks the parser normalises away) and parsed by smtp-proto's sans-IO
//! `Request::parse`; message bodies go through its `DataReceiver` (dot-unstuffing,
//! only CRLF.CRLF ends DATA) and `BdatReceiver`.

use super::reply::Reply;
use super::session::{Next, Session};
use crate::journal::{self, QueueId, Record};
use smtp_proto::Request;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest command line accepted (RFC 5321 says 512; extensions and SMTPUTF8
/// addresses need more, so we allow what smtp-proto allows).
const MAX_LINE: usize = 4096;
/// Read granularity; the buffer grows only while a large body arrives.
const READ_CHUNK: usize = 16 * 1024;

/// Why reading stopped.
enum End {
    /// The client closed the connection or the socket failed.
    Closed,
    /// The client was silent for the idle timeout.
    Idle,
    /// The relay is shutting down.
    Shutdown,
}

struct Io {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    idle: Duration,
}

impl Io {
    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .map_err(|_| End::Closed)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input after flushing pending replies. `shutdown` interrupts the
    /// wait only when given (between commands, not inside a message).
    async fn fill(
        &mut self,
        shutdown: Option<&tokio_util::sync::CancellationToken>,
    ) -> Result<(), End> {
        self.flush().await?;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let read = async {
            match tokio::time::timeout(self.idle, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Err(End::Closed),
                Ok(Ok(_)) => Ok(()),
                Err(_) => Err(End::Idle),
            }
        };
        match shutdown {
            Some(token) => tokio::select! {
                r = read => r,
                _ = token.cancelled() => Err(End::Shutdown),
            },
            None => read.await,
        }
    }

    /// The next command line (with its line ending), or `Ok(None)` for a line
    /// that was too long (already skipped).
    async fn read_line(&mut self, s: &Session) -> Result<Option<Vec<u8>>, End> {
        let mut skipping = false;
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = memchr_lf(avail) {
                let too_long = skipping || i + 1 > MAX_LINE;
                let line = (!too_long).then(|| avail[..=i].to_vec());
                self.pos += i + 1;
                return Ok(line);
            }
            if avail.len() > MAX_LINE {
                skipping = true;
                self.pos = self.buf.len();
            }
            self.fill(Some(&s.ctx.shutdown)).await?;
        }
    }

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Serves one client until it quits, times out, or the relay shuts down.
pub async fn serve(mut session: Session, stream: TcpStream) {
    let mut io = Io {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
        pos: 0,
        out: Vec::with_capacity(1024),
        idle: session.ctx.idle_timeout,
    };
    io.reply(&session.greeting());
    let end = command_loop(&mut session, &mut io).await;
    let last = match end {
        End::Closed => return,
        End::Idle => Reply::IDLE_TIMEOUT,
        End::Shutdown => Reply::SHUTTING_DOWN,
    };
    io.reply(&last);
    let _ = io.flush().await;
}

async fn command_loop(s: &mut Session, io: &mut Io) -> End {
    loop {
        let line = match io.read_line(s).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                io.reply(&Reply::LINE_TOO_LONG);
                continue;
            }
            Err(end) => return end,
        };
        if s.ctx.shutdown.is_cancelled() {
            return End::Shutdown;
        }
        let next = match Request::parse(&mut line.iter()) {
            Ok(req) => s.on_request(req, &line),
            Err(e) => Next::Reply(s.on_parse_error(&e, &line)),
        };
        let result = match next {
            Next::Reply(r) => {
                io.reply(&r);
                Ok(())
            }
            Next::Raw(bytes) => {
                io.out.extend_from_slice(&bytes);
                Ok(())
            }
            Next::Close(r) => {
                io.reply(&r);
                let _ = io.flush().await;
                return End::Closed;
            }
            Next::StartData => receive_data(s, io).await,
            Next::Bdat { size, last } => receive_bdat(s, io, size, last).await,
        };
        if let Err(end) = result {
            return end;
        }
    }
}

/// A message body being received: our `Received:` header, then the client's bytes.
#[derive(Debug)]
pub struct Body {
    id: QueueId,
    bytes: Vec<u8>,
    header_len: usize,
    too_big: bool,
    max: u64,
}

impl Body {
    fn start(s: &mut Session) -> Body {
        let id = s.ctx.journal.next_id();
        let tx = s.tx.as_ref().expect("body only inside a transaction");
        let single = (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str());
        let protocol = match (s.esmtp, tx.params.smtputf8) {
            (_, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, false) => "SMTP",
        };
        let header = super::received::header(
            s.helo.as_deref().unwrap_or("unknown"),
            s.client_ip,
            &s.ctx.hostname,
            protocol,
            id,
            single,
            chrono::Utc::now(),
        );
        let mut bytes =
            Vec::with_capacity(header.len() + tx.params.size.min(1 << 20) as usize + 4096);
        bytes.extend_from_slice(&header);
        Body {
            id,
            header_len: header.len(),
            bytes,
            too_big: false,
            max: s.ctx.max_message_size,
        }
    }

    /// Called after bytes were appended: past the size limit, stop keeping them.
    fn check_size(&mut self) {
        if (self.bytes.len() - self.header_len) as u64 > self.max {
            self.too_big = true;
            self.bytes.truncate(self.header_len);
        }
    }
}

async fn receive_data(s: &mut Session, io: &mut Io) -> Result<(), End> {
    io.reply(&Reply::START_DATA);
    let mut body = Body::start(s);
    let mut rx = DataReceiver::new();
    // The receiver only recognises a dot at the start of a line after it has seen
    // a CRLF; the first line of DATA follows the command's CRLF, so prime it.
    rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    loop {
        let mut it = io.buf[io.pos..].iter();
        let done = rx.ingest(&mut it, &mut body.bytes);
        io.pos = io.buf.len() - it.as_slice().len();
        body.check_size();
        if done {
            break;
        }
        io.fill(None).await?;
    }
    let reply = finish_message(s, body).await;
    io.reply(&reply);
    Ok(())
}

async fn receive_bdat(s: &mut Session, io: &mut Io, size: usize, last: bool) -> Result<(), End> {
    let allowed = s.bdat_allowed();
    let mut rx = BdatReceiver::new(size, last);
    let mut body = match s.tx.as_mut().and_then(|tx| tx.body.take()) {
        Some(b) => b,
        None if allowed => Body::start(s),
        None => Body::discard(),
    };
    loop {
        let mut it = io.buf[io.pos..].iter();
        let done = rx.ingest(&mut it, &mut body.bytes);
        io.pos = io.buf.len() - it.as_slice().len();
        body.check_size();
        if done {
            break;
        }
        io.fill(None).await?;
    }
    if !allowed {
        io.reply(&s.bdat_refusal());
        return Ok(());
    }
    if body.too_big {
        // RFC 3030: refuse the chunk that overflows; the transaction is over.
        s.tx = None;
        io.reply(&Reply::SIZE_EXCEEDED);
        return Ok(());
    }
    if !last {
        io.reply(&Reply::CHUNK_OK);
        if let Some(tx) = s.tx.as_mut() {
            tx.body = Some(body);
        }
        return Ok(());
    }
    let reply = finish_message(s, body).await;
    io.reply(&reply);
    Ok(())
}

impl Body {
    fn discard() -> Body {
        Body {
            id: QueueId(0),
            bytes: Vec::new(),
            header_len: 0,
            too_big: true,
            max: 0,
        }
    }
}

/// Ends the transaction: checks the message, journals it, and answers. `250` is
/// written only when the journal commit holding the message is durable.
async fn finish_message(s: &mut Session, body: Body) -> Reply {
    let Some(tx) = s.tx.take() else {
        return Reply::BAD_SEQUENCE;
    };
    if body.too_big {
        return Reply::SIZE_EXCEEDED;
    }
    if has_bare_line_ending(&body.bytes[body.header_len..]) {
        tracing::warn!(client = %s.client_ip, "rejected message with bare CR or LF");
        return Reply::BARE_LINE_ENDING;
    }
    let record = Record {
        id: body.id,
        envelope: s.envelope(&tx, journal::now_ms()),
        rcpts: tx.rcpts,
        size: body.bytes.len() as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        bounce: false,
        delay_warned: false,
    };
    let ctx = s.ctx.clone();
    match ctx.journal.enqueue(&record, body.bytes).await {
        Ok(()) => {
            log_received(&record);
            ctx.metrics.messages_received.inc();
            ctx.queue.enqueued(record);
            Reply::queued(body.id)
        }
        Err(journal::Error::Full { used, max }) => {
            tracing::warn!(id = %body.id, used, max, "journal full, message refused");
            Reply::STORAGE_FULL
        }
        Err(e) => {
            tracing::error!(id = %body.id, "journal error, message refused: {e}");
            Reply::STORAGE_ERROR
        }
    }
}

fn log_received(r: &Record) {
    let rcpts: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
    tracing::info!(
        "{} received from=<{}> to=<{}> size={} client={} helo={}",
        r.id,
        r.envelope.mail_from,
        rcpts.join(">,<"),
        r.size,
        r.envelope.client_ip,
        r.envelope.helo
    );
}

/// True if `data` has a CR not followed by LF or an LF not preceded by CR.
/// Such bytes are how SMTP smuggling hides a second message; we refuse them.
pub fn has_bare_line_ending(data: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => return true,
            b'\r' if data.get(i + 1) != Some(&b'\n') => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_endings() {
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(!has_bare_line_ending(b""));
        assert!(has_bare_line_ending(b"a\nb\r\n"));
        assert!(has_bare_line_ending(b"a\rb\r\n"));
        assert!(has_bare_line_ending(b"a\r\n\n.\n"));
        assert!(has_bare_line_ending(b"a\r"));
    }

    /// The receiver fed in random-size chunks gives the same body, and only
    /// CRLF.CRLF ends it (smuggling variants do not).
    #[test]
    fn data_receiver_in_chunks() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"a\r\n.\r\n", Some(b"a\r\n")),
            (b".\r\n", Some(b"")),
            (b"..lead\r\nx\r\n.\r\n", Some(b".lead\r\nx\r\n")),
            (b"a\r\n..b\r\n.\r\n", Some(b"a\r\n.b\r\n")),
            (b"a\n.\nb\r\n.\r\n", Some(b"a\n.\nb\r\n")),
            // The stuffed dot is removed; the bare LF left behind gets the message refused.
            (b"a\r\n.\nb\r\n.\r\n", Some(b"a\r\n\nb\r\n")),
            (b"a\n.\r\n", None),
            (b"a\r.\r\n", None),
        ];
        let mut seed = 0x2545F4914F6CDD1Du64;
        for (input, want) in cases {
            for _ in 0..50 {
                let mut rx = DataReceiver::new();
                rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                let mut out = Vec::new();
                let mut done = false;
                let mut rest = *input;
                while !rest.is_empty() && !done {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = 1 + (seed as usize % rest.len());
                    let mut it = rest[..n].iter();
                    done = rx.ingest(&mut it, &mut out);
                    rest = &rest[n - it.as_slice().len()..];
                }
                match want {
                    Some(w) => {
                        assert!(done, "{input:?} should end");
                        assert_eq!(&out, w, "{input:?}");
                        let smuggled = input.windows(2).any(|p| p[1] == b'\n' && p[0] != b'\r');
                        assert_eq!(has_bare_line_ending(&out), smuggled, "{input:?}");
                    }
                    None => assert!(!done, "{input:?} must not end"),
                }
            }
        }
    }
}
