//! A scriptable SMTP server standing in for the organisation's mail server.
//!
//! It speaks enough ESMTP for a relay to deliver to it (EHLO/HELO, MAIL,
//! RCPT, DATA, BDAT, RSET, NOOP, QUIT, pipelining), records every message
//! whose end-of-data reply was 2xx, and lets a test change its replies at
//! run time. Bad input never panics a server task: the connection is simply
//! answered with an error or closed.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Host name used in the greeting and the EHLO reply.
pub const HOSTNAME: &str = "backend.test";
/// Default reply to the end of DATA / BDAT LAST.
pub const DEFAULT_DATA_REPLY: &str = "250 2.0.0 Ok: queued";
const DEFAULT_GREETING: &str = "220 backend.test ESMTP";
const DEFAULT_MAIL_REPLY: &str = "250 2.1.0 Ok";
const DEFAULT_RCPT_REPLY: &str = "250 2.1.5 Ok";

/// A session ends if the client is silent this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// No session lives longer than this.
const SESSION_LIFETIME: Duration = Duration::from_secs(600);
/// Longest accepted command line (without CRLF).
const MAX_LINE: usize = 8 * 1024;
/// Bounds for every loop in the server.
const MAX_ACCEPTS: usize = 1_000_000;
const MAX_READS_PER_SESSION: usize = 10_000_000;
const MAX_STEPS_PER_READ: usize = 1_000_000;
const MAX_RCPTS: usize = 1_000;
const MAX_COMMAND_LOG: usize = 100_000;
/// Message bytes kept per transaction when no SIZE limit is advertised.
const HARD_DATA_LIMIT: usize = 64 * 1024 * 1024;

/// Which ESMTP extensions the backend advertises (and honours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    pub pipelining: bool,
    /// Advertise CHUNKING and accept BDAT (otherwise BDAT gets 500).
    pub chunking: bool,
    /// Advertise DSN (parameters are recorded raw either way).
    pub dsn: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    /// Advertised and enforced SIZE limit in bytes; `None` = no SIZE
    /// extension (a 64 MiB hard cap still applies).
    pub size: Option<usize>,
    /// Longest message line taken (CRLF and a stuffed dot not counted): with
    /// a longer one the end of data gets `500 5.5.0 Line too long` and
    /// nothing is recorded. `None` = any length.
    pub max_line: Option<usize>,
}

impl Default for BackendOptions {
    /// PIPELINING, 8BITMIME, SMTPUTF8, CHUNKING, SIZE 52428800,
    /// ENHANCEDSTATUSCODES; no DSN.
    fn default() -> Self {
        BackendOptions {
            pipelining: true,
            chunking: true,
            dsn: false,
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            size: Some(50 * 1024 * 1024),
            max_line: None,
        }
    }
}

impl BackendOptions {
    fn data_limit(&self) -> usize {
        self.size.unwrap_or(HARD_DATA_LIMIT).min(HARD_DATA_LIMIT)
    }
}

/// One message accepted by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Reverse path without angle brackets ("" for the null sender).
    pub mail_from: String,
    /// Recipients that got a 2xx at RCPT, in order, without angle brackets.
    pub rcpts: Vec<String>,
    /// The message as the client meant it: dot-unstuffed, without the
    /// terminating ".CRLF", with the CRLF ending the last line (DATA); the
    /// exact concatenated chunk bytes (BDAT).
    pub data: Vec<u8>,
    /// Raw text after the `>` of MAIL FROM, trimmed (e.g. "BODY=8BITMIME").
    pub mail_params: String,
    /// Raw text after the `>` of each accepted RCPT TO, trimmed.
    pub rcpt_params: Vec<String>,
}

impl Received {
    /// The data as (lossy) UTF-8, for assertions on text messages.
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The data after its first header field (the relay's `Received:` with its
    /// continuation lines), i.e. the message as the client sent it.
    pub fn after_trace(&self) -> &[u8] {
        let mut end = 0;
        for _ in 0..64 {
            let Some(eol) = self.data[end..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            end += eol + 2;
            if !matches!(self.data.get(end), Some(b' ' | b'\t')) {
                return &self.data[end..];
            }
        }
        panic!(
            "no trace header (or one longer than 64 lines) in\n{}",
            self.data_str()
        );
    }

    /// The value of the first header line `name: value` (exact name, no folding).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.data_str()
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }
}

/// How often each value of header `name` occurs in `msgs` (messages without
/// the header are counted under "").
pub fn count_by_header(msgs: &[Received], name: &str) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for m in msgs {
        *seen.entry(m.header(name).unwrap_or_default()).or_default() += 1;
    }
    seen
}

#[derive(Debug, Clone)]
struct Script {
    greeting: String,
    mail_reply: String,
    rcpt_replies: Vec<(String, String)>,
    data_reply: String,
    data_delay: Duration,
    rcpt_delay: Duration,
    drop_after_data: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: DEFAULT_GREETING.to_string(),
            mail_reply: DEFAULT_MAIL_REPLY.to_string(),
            rcpt_replies: Vec::new(),
            data_reply: DEFAULT_DATA_REPLY.to_string(),
            data_delay: Duration::ZERO,
            rcpt_delay: Duration::ZERO,
            drop_after_data: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    opts: BackendOptions,
    script: Script,
    messages: Vec<Received>,
    commands: Vec<String>,
    connections: usize,
    active: usize,
    max_active: usize,
    /// Messages for this recipient are also written to this maildir.
    maildir: Option<(String, std::path::PathBuf)>,
}

type Shared = Arc<Mutex<State>>;
type Handles = Arc<Mutex<Vec<JoinHandle<()>>>>;

/// Locks ignoring poisoning: a panicking test thread must not cascade.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one message into a maildir (tmp/ then rename into new/).
fn write_maildir(dir: &std::path::Path, data: &[u8], n: usize) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{nanos}.P{}Q{n}.backend.test", std::process::id());
    let tmp = dir.join("tmp").join(&name);
    if std::fs::write(&tmp, data).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("new").join(&name));
    }
}

fn is_positive(reply: &str) -> bool {
    reply.starts_with('2')
}

/// The fake organisation mail server. Create it inside a tokio runtime.
pub struct Backend {
    addr: SocketAddr,
    shared: Shared,
    acceptor: Option<JoinHandle<()>>,
    conns: Handles,
}

impl Backend {
    /// Starts on 127.0.0.1 with an ephemeral port and default options.
    pub async fn start() -> Backend {
        Self::start_with(BackendOptions::default()).await
    }

    /// Starts on 127.0.0.1 with an ephemeral port and the given options.
    pub async fn start_with(opts: BackendOptions) -> Backend {
        Self::start_on_with(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts)
            .await
            .expect("Backend::start: cannot bind 127.0.0.1:0")
    }

    /// Starts on a given address (SO_REUSEADDR set), e.g. the address of a
    /// backend that was just stopped.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Backend> {
        Self::start_on_with(addr, BackendOptions::default()).await
    }

    /// [`Backend::start_on`] with options.
    pub async fn start_on_with(addr: SocketAddr, opts: BackendOptions) -> io::Result<Backend> {
        let shared: Shared = Arc::new(Mutex::new(State {
            opts,
            ..State::default()
        }));
        let mut backend = Backend {
            addr,
            shared,
            acceptor: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        backend.listen(addr)?;
        Ok(backend)
    }

    fn listen(&mut self, addr: SocketAddr) -> io::Result<()> {
        let socket = if addr.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        self.addr = listener.local_addr()?;
        self.acceptor = Some(tokio::spawn(accept_loop(
            listener,
            self.shared.clone(),
            self.conns.clone(),
        )));
        Ok(())
    }

    /// The address it listens (or listened) on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and drops every live connection, then waits for
    /// all tasks to end. Recorded messages and scripted replies are kept.
    pub async fn stop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
            let _ = acceptor.await;
        }
        let handles = std::mem::take(&mut *lock(&self.conns));
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Stops, then listens again on the same address, keeping recorded
    /// messages, counters and scripted replies.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.listen(self.addr)
    }

    /// Whether the listener is running (false after [`Backend::stop`]).
    pub fn is_running(&self) -> bool {
        self.acceptor.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// All messages accepted so far, in order of acceptance.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared).messages.clone()
    }

    /// Number of messages accepted so far.
    pub fn count(&self) -> usize {
        lock(&self.shared).messages.len()
    }

    /// Forgets the recorded messages (counters are kept).
    pub fn clear_messages(&self) {
        lock(&self.shared).messages.clear();
    }

    /// Waits until at least `n` messages arrived and returns all of them;
    /// panics after `timeout` saying how many did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let ok = super::wait_until_async(timeout, || self.count() >= n).await;
        let messages = self.messages();
        assert!(
            ok,
            "Backend::wait_for: expected {n} message(s) within {timeout:?}, but only {} arrived",
            messages.len()
        );
        messages
    }

    /// Every command line received (all connections, in order; BDAT payloads
    /// and DATA bodies excluded), e.g. to check the relay sent EHLO or BDAT.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared).commands.clone()
    }

    /// TCP connections accepted since start (counted at accept).
    pub fn connections(&self) -> usize {
        lock(&self.shared).connections
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        lock(&self.shared).active
    }

    /// Highest number of simultaneously open connections seen.
    pub fn max_concurrent_connections(&self) -> usize {
        lock(&self.shared).max_active
    }

    /// Options used for new connections (EHLO capabilities, SIZE).
    pub fn set_options(&self, opts: BackendOptions) {
        lock(&self.shared).opts = opts;
    }

    /// RCPT for an address containing `addr_substring` (case-insensitive)
    /// gets `reply`, e.g. `("bad@", "550 5.1.1 no such user")`. Setting the
    /// same substring again replaces its reply; the first match wins.
    pub fn set_rcpt_reply(&self, addr_substring: &str, reply: &str) {
        let mut st = lock(&self.shared);
        let rules = &mut st.script.rcpt_replies;
        match rules.iter_mut().find(|(sub, _)| sub == addr_substring) {
            Some(rule) => rule.1 = reply.to_string(),
            None => rules.push((addr_substring.to_string(), reply.to_string())),
        }
    }

    /// Drops every rule made by [`Backend::set_rcpt_reply`].
    pub fn clear_rcpt_replies(&self) {
        lock(&self.shared).script.rcpt_replies.clear();
    }

    /// Reply to MAIL FROM (default "250 2.1.0 Ok").
    pub fn set_mail_reply(&self, reply: &str) {
        lock(&self.shared).script.mail_reply = reply.to_string();
    }

    /// Reply after the end of data (default "250 2.0.0 Ok: queued"). The
    /// message is recorded only if this is 2xx.
    pub fn set_data_reply(&self, reply: &str) {
        lock(&self.shared).script.data_reply = reply.to_string();
    }

    /// Waits this long before replying to the end of data (slow backend).
    pub fn set_data_delay(&self, delay: Duration) {
        lock(&self.shared).script.data_delay = delay;
    }

    /// Waits this long before answering each RCPT (a slow user database).
    pub fn set_rcpt_delay(&self, delay: Duration) {
        lock(&self.shared).script.rcpt_delay = delay;
    }

    /// When true, the backend closes the connection right after the end of
    /// data without replying (and records nothing).
    pub fn set_drop_after_data(&self, drop: bool) {
        lock(&self.shared).script.drop_after_data = drop;
    }

    /// Greeting for new connections (default "220 backend.test ESMTP"). A
    /// non-2xx greeting (e.g. "421 4.3.2 busy") is sent, then the
    /// connection is closed.
    pub fn set_greeting(&self, reply: &str) {
        lock(&self.shared).script.greeting = reply.to_string();
    }

    /// Also writes each message for `rcpt` into the maildir `dir` (its
    /// `tmp/`, then renamed into `new/`), as a local delivery agent would,
    /// so an IMAP server over that maildir finds it.
    pub fn deliver_to_maildir(&self, rcpt: &str, dir: &std::path::Path) {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).expect("maildir");
        }
        lock(&self.shared).maildir = Some((rcpt.to_owned(), dir.to_owned()));
    }

    /// Restores every default reply, delay and drop setting.
    pub fn reset_script(&self) {
        lock(&self.shared).script = Script::default();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        for h in lock(&self.conns).drain(..) {
            h.abort();
        }
    }
}

/// Decrements the active-connection gauge when a session ends, however it
/// ends (including abort).
struct ActiveGuard(Shared);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.0);
        st.active = st.active.saturating_sub(1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, conns: Handles) {
    for _ in 0..MAX_ACCEPTS {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. EMFILE: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let guard = {
            let mut st = lock(&shared);
            st.connections += 1;
            st.active += 1;
            st.max_active = st.max_active.max(st.active);
            ActiveGuard(shared.clone())
        };
        let handle = tokio::spawn(serve(stream, shared.clone(), guard));
        let mut list = lock(&conns);
        list.retain(|h| !h.is_finished());
        list.push(handle);
    }
}

async fn serve(mut stream: TcpStream, shared: Shared, _guard: ActiveGuard) {
    let _ = stream.set_nodelay(true);
    let _ = tokio::time::timeout(SESSION_LIFETIME, run_session(&mut stream, shared)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

async fn run_session(stream: &mut TcpStream, shared: Shared) -> io::Result<()> {
    let (opts, greeting) = {
        let st = lock(&shared);
        (st.opts.clone(), st.script.greeting.clone())
    };
    let mut session = Session::new(shared, opts);
    session.reply(&greeting);
    session.flush(stream).await?;
    if !is_positive(&greeting) {
        return Ok(());
    }

    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    for _ in 0..MAX_READS_PER_SESSION {
        // Handle everything already buffered (pipelined commands, bodies).
        let mut pos = 0;
        for _ in 0..MAX_STEPS_PER_READ {
            match session.step(&input[pos..], stream).await? {
                Step::Consumed(n) if n > 0 => pos += n,
                Step::Consumed(_) | Step::NeedMore => break,
                Step::Close => {
                    session.flush(stream).await?;
                    return Ok(());
                }
            }
        }
        input.drain(..pos);
        session.flush(stream).await?;

        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                session.reply("421 4.4.2 backend.test idle timeout");
                session.flush(stream).await?;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

enum Step {
    /// This many input bytes were used (0 only when the mode advanced).
    Consumed(usize),
    /// Nothing more can be done without more input.
    NeedMore,
    /// Flush pending replies and close the connection.
    Close,
}

enum Mode {
    Command,
    Data {
        /// At the beginning of a line (a '.' there is special).
        bol: bool,
    },
    Bdat {
        remaining: usize,
        last: bool,
        /// Reply to give once the chunk is consumed, instead of accepting it.
        reject: Option<&'static str>,
    },
}

struct Session {
    shared: Shared,
    opts: BackendOptions,
    greeted: bool,
    mail: Option<(String, String)>,
    rcpts: Vec<(String, String)>,
    /// Message bytes of the current DATA or BDAT transaction.
    data: Vec<u8>,
    /// Total size of the current message, including bytes not kept.
    data_size: usize,
    bdat_started: bool,
    /// Bytes of the current message line so far (with a CR at its end).
    line_len: usize,
    /// The last message byte was a CR.
    last_cr: bool,
    /// A line longer than `opts.max_line` was seen.
    long_line: bool,
    mode: Mode,
    out: Vec<u8>,
}

impl Session {
    fn new(shared: Shared, opts: BackendOptions) -> Session {
        Session {
            shared,
            opts,
            greeted: false,
            mail: None,
            rcpts: Vec::new(),
            data: Vec::new(),
            data_size: 0,
            bdat_started: false,
            line_len: 0,
            last_cr: false,
            long_line: false,
            mode: Mode::Command,
            out: Vec::new(),
        }
    }

    fn reset_transaction(&mut self) {
        self.mail = None;
        self.rcpts.clear();
        self.data = Vec::new();
        self.data_size = 0;
        self.bdat_started = false;
        self.line_len = 0;
        self.last_cr = false;
        self.long_line = false;
    }

    /// Queues a reply; "\n" inside `text` separates the lines of a
    /// multi-line reply.
    fn reply(&mut self, text: &str) {
        for line in text.split('\n') {
            self.out
                .extend_from_slice(line.trim_end_matches('\r').as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        match tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(&out)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.measure(bytes);
        self.data_size = self.data_size.saturating_add(bytes.len());
        if self.data_size <= self.opts.data_limit() {
            self.data.extend_from_slice(bytes);
        }
    }

    /// Notes lines longer than `opts.max_line` (the last one may lack its CRLF).
    fn measure(&mut self, bytes: &[u8]) {
        let Some(max) = self.opts.max_line else {
            return;
        };
        for &b in bytes {
            if b == b'\n' {
                self.long_line |= self.line_len - usize::from(self.last_cr) > max;
                self.line_len = 0;
            } else {
                self.line_len += 1;
            }
            self.last_cr = b == b'\r';
        }
    }

    async fn step(&mut self, input: &[u8], stream: &mut TcpStream) -> io::Result<Step> {
        match self.mode {
            Mode::Command => self.command_step(input, stream).await,
            Mode::Data { bol } => self.data_step(input, bol, stream).await,
            Mode::Bdat {
                remaining,
                last,
                reject,
            } => {
                let n = remaining.min(input.len());
                if n == 0 {
                    return Ok(Step::NeedMore);
                }
                if reject.is_none() {
                    self.keep(&input[..n]);
                }
                let remaining = remaining - n;
                self.mode = Mode::Bdat {
                    remaining,
                    last,
                    reject,
                };
                if remaining == 0
                    && let Some(step) = self.chunk_done(stream).await?
                {
                    return Ok(step);
                }
                Ok(Step::Consumed(n))
            }
        }
    }

    async fn command_step(&mut self, input: &[u8], stream: &mut TcpStream) -> io::Result<Step> {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else {
            if input.len() > MAX_LINE {
                self.reply("500 5.5.6 Line too long");
                return Ok(Step::Close);
            }
            return Ok(Step::NeedMore);
        };
        if nl > MAX_LINE + 1 {
            self.reply("500 5.5.6 Line too long");
            return Ok(Step::Close);
        }
        let raw = &input[..nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw).into_owned();
        {
            let mut st = lock(&self.shared);
            if st.commands.len() < MAX_COMMAND_LOG {
                st.commands.push(line.clone());
            }
        }
        if self.command(&line, stream).await? {
            return Ok(Step::Close);
        }
        Ok(Step::Consumed(nl + 1))
    }

    /// Handles one command line; returns true to close the connection.
    async fn command(&mut self, line: &str, stream: &mut TcpStream) -> io::Result<bool> {
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => self.reply("501 5.5.4 Domain name required"),
            "EHLO" => {
                self.reset_transaction();
                self.greeted = true;
                let reply = self.ehlo_reply(arg);
                self.reply(&reply);
            }
            "HELO" => {
                self.reset_transaction();
                self.greeted = true;
                self.reply(&format!("250 {HOSTNAME}"));
            }
            "MAIL" => self.mail(arg),
            "RCPT" => {
                let delay = lock(&self.shared).script.rcpt_delay;
                if !delay.is_zero() {
                    self.flush(stream).await?;
                    tokio::time::sleep(delay).await;
                }
                self.rcpt(arg)
            }
            "DATA" => {
                if !arg.is_empty() {
                    self.reply("501 5.5.4 DATA takes no argument");
                } else if self.mail.is_none() {
                    self.reply("503 5.5.1 MAIL first");
                } else if self.rcpts.is_empty() {
                    self.reply("554 5.5.1 No valid recipients");
                } else if self.bdat_started {
                    self.reply("503 5.5.1 BDAT in progress");
                } else {
                    self.reply("354 End data with <CR><LF>.<CR><LF>");
                    self.mode = Mode::Data { bol: true };
                }
            }
            "BDAT" if self.opts.chunking => {
                let mut words = arg.split_ascii_whitespace();
                let size = words.next().and_then(|w| w.parse::<usize>().ok());
                let last = match words.next() {
                    None => Some(false),
                    Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
                    Some(_) => None,
                };
                let (Some(size), Some(last), None) = (size, last, words.next()) else {
                    // The chunk length is unknown: no way to resynchronise.
                    self.reply("501 5.5.4 Syntax: BDAT <size> [LAST]");
                    return Ok(true);
                };
                let reject = if self.mail.is_none() {
                    Some("503 5.5.1 MAIL first")
                } else if self.rcpts.is_empty() {
                    Some("554 5.5.1 No valid recipients")
                } else {
                    self.bdat_started = true;
                    None
                };
                self.mode = Mode::Bdat {
                    remaining: size,
                    last,
                    reject,
                };
                if size == 0
                    && let Some(Step::Close) = self.chunk_done(stream).await?
                {
                    return Ok(true);
                }
            }
            "RSET" => {
                self.reset_transaction();
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "QUIT" => {
                self.reply("221 2.0.0 Bye");
                return Ok(true);
            }
            _ => self.reply("500 5.5.2 Command not recognized"),
        }
        Ok(false)
    }

    fn ehlo_reply(&self, client: &str) -> String {
        let o = &self.opts;
        let mut lines = vec![format!("{HOSTNAME} greets {client}")];
        let caps = [
            (o.pipelining, "PIPELINING".to_string()),
            (o.eight_bit_mime, "8BITMIME".to_string()),
            (o.smtputf8, "SMTPUTF8".to_string()),
            (o.chunking, "CHUNKING".to_string()),
            (o.size.is_some(), format!("SIZE {}", o.size.unwrap_or(0))),
            (o.dsn, "DSN".to_string()),
            (o.enhanced_status_codes, "ENHANCEDSTATUSCODES".to_string()),
        ];
        lines.extend(caps.into_iter().filter(|(on, _)| *on).map(|(_, c)| c));
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn mail(&mut self, arg: &str) {
        if !self.greeted {
            return self.reply("503 5.5.1 EHLO or HELO first");
        }
        if self.mail.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command");
        }
        let Some((addr, params)) = parse_path(arg, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]");
        };
        let declared = params.split_ascii_whitespace().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.eq_ignore_ascii_case("SIZE")
                .then(|| v.parse::<u64>().ok())?
        });
        if let (Some(declared), Some(limit)) = (declared, self.opts.size)
            && declared > limit as u64
        {
            return self.reply("552 5.3.4 Message size exceeds fixed limit");
        }
        let reply = lock(&self.shared).script.mail_reply.clone();
        if is_positive(&reply) {
            self.mail = Some((addr, params));
        }
        self.reply(&reply);
    }

    fn rcpt(&mut self, arg: &str) {
        if self.mail.is_none() {
            return self.reply("503 5.5.1 MAIL first");
        }
        let Some((addr, params)) = parse_path(arg, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address> [parameters]");
        };
        if self.rcpts.len() >= MAX_RCPTS {
            return self.reply("452 4.5.3 Too many recipients");
        }
        let reply = {
            let st = lock(&self.shared);
            let lower = addr.to_lowercase();
            st.script
                .rcpt_replies
                .iter()
                .find(|(sub, _)| lower.contains(&sub.to_lowercase()))
                .map_or(DEFAULT_RCPT_REPLY.to_string(), |(_, r)| r.clone())
        };
        if is_positive(&reply) {
            self.rcpts.push((addr, params));
        }
        self.reply(&reply);
    }

    async fn data_step(
        &mut self,
        input: &[u8],
        bol: bool,
        stream: &mut TcpStream,
    ) -> io::Result<Step> {
        let mut start = 0;
        if bol {
            match input {
                [] | [b'.'] | [b'.', b'\r'] => return Ok(Step::NeedMore),
                [b'.', b'\r', b'\n', ..] => {
                    self.mode = Mode::Command;
                    return Ok(self
                        .end_of_message(stream)
                        .await?
                        .unwrap_or(Step::Consumed(3)));
                }
                // A leading dot on any other line is stuffing: drop it.
                [b'.', ..] => start = 1,
                _ => {}
            }
        }
        let rest = &input[start..];
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                self.keep(&rest[..i + 2]);
                self.mode = Mode::Data { bol: true };
                Ok(Step::Consumed(start + i + 2))
            }
            None => {
                // Keep a trailing CR back: it may start the line's CRLF.
                let take = rest.len() - usize::from(rest.ends_with(b"\r"));
                self.keep(&rest[..take]);
                self.mode = Mode::Data { bol: false };
                if start + take == 0 {
                    Ok(Step::NeedMore)
                } else {
                    Ok(Step::Consumed(start + take))
                }
            }
        }
    }

    /// A BDAT chunk was fully read.
    async fn chunk_done(&mut self, stream: &mut TcpStream) -> io::Result<Option<Step>> {
        let Mode::Bdat { last, reject, .. } = self.mode else {
            return Ok(None);
        };
        self.mode = Mode::Command;
        if let Some(reject) = reject {
            self.reply(reject);
            return Ok(None);
        }
        if last {
            return self.end_of_message(stream).await;
        }
        let size = self.data_size;
        self.reply(&format!("250 2.0.0 {size} octets received"));
        Ok(None)
    }

    /// End of DATA or BDAT LAST: reply as scripted and record on 2xx.
    async fn end_of_message(&mut self, stream: &mut TcpStream) -> io::Result<Option<Step>> {
        if self.data_size > self.opts.data_limit() {
            self.reset_transaction();
            self.reply("552 5.3.4 Message size exceeds fixed limit");
            return Ok(None);
        }
        let unended = self.line_len - usize::from(self.last_cr);
        if self
            .opts
            .max_line
            .is_some_and(|max| self.long_line || unended > max)
        {
            self.reset_transaction();
            self.reply("500 5.5.0 Line too long");
            return Ok(None);
        }
        let script = lock(&self.shared).script.clone();
        if script.drop_after_data {
            self.reset_transaction();
            return Ok(Some(Step::Close));
        }
        if !script.data_delay.is_zero() {
            self.flush(stream).await?;
            tokio::time::sleep(script.data_delay).await;
        }
        if is_positive(&script.data_reply) {
            let (mail_from, mail_params) = self.mail.take().unwrap_or_default();
            let (rcpts, rcpt_params) = std::mem::take(&mut self.rcpts).into_iter().unzip();
            let message = Received {
                mail_from,
                rcpts,
                data: std::mem::take(&mut self.data),
                mail_params,
                rcpt_params,
            };
            let mut st = lock(&self.shared);
            if let Some((rcpt, dir)) = &st.maildir
                && message.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
            {
                write_maildir(dir, &message.data, st.messages.len());
            }
            st.messages.push(message);
        }
        self.reset_transaction();
        self.reply(&script.data_reply);
        Ok(None)
    }
}

/// Parses `FROM:<addr> params` / `TO:<addr> params` (prefix
/// case-insensitive, optional space before `<`).
fn parse_path(arg: &str, prefix: &str) -> Option<(String, String)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start().strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_string(), rest[end + 1..].trim().to_string()))
}
