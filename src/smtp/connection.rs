//! The per-connection I/O loop: read with a deadline (or stop on shutdown), feed
//! every complete command to the [`Session`], write the replies, flush when the
//! input runs dry (so pipelined commands get their replies in one write).
//!
//! Every read and every write is bounded. Each record (a command line, a line of
//! the message, or 64 KiB of it) must arrive within `smtp.idle_timeout`, the
//! whole message within `smtp.data_timeout`, and each write must complete within
//! `smtp.idle_timeout`: a client that sends a byte at a time, or pipelines and
//! never reads, loses its slot (Postfix `smtpd_per_record_deadline`).
//!
//! Command lines are framed here (bounded length, and the raw line is kept for
//! checks the parser normalises away) and parsed by smtp-proto's sans-IO
//! `Request::parse`; message bodies go through our own receivers in
//! [`super::data`] into an [`Incoming`] message, written to the journal in
//! parts as it arrives, so a session holds at most a few tens of KiB.

use super::data::{BdatReceiver, DataReceiver};
use super::incoming::Incoming;
use super::reply::Reply;
use super::session::{Next, Session};
use crate::admin::metrics::Rejection;
use crate::journal::{self, Purpose, Record, TlsInfo};
use smtp_proto::Request;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest command line accepted (RFC 5321 says 512; extensions and SMTPUTF8
/// addresses need more, so we allow what smtp-proto allows).
const MAX_LINE: usize = 4096;
/// Read granularity; also what a session's input buffer holds at most (twice).
const READ_CHUNK: usize = 16 * 1024;
/// Inside a message, this many bytes without a line end count as one record.
const DATA_RECORD: usize = 64 * 1024;
/// Pending replies beyond this are written before more input is read, so a
/// client that pipelines without reading meets the write deadline.
const MAX_PENDING_OUTPUT: usize = 16 * 1024;

/// Why the session ends.
enum End {
    /// The client closed the connection, or the socket failed.
    Closed,
    /// The client was silent for `smtp.idle_timeout`.
    Idle,
    /// A command or message line took longer than `smtp.idle_timeout`.
    LineTimeout,
    /// The message took longer than `smtp.data_timeout`.
    DataTimeout,
    /// A write did not complete within `smtp.idle_timeout` (not reading).
    WriteTimeout,
    /// The relay is shutting down.
    Shutdown,
}

/// The client's connection, in clear text or after STARTTLS.
pub enum Stream<S> {
    /// Plain.
    Plain(S),
    /// Under TLS.
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// Between the two (during the handshake), or after a failed one.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

struct Io<S> {
    stream: Stream<S>,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    idle: Duration,
    /// The current record (command line, message line) must be complete by then.
    record_deadline: Instant,
    /// The current message must be complete by then.
    data_deadline: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.idle, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// A new record starts now (a command line was complete, a message line ended).
    fn start_record(&mut self) {
        self.record_deadline = Instant::now() + self.idle;
    }

    /// The deadline for the next read, and what passing it means.
    fn deadline(&self) -> (Instant, End) {
        let partial = self.pos < self.buf.len();
        let record = (
            self.record_deadline,
            if partial { End::LineTimeout } else { End::Idle },
        );
        match self.data_deadline {
            Some(d) if d <= record.0 => (d, End::DataTimeout),
            _ => record,
        }
    }

    /// Reads more input after flushing pending replies. `shutdown` interrupts the
    /// wait only when given (between commands, not inside a message).
    async fn fill(&mut self, shutdown: Option<&CancellationToken>) -> Result<(), End> {
        self.flush().await?;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let (deadline, late) = self.deadline();
        // Checked here, not only by the read's timeout: a client that always has
        // bytes ready (an endless line, an endless refused message) never makes
        // a read wait, so the timeout alone would never fire.
        if Instant::now() >= deadline {
            return Err(late);
        }
        let read = async {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Err(End::Closed),
                Ok(Ok(_)) => Ok(()),
                Err(_) => Err(late),
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
    async fn read_line(&mut self, shutdown: &CancellationToken) -> Result<Option<Vec<u8>>, End> {
        let mut skipping = false;
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                let too_long = skipping || i + 1 > MAX_LINE;
                let line = (!too_long).then(|| avail[..=i].to_vec());
                self.pos += i + 1;
                self.start_record();
                return Ok(line);
            }
            if avail.len() > MAX_LINE {
                skipping = true;
                self.pos = self.buf.len();
            }
            self.fill(Some(shutdown)).await?;
        }
    }

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    /// Swaps the clear-text stream for TLS: the handshake must finish within
    /// `smtp.idle_timeout`.
    async fn start_tls(&mut self, tls: &super::tls::Tls) -> Result<TlsInfo, End> {
        let Stream::Plain(plain) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(End::Closed);
        };
        match tokio::time::timeout(self.idle, tls.acceptor().accept(plain)).await {
            Ok(Ok(stream)) => {
                let info = super::tls::info(stream.get_ref().1);
                self.stream = Stream::Tls(Box::new(stream));
                Ok(info)
            }
            Ok(Err(e)) => {
                tracing::info!("TLS handshake failed: {e}");
                Err(End::Closed)
            }
            Err(_) => Err(End::LineTimeout),
        }
    }
}

/// Serves one client until it quits, times out, or the relay shuts down.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut session: Session, stream: S) {
    let idle = session.cfg.smtp.idle_timeout.0;
    let mut io = Io {
        stream: Stream::Plain(stream),
        buf: Vec::with_capacity(READ_CHUNK),
        pos: 0,
        out: Vec::with_capacity(512),
        idle,
        record_deadline: Instant::now() + idle,
        data_deadline: None,
    };
    super::dnsbl::start(&mut session);
    match talks_first(&mut session, &mut io).await {
        Ok(true) => {
            session.pregreeted = true;
            tracing::warn!(client = %session.client_ip, "pregreet: the client talked before the greeting");
        }
        Ok(false) => {}
        Err(_) => return,
    }
    io.reply(&session.greeting());
    io.start_record();
    let end = command_loop(&mut session, &mut io).await;
    if let Some(lookups) = session.dnsbl.take() {
        lookups.abort();
    }
    session.release_slots();
    let last = match end {
        End::Closed => None,
        End::WriteTimeout => {
            tracing::info!(client = %session.client_ip, "closed: the client does not read its replies");
            session.ctx.metrics.reject(Rejection::Timeout);
            None
        }
        End::Idle => Some(Reply::IDLE_TIMEOUT),
        End::LineTimeout => Some(Reply::LINE_TIMEOUT),
        End::DataTimeout => Some(Reply::DATA_TIMEOUT),
        End::Shutdown => Some(Reply::SHUTTING_DOWN),
    };
    if let Some(last) = last {
        if last.enhanced == "4.4.2" {
            tracing::info!(client = %session.client_ip, "closed: {}", last.text);
            session.ctx.metrics.reject(Rejection::Timeout);
        }
        io.reply(&last);
        let _ = io.flush().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), io.stream.shutdown()).await;
}

/// Waits `smtp.greet_pause` (or just looks, when it is 0) for input before
/// the greeting: a client that talks first is a pregreet offender. What it
/// sent stays in the buffer as its first command.
async fn talks_first<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    io: &mut Io<S>,
) -> Result<bool, End> {
    let pause = s.cfg.smtp.greet_pause.0;
    match tokio::time::timeout(pause, io.stream.read_buf(&mut io.buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Err(End::Closed),
        Ok(Ok(_)) => Ok(true),
        Err(_) => Ok(false),
    }
}

async fn command_loop<S: AsyncRead + AsyncWrite + Unpin>(s: &mut Session, io: &mut Io<S>) -> End {
    loop {
        if io.out.len() > MAX_PENDING_OUTPUT
            && let Err(end) = io.flush().await
        {
            return end;
        }
        // The client's time for its next line starts now, after our answer to
        // the last one (a slow probe or commit is not the client's idleness).
        io.start_record();
        // Between BDAT chunks the message's deadline still runs.
        io.data_deadline =
            s.tx.as_ref()
                .and_then(|tx| tx.body.as_ref())
                .map(Incoming::deadline);
        let shutdown = s.ctx.shutdown.clone();
        let line = match io.read_line(&shutdown).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                if let Some(end) = answer(s, io, Reply::LINE_TOO_LONG).await {
                    return end;
                }
                continue;
            }
            Err(end) => return end,
        };
        if s.ctx.shutdown.is_cancelled() {
            return End::Shutdown;
        }
        if s.pregreeted {
            s.ctx.metrics.reject(Rejection::Pregreet);
            s.release_slots();
            io.reply(&Reply::PREGREET);
            let _ = io.flush().await;
            return End::Closed;
        }
        if let Some(refusal) = super::dnsbl::verdict(s, &line).await {
            s.ctx.metrics.reject(Rejection::Dnsbl);
            s.release_slots();
            io.reply(&refusal);
            let _ = io.flush().await;
            return End::Closed;
        }
        let next = s.on_command(&line, Request::parse(&mut line.iter()));
        let reply = match next {
            Next::Reply(r) => r,
            Next::Raw(bytes) => {
                io.out.extend_from_slice(&bytes);
                continue;
            }
            Next::Close(r) => {
                s.release_slots();
                io.reply(&r);
                let _ = io.flush().await;
                return End::Closed;
            }
            Next::Verify(rcpt) => {
                let known = s.ctx.recipients().is_known(&rcpt.address).await;
                s.add_recipient(rcpt, known)
            }
            Next::StartTls => match start_tls(s, io).await {
                Ok(()) => continue,
                Err(end) => return end,
            },
            Next::StartData => match receive_data(s, io).await {
                Ok(r) => r,
                Err(end) => return end,
            },
            Next::Bdat { size, last } => match receive_bdat(s, io, size, last).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(end) => return end,
            },
        };
        if let Some(end) = answer(s, io, reply).await {
            return end;
        }
    }
}

/// Queues `reply`, counts it (rejection metrics, `smtp.max_errors`), and ends
/// the session if the error limit is reached.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    io: &mut Io<S>,
    reply: Reply,
) -> Option<End> {
    if let Some(why) = rejection_of(&reply) {
        s.ctx.metrics.reject(why);
    }
    io.reply(&reply);
    if reply == Reply::CHUNK_TOO_BIG {
        let _ = io.flush().await;
        return Some(End::Closed);
    }
    if s.count_error(&reply) {
        tracing::warn!(client = %s.client_ip, errors = s.errors, "closed: smtp.max_errors reached");
        s.ctx.metrics.reject(Rejection::Errors);
        s.release_slots();
        io.reply(&Reply::TOO_MANY_ERRORS);
        let _ = io.flush().await;
        return Some(End::Closed);
    }
    None
}

/// Which `breakwater_smtp_rejections_total{reason}` a reply counts under.
fn rejection_of(r: &Reply) -> Option<Rejection> {
    let is = |c: &Reply| r == c;
    Some(if is(&Reply::RELAY_DENIED) || is(&Reply::ROUTING_DENIED) {
        Rejection::RelayDenied
    } else if is(&Reply::UNKNOWN_USER) {
        Rejection::UnknownUser
    } else if is(&Reply::SIZE_EXCEEDED) || is(&Reply::CHUNK_TOO_BIG) {
        Rejection::Size
    } else if is(&Reply::STORAGE_FULL) || is(&Reply::STORAGE_ERROR) {
        Rejection::Storage
    } else if is(&Reply::MEMORY_BUSY) {
        Rejection::Memory
    } else if is(&Reply::BARE_LINE_ENDING) || is(&Reply::NUL_IN_MESSAGE) {
        Rejection::Smuggling
    } else if is(&Reply::MAIL_LOOP) {
        Rejection::Loop
    } else if is(&Reply::TLS_NOT_AVAILABLE) {
        Rejection::Tls
    } else {
        return None;
    })
}

async fn start_tls<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    io: &mut Io<S>,
) -> Result<(), End> {
    let Some(tls) = s.ctx.tls.clone() else {
        io.reply(&Reply::TLS_NOT_AVAILABLE);
        return Ok(());
    };
    io.reply(&Reply::READY_TLS);
    io.flush().await?;
    // Whatever was pipelined behind STARTTLS came in clear text: it is dropped,
    // never executed inside TLS (RFC 3207 4.2, CVE-2011-0411).
    let pipelined = io.buf.len() - io.pos;
    if pipelined > 0 {
        tracing::warn!(client = %s.client_ip, "{pipelined} bytes sent after STARTTLS before the handshake: discarded");
    }
    io.buf.clear();
    io.pos = 0;
    match io.start_tls(&tls).await {
        Ok(info) => {
            s.ctx
                .metrics
                .tls_sessions
                .with_label_values(&[&info.version])
                .inc();
            s.start_over_with_tls(info);
            io.start_record();
            Ok(())
        }
        Err(end) => {
            s.ctx.metrics.reject(Rejection::Tls);
            Err(end)
        }
    }
}

/// Starts receiving a message for the open transaction: a journal spool with
/// our `Received:` header in it.
fn incoming(s: &Session) -> Incoming {
    let deadline = Instant::now() + s.cfg.smtp.data_timeout.0;
    let Some(tx) = s.tx.as_ref() else {
        return Incoming::discard(deadline);
    };
    let spool = s.ctx.journal.spool(s.ctx.journal.next_id());
    let single = (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str());
    let protocol = super::received::protocol(s.esmtp, tx.params.smtputf8, s.tls.is_some());
    let mut header = super::dnsbl::tag_header(s.client_ip, &s.dnsbl_hits);
    header.extend(super::received::header(
        s.helo.as_deref().unwrap_or("unknown"),
        s.client_ip,
        &s.cfg.hostname,
        protocol,
        s.tls.as_ref(),
        spool.id(),
        single,
        chrono::Utc::now(),
    ));
    let mut msg = Incoming::new(spool, &header, s.cfg.smtp.max_message_size, deadline);
    if s.cfg.auth.enabled {
        msg.keep_whole(&s.ctx.auth.memory);
    }
    msg
}

/// Feeds what is buffered to `feed` (a receiver) into the message, watching
/// the deadlines, until the receiver says the body (or chunk) is complete.
async fn receive<S, F>(io: &mut Io<S>, msg: &mut Incoming, mut feed: F) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&[u8], &mut Vec<u8>) -> (usize, bool),
{
    io.data_deadline = Some(msg.deadline());
    let mut since_record = 0usize;
    loop {
        msg.make_room(io.buf.len() - io.pos);
        let mark = msg.mark();
        let (n, done) = feed(&io.buf[io.pos..], msg.sink());
        msg.took(mark);
        let taken = &io.buf[io.pos..io.pos + n];
        since_record += n;
        if since_record >= DATA_RECORD || taken.contains(&b'\n') {
            io.start_record();
            since_record = 0;
        }
        io.pos += n;
        msg.stage().await;
        if done {
            io.data_deadline = None;
            return Ok(());
        }
        io.fill(None).await?;
    }
}

async fn receive_data<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    io: &mut Io<S>,
) -> Result<Reply, End> {
    io.reply(&Reply::START_DATA);
    let mut msg = incoming(s);
    let mut rx = DataReceiver::new();
    receive(io, &mut msg, |input, out| {
        let n = rx.feed(input, out);
        (n, rx.is_done())
    })
    .await?;
    Ok(finish_message(s, msg).await)
}

/// Receives one BDAT chunk; `Ok(None)` when a non-last chunk was kept (its
/// `250` is already queued).
async fn receive_bdat<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Session,
    io: &mut Io<S>,
    size: u64,
    last: bool,
) -> Result<Option<Reply>, End> {
    if size > s.cfg.smtp.max_message_size {
        // Its bytes follow and cannot be skipped in any reasonable time.
        s.tx = None;
        return Ok(Some(Reply::CHUNK_TOO_BIG));
    }
    let allowed = s.bdat_allowed();
    let mut msg = match s.tx.as_mut().and_then(|tx| tx.body.take()) {
        Some(b) => b,
        None if allowed => incoming(s),
        None => Incoming::discard(Instant::now() + s.cfg.smtp.data_timeout.0),
    };
    let mut rx = BdatReceiver::new(size);
    receive(io, &mut msg, |input, out| {
        let n = rx.feed(input, Some(out));
        (n, rx.is_done())
    })
    .await?;
    if !allowed {
        return Ok(Some(s.bdat_refusal()));
    }
    if let Some(r) = msg.refusal()
        && (*r == Reply::SIZE_EXCEEDED || *r == Reply::MEMORY_BUSY)
    {
        // RFC 3030: refuse the chunk that overflows; the transaction is over.
        let r = r.clone();
        s.tx = None;
        return Ok(Some(r));
    }
    if !last {
        if let Some(tx) = s.tx.as_mut() {
            tx.body = Some(msg);
        }
        io.reply(&Reply::CHUNK_OK);
        return Ok(None);
    }
    Ok(Some(finish_message(s, msg).await))
}

/// Ends the transaction: checks the message, journals it, and answers. `250` is
/// written only when the journal commit holding the message is durable.
async fn finish_message(s: &mut Session, msg: Incoming) -> Reply {
    let Some(tx) = s.tx.take() else {
        return Reply::BAD_SEQUENCE;
    };
    let id = msg.id();
    let header_len = msg.header_len();
    // `_held`: the message's part of `auth.max_memory`, given back on return.
    let super::incoming::Finished {
        mut spool,
        check,
        held: _held,
    } = match msg.finish() {
        Ok(done) => done,
        Err(reply) => return reply,
    };
    let defects = check.finish();
    if !defects.is_empty() {
        tracing::warn!(client = %s.client_ip, ?defects, "rejected message with bare CR, bare LF or NUL");
        return if defects.nul && !(defects.bare_cr || defects.bare_lf) {
            Reply::NUL_IN_MESSAGE
        } else {
            Reply::BARE_LINE_ENDING
        };
    }
    let hops = check.received_headers();
    if hops > s.cfg.smtp.max_received_headers {
        tracing::warn!(client = %s.client_ip, hops, "rejected message: mail loop (smtp.max_received_headers)");
        return Reply::MAIL_LOOP;
    }
    if s.cfg.auth.enabled
        && let Err(refusal) = super::auth::apply(s, &tx, &mut spool, header_len).await
    {
        return refusal;
    }
    let record = Record {
        id,
        message: id,
        purpose: Purpose::Primary,
        envelope: s.envelope(&tx, journal::now_ms()),
        rcpts: tx.rcpts,
        size: spool.len(),
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        delay_warned: false,
        history: Vec::new(),
    };
    // The primary job and a copy per standby, journaled in one commit: the
    // copies are as durable as the message.
    let mut jobs = vec![record];
    for m in &s.cfg.mirror {
        if let Some(copy) = mirror_copy(&jobs[0], m, &s.ctx.journal) {
            jobs.push(copy);
        }
    }
    let ctx = s.ctx.clone();
    // The commit and the 250: nothing is acknowledged before it is durable.
    match spool.commit(&jobs).await {
        Ok(()) => {
            log_received(&jobs[0]);
            ctx.metrics.messages_received.inc();
            if !ctx.flows.is_empty() {
                let rcpts: Vec<&str> = jobs[0].rcpts.iter().map(|r| r.address.as_str()).collect();
                ctx.flows
                    .observe(&jobs[0].envelope.mail_from, &rcpts, check.header_section());
            }
            for job in jobs {
                ctx.queue.enqueued(job);
            }
            Reply::queued(id)
        }
        Err(e) if e.is_full() => {
            tracing::warn!(%id, "journal full, message refused: {e}");
            Reply::STORAGE_FULL
        }
        Err(e) => {
            tracing::error!(%id, "journal error, message refused: {e}");
            Reply::STORAGE_ERROR
        }
    }
}

/// A copy of `primary` for the standby `m`: the recipients it wants (none:
/// no copy), with a fresh job id.
fn mirror_copy(
    primary: &Record,
    m: &crate::config::Mirror,
    journal: &journal::Journal,
) -> Option<Record> {
    let rcpts: Vec<_> = primary
        .rcpts
        .iter()
        .filter(|r| m.wants(&r.address))
        .map(|r| journal::Recipient {
            // A copy's failures are never reported to the sender.
            notify: smtp_proto::RCPT_NOTIFY_NEVER,
            ..r.clone()
        })
        .collect();
    if rcpts.is_empty() {
        return None;
    }
    Some(Record {
        id: journal.next_id(),
        purpose: Purpose::Mirror {
            mirror: m.name.clone(),
        },
        rcpts,
        ..primary.clone()
    })
}

fn log_received(r: &Record) {
    let rcpts: Vec<String> = r.rcpts.iter().map(|x| printable(&x.address)).collect();
    let tls = r
        .envelope
        .tls
        .as_ref()
        .map_or(String::new(), |t| format!(" tls={}", t.version));
    tracing::info!(
        "{} received from=<{}> to=<{}> size={} client={} helo={}{tls}",
        r.id,
        printable(&r.envelope.mail_from),
        rcpts.join(">,<"),
        r.size,
        r.envelope.client_ip,
        printable(&r.envelope.helo)
    );
}

/// `s` with control characters (and backslashes) escaped, safe for a log line.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_cannot_forge_lines() {
        assert_eq!(printable("client.test"), "client.test");
        assert_eq!(
            printable("a\r\n0000 delivered\x1b[2J"),
            "a\\r\\n0000 delivered\\u{1b}[2J"
        );
        assert_eq!(printable("a\\b"), "a\\\\b");
        assert_eq!(printable("jörg"), "jörg");
    }
}
