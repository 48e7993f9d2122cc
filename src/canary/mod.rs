//! Canaries (`[canary]`): every `canary.interval`, for each backend, a
//! synthetic message with a unique token goes through that backend only, as
//! its own journal job ([`Purpose::Canary`]). When the backend answers 250,
//! `breakwater_canary_last_success_timestamp_seconds{backend}` is set and
//! `breakwater_canary_duration_seconds{backend}` observes created → accepted;
//! with `[canary.imap]` the mailbox is then polled for the token
//! (`breakwater_canary_e2e_seconds{backend}`) and the message deleted.
//!
//! At most one canary is outstanding per backend; one not delivered within
//! an interval is given up (removed from the journal, logged), so an outage
//! never piles canaries up. Canaries are held by quiet time and holds like
//! mail unless `canary.during_quiet_time`, never produce a DSN, are never
//! retained, and do not count in the queue depth, its age or
//! `breakwater_messages_received_total`.
//!
//! The decision what to do when ([`plan`]) is pure and tested with explicit
//! times; [`run`] is the task that carries it out on the dispatcher's clock.

pub mod imap;

use crate::admin::metrics::Metrics;
use crate::config::Dur;
use crate::journal::{Envelope, MailParams, Purpose, QueueId, RcptState, Recipient, Record};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// `[canary]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// How often each backend gets a canary; also how long one may take.
    pub interval: Dur,
    /// The recipient (a mailbox on the backends).
    pub to: String,
    /// The sender; default `breakwater-canary@HOSTNAME`.
    #[serde(default)]
    pub from: Option<String>,
    /// True: canaries go out during quiet-time windows and holds too.
    #[serde(default)]
    pub during_quiet_time: bool,
    /// Look for each canary in the mailbox (end to end).
    #[serde(default)]
    pub imap: Option<ImapConfig>,
}

/// `[canary.imap]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// `host:port` of the IMAP server.
    pub host: String,
    /// The login name.
    pub user: String,
    /// A file holding the password (surrounding white space removed).
    pub password_file: PathBuf,
    /// `tls` (default, port 993), `starttls` (port 143) or `none`.
    #[serde(default)]
    pub tls: ImapTls,
    /// The mailbox to search (default `INBOX`).
    #[serde(default = "default_mailbox")]
    pub mailbox: String,
}

fn default_mailbox() -> String {
    "INBOX".into()
}

/// `canary.imap.tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapTls {
    /// TLS from the first byte (IMAPS).
    #[default]
    Tls,
    /// Plain text, then STARTTLS before logging in.
    Starttls,
    /// Plain text (a loopback or test server only).
    None,
}

impl ImapConfig {
    /// The password in `password_file`.
    pub fn password(&self) -> Result<String, String> {
        let text = std::fs::read_to_string(&self.password_file)
            .map_err(|e| format!("cannot read {}: {e}", self.password_file.display()))?;
        let pw = text.trim();
        if pw.is_empty() || pw.contains(['\r', '\n', '\0']) {
            return Err(format!(
                "{} must hold one password on one line",
                self.password_file.display()
            ));
        }
        Ok(pw.to_owned())
    }
}

impl CanaryConfig {
    /// Reports each problem as (key below `canary.`, message).
    pub fn validate(&self, add: &mut dyn FnMut(String, String)) {
        let mut p = |k: &str, m: String| add(k.to_owned(), m);
        if self.interval.0 < Duration::from_secs(1) {
            p("interval", "must be at least 1s (e.g. 5m)".into());
        }
        if !is_address(&self.to) {
            p(
                "to",
                format!("{:?} is not an address (user@domain)", self.to),
            );
        }
        if let Some(f) = &self.from
            && !is_address(f)
        {
            p("from", format!("{f:?} is not an address (user@domain)"));
        }
        let Some(imap) = &self.imap else { return };
        let host_ok = imap
            .host
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
        if !host_ok {
            p("imap.host", format!("{:?} is not host:port", imap.host));
        }
        if imap.user.is_empty() || imap.user.chars().any(char::is_control) {
            p(
                "imap.user",
                "must be a non-empty name without control characters".into(),
            );
        }
        if let Err(e) = imap.password() {
            p("imap.password_file", e);
        }
        if imap.mailbox.is_empty() || !imap.mailbox.chars().all(|c| c.is_ascii_graphic()) {
            p(
                "imap.mailbox",
                "must be an ASCII mailbox name without spaces".into(),
            );
        }
    }

    /// The envelope sender for a relay named `hostname`.
    pub fn sender(&self, hostname: &str) -> String {
        self.from
            .clone()
            .unwrap_or_else(|| format!("breakwater-canary@{hostname}"))
    }
}

fn is_address(a: &str) -> bool {
    a.rsplit_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
}

/// A canary in the journal, not yet done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    /// Its job (and message) id.
    pub id: QueueId,
    /// When it was created, epoch milliseconds.
    pub created_ms: u64,
}

/// What the canary task should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give up this backend's outstanding canary.
    GiveUp { backend: String, id: QueueId },
    /// Create a canary for this backend.
    Send { backend: String },
}

/// What is due at `now_ms`: every outstanding canary older than
/// `interval_ms`, or for a backend no longer configured, is given up; every
/// configured backend without an outstanding canary whose last one was
/// created at least `interval_ms` ago (or never) gets one. Give-ups come
/// first; a backend whose canary is given up is sent a new one only at the
/// next look (after the give-up succeeded), so at most one is outstanding.
pub fn plan(
    now_ms: u64,
    interval_ms: u64,
    backends: &[String],
    outstanding: &BTreeMap<String, Outstanding>,
    last_created_ms: &BTreeMap<String, u64>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (backend, o) in outstanding {
        let stale = now_ms.saturating_sub(o.created_ms) >= interval_ms;
        if stale || !backends.contains(backend) {
            actions.push(Action::GiveUp {
                backend: backend.clone(),
                id: o.id,
            });
        }
    }
    for backend in backends {
        let due = last_created_ms
            .get(backend)
            .is_none_or(|&t| now_ms.saturating_sub(t) >= interval_ms);
        if due && !outstanding.contains_key(backend) {
            actions.push(Action::Send {
                backend: backend.clone(),
            });
        }
    }
    actions
}

/// A canary a backend accepted, for the end-to-end check.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub backend: String,
    pub token: String,
    pub id: QueueId,
    pub created_ms: u64,
    pub accepted_ms: u64,
}

#[derive(Default)]
struct Book {
    outstanding: BTreeMap<String, Outstanding>,
    last_created_ms: BTreeMap<String, u64>,
    /// Backends with canaries configured: the only metric labels.
    labelled: Vec<String>,
    accepted: Option<mpsc::UnboundedSender<Accepted>>,
}

/// The canaries outstanding, shared by the canary task (which creates and
/// gives them up) and delivery (which tells it when one is done).
pub struct Tracker {
    metrics: Arc<Metrics>,
    book: Mutex<Book>,
}

impl Tracker {
    /// An empty tracker updating `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Tracker {
        Tracker {
            metrics,
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a canary found in the journal at start as outstanding.
    pub fn adopt(&self, r: &Record) {
        if let Purpose::Canary { backend, .. } = &r.purpose {
            let mut b = self.book();
            let created_ms = r.envelope.arrived_ms;
            b.outstanding.insert(
                backend.clone(),
                Outstanding {
                    id: r.id,
                    created_ms,
                },
            );
            let last = b.last_created_ms.entry(backend.clone()).or_default();
            *last = (*last).max(created_ms);
        }
    }

    /// A job left the journal after an attempt at `now_ms`: for a canary,
    /// accepted (metrics, end-to-end check) or refused.
    pub fn finished(&self, r: &Record, now_ms: u64) {
        let Purpose::Canary { backend, token, .. } = &r.purpose else {
            return;
        };
        let mut b = self.book();
        if b.outstanding.get(backend).is_some_and(|o| o.id == r.id) {
            b.outstanding.remove(backend);
        }
        let accepted = r
            .rcpts
            .iter()
            .all(|x| matches!(x.state, RcptState::Delivered { .. }));
        if !accepted {
            tracing::warn!("{} canary refused by backend {backend}", r.id);
            return;
        }
        if !b.labelled.contains(backend) {
            return; // a backend no longer configured: no label for it
        }
        let created_ms = r.envelope.arrived_ms;
        let took = now_ms.saturating_sub(created_ms) as f64 / 1000.0;
        self.metrics
            .canary_last_success
            .with_label_values(&[backend])
            .set(now_ms as f64 / 1000.0);
        self.metrics
            .canary_duration
            .with_label_values(&[backend])
            .observe(took);
        tracing::info!(
            "{} canary accepted by backend {backend} after {took:.3}s",
            r.id
        );
        if let Some(tx) = &b.accepted {
            let _ = tx.send(Accepted {
                backend: backend.clone(),
                token: token.clone(),
                id: r.id,
                created_ms,
                accepted_ms: now_ms,
            });
        }
    }

    /// Sets the backends that have canaries (removing the others' series).
    fn label(&self, backends: &[String]) {
        let mut b = self.book();
        for gone in b.labelled.iter().filter(|x| !backends.contains(x)) {
            let _ = self
                .metrics
                .canary_last_success
                .remove_label_values(&[gone]);
            let _ = self.metrics.canary_duration.remove_label_values(&[gone]);
            let _ = self.metrics.canary_e2e.remove_label_values(&[gone]);
        }
        b.labelled = backends.to_vec();
    }

    /// The plan at `now_ms` for `interval_ms` and `backends`.
    fn plan(&self, now_ms: u64, interval_ms: u64, backends: &[String]) -> Vec<Action> {
        let b = self.book();
        plan(
            now_ms,
            interval_ms,
            backends,
            &b.outstanding,
            &b.last_created_ms,
        )
    }

    fn sent(&self, backend: &str, o: Outstanding) {
        let mut b = self.book();
        b.outstanding.insert(backend.to_owned(), o);
        b.last_created_ms.insert(backend.to_owned(), o.created_ms);
    }

    fn forget(&self, backend: &str, id: QueueId) {
        let mut b = self.book();
        if b.outstanding.get(backend).is_some_and(|o| o.id == id) {
            b.outstanding.remove(backend);
        }
    }

    /// The outstanding canary of `backend`, if any.
    pub fn outstanding(&self, backend: &str) -> Option<Outstanding> {
        self.book().outstanding.get(backend).copied()
    }
}

/// A token no other canary has: the job id and 32 random bits, in hex.
fn token(id: QueueId) -> String {
    use rand_core::RngCore;
    format!("{id}{:08X}", rand_core::OsRng.next_u32())
}

/// The canary message: headers with the token (`X-Breakwater-Canary` and
/// the Subject), CRLF line ends.
fn message(
    from: &str,
    to: &str,
    backend: &str,
    token: &str,
    hostname: &str,
    now_ms: u64,
) -> Vec<u8> {
    let date = chrono::DateTime::from_timestamp_millis(now_ms as i64)
        .unwrap_or_default()
        .to_rfc2822();
    let backend: String = backend
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: breakwater canary {token}\r\nDate: {date}\r\n\
         Message-ID: <{token}@{hostname}>\r\nX-Breakwater-Canary: {token}\r\n\
         X-Breakwater-Canary-Backend: {backend}\r\nAuto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         A delivery check from breakwater through backend {backend}; it may be deleted.\r\n"
    )
    .into_bytes()
}

/// Journals a canary for `backend` and hands it to the dispatcher.
async fn send(
    ctx: &crate::smtp::Context,
    c: &CanaryConfig,
    hostname: &str,
    backend: &str,
    now_ms: u64,
) {
    let id = ctx.journal.next_id();
    let token = token(id);
    let from = c.sender(hostname);
    let bytes = message(&from, &c.to, backend, &token, hostname, now_ms);
    let record = Record {
        id,
        message: id,
        purpose: Purpose::Canary {
            backend: backend.to_owned(),
            token,
            during_quiet_time: c.during_quiet_time,
        },
        envelope: Envelope {
            mail_from: from,
            params: MailParams::default(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: hostname.to_owned(),
            tls: None,
            arrived_ms: now_ms,
        },
        rcpts: vec![Recipient {
            address: c.to.clone(),
            orcpt: None,
            notify: smtp_proto::RCPT_NOTIFY_NEVER,
            state: RcptState::Pending,
            dsn_sent: false,
        }],
        size: bytes.len() as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        delay_warned: false,
        history: Vec::new(),
    };
    match ctx.journal.enqueue(&record, bytes).await {
        Ok(()) => {
            tracing::info!("{id} canary queued for backend {backend} to=<{}>", c.to);
            ctx.queue.canaries().sent(
                backend,
                Outstanding {
                    id,
                    created_ms: now_ms,
                },
            );
            ctx.queue.enqueued(record);
        }
        Err(e) => tracing::warn!("canary for backend {backend} not queued: {e}"),
    }
}

/// Gives up `backend`'s canary `id`; false if it is being delivered right now.
async fn give_up(ctx: &crate::smtp::Context, backend: &str, id: QueueId) -> bool {
    use crate::delivery::QueueError;
    let tracker = ctx.queue.canaries();
    match ctx.queue.delete(id, "canary given up".into()).await {
        Ok(()) => {
            tracing::warn!(
                "{id} canary for backend {backend} given up: not delivered within canary.interval"
            );
            tracker.forget(backend, id);
            true
        }
        Err(QueueError::NotFound(_)) => {
            tracker.forget(backend, id);
            true
        }
        Err(QueueError::Conflict(_)) => false,
        Err(e) => {
            tracing::warn!("{id} canary for backend {backend} could not be given up yet: {e}");
            false
        }
    }
}

/// How often the task looks: a tenth of the interval, 100 ms to 1 s.
fn tick(c: Option<&CanaryConfig>) -> Duration {
    c.map_or(Duration::from_secs(1), |c| {
        (c.interval.0 / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    })
}

/// The canary task: runs until the relay shuts down, following reloads
/// (each look reads the config in force).
pub async fn run(ctx: Arc<crate::smtp::Context>) {
    let tracker = ctx.queue.canaries().clone();
    let (tx, mut accepted) = mpsc::unbounded_channel();
    tracker.book().accepted = Some(tx);
    loop {
        let config = ctx.config();
        let canary = config.canary.as_ref();
        let backends: Vec<String> = match canary {
            Some(_) => config.backend.iter().map(|b| b.name.clone()).collect(),
            None => Vec::new(),
        };
        tracker.label(&backends);
        let now = || ctx.queue.gate().now().timestamp_millis().max(0) as u64;
        let interval_ms = canary.map_or(u64::MAX, |c| c.interval.0.as_millis() as u64);
        for action in tracker.plan(now(), interval_ms, &backends) {
            if let Action::GiveUp { backend, id } = action {
                give_up(&ctx, &backend, id).await;
            }
        }
        if let Some(c) = canary {
            for action in tracker.plan(now(), interval_ms, &backends) {
                if let Action::Send { backend } = action {
                    send(&ctx, c, &config.hostname, &backend, now()).await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick(canary)) => {}
            Some(a) = accepted.recv() => {
                if let Some(c) = canary
                    && let Some(imap) = &c.imap
                {
                    let (ctx, imap, interval) = (ctx.clone(), imap.clone(), c.interval.0);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = check_mailbox(&ctx, &imap, interval, a) => {}
                            _ = ctx.shutdown.cancelled() => {}
                        }
                    });
                }
            }
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Polls the mailbox for an accepted canary, at most `interval` long;
/// records the end-to-end latency and deletes the message when found.
async fn check_mailbox(
    ctx: &crate::smtp::Context,
    cfg: &ImapConfig,
    interval: Duration,
    a: Accepted,
) {
    let every = (interval / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + interval;
    let mut last_error = String::new();
    // Bounded in time (the deadline) and count (a poll every `every` at least).
    let max_polls = (interval.as_millis() / every.as_millis().max(1)) as usize + 2;
    for _ in 0..max_polls {
        // One deadline over the whole session too: a server that drips a
        // byte every few seconds does not keep the check alive.
        let session = tokio::time::timeout_at(deadline, imap::find_and_delete(cfg, &a.token));
        let Ok(found) = session.await else {
            last_error = "no answer within canary.interval".into();
            break;
        };
        match found {
            Ok(true) => {
                let now_ms = ctx.queue.gate().now().timestamp_millis().max(0) as u64;
                let took = now_ms.saturating_sub(a.created_ms) as f64 / 1000.0;
                if ctx.queue.canaries().book().labelled.contains(&a.backend) {
                    ctx.metrics
                        .canary_e2e
                        .with_label_values(&[&a.backend])
                        .observe(took);
                }
                tracing::info!(
                    "{} canary through backend {} found in the mailbox after {took:.3}s (deleted)",
                    a.id,
                    a.backend
                );
                return;
            }
            Ok(false) => {}
            Err(e) => last_error = e.to_string(),
        }
        if tokio::time::Instant::now() + every > deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let why = if last_error.is_empty() {
        "not found".to_owned()
    } else {
        format!("last error: {last_error}")
    };
    tracing::warn!(
        "{} canary through backend {} not in the mailbox within canary.interval ({why})",
        a.id,
        a.backend
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_sends_one_per_backend_and_gives_up_after_an_interval() {
        let backends = names(&["a", "b"]);
        let mut out = BTreeMap::new();
        let mut last = BTreeMap::new();
        let send = |b: &str| Action::Send { backend: b.into() };
        // Nothing yet: one each.
        assert_eq!(
            plan(1_000, 300_000, &backends, &out, &last),
            vec![send("a"), send("b")]
        );
        for (b, id) in [("a", 1), ("b", 2)] {
            out.insert(
                b.to_string(),
                Outstanding {
                    id: QueueId(id),
                    created_ms: 1_000,
                },
            );
            last.insert(b.to_string(), 1_000);
        }
        // Outstanding, not stale: nothing (never a second one).
        assert_eq!(plan(300_999, 300_000, &backends, &out, &last), vec![]);
        // b's was accepted; a's is still out at the interval: give up a's,
        // send b's; a gets a new one only once its give-up is done.
        out.remove("b");
        assert_eq!(
            plan(301_000, 300_000, &backends, &out, &last),
            vec![
                Action::GiveUp {
                    backend: "a".into(),
                    id: QueueId(1)
                },
                send("b")
            ]
        );
        out.remove("a");
        assert_eq!(
            plan(301_000, 300_000, &backends, &out, &last),
            vec![send("a"), send("b")]
        );
        // Accepted early: the next one waits for the interval.
        last.insert("a".into(), 301_000);
        last.insert("b".into(), 301_000);
        assert_eq!(plan(500_000, 300_000, &backends, &out, &last), vec![]);
        assert_eq!(
            plan(601_000, 300_000, &backends, &out, &last),
            vec![send("a"), send("b")]
        );
    }

    #[test]
    fn plan_gives_up_canaries_of_removed_backends() {
        let mut out = BTreeMap::new();
        out.insert(
            "gone".to_string(),
            Outstanding {
                id: QueueId(7),
                created_ms: 1_000,
            },
        );
        let last = BTreeMap::from([("gone".to_string(), 1_000)]);
        assert_eq!(
            plan(1_001, 300_000, &names(&[]), &out, &last),
            vec![Action::GiveUp {
                backend: "gone".into(),
                id: QueueId(7)
            }]
        );
        // The clock going back never gives up early nor sends twice.
        assert_eq!(plan(0, 300_000, &names(&["gone"]), &out, &last), vec![]);
    }

    #[test]
    fn config_is_checked_with_key_paths() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let good: CanaryConfig = toml::from_str(&format!(
            "interval = \"5m\"\nto = \"canary@example.com\"\n[imap]\nhost = \"127.0.0.1:993\"\nuser = \"canary\"\npassword_file = {:?}\n",
            pw.display().to_string()
        ))
        .unwrap();
        let mut problems = Vec::new();
        good.validate(&mut |k, m| problems.push((k, m)));
        assert!(problems.is_empty(), "{problems:?}");
        let imap = good.imap.as_ref().unwrap();
        assert_eq!(imap.tls, ImapTls::Tls);
        assert_eq!(imap.mailbox, "INBOX");
        assert_eq!(imap.password().unwrap(), "secret");
        assert_eq!(good.sender("mx.test"), "breakwater-canary@mx.test");

        let bad: CanaryConfig = toml::from_str(
            "interval = \"10ms\"\nto = \"nobody\"\nfrom = \"a b@c\"\n[imap]\nhost = \"no-port\"\nuser = \"\"\npassword_file = \"/nonexistent/pw\"\ntls = \"starttls\"\nmailbox = \"a b\"\n",
        )
        .unwrap();
        let mut keys = Vec::new();
        bad.validate(&mut |k, _| keys.push(k));
        assert_eq!(
            keys,
            [
                "interval",
                "to",
                "from",
                "imap.host",
                "imap.user",
                "imap.password_file",
                "imap.mailbox"
            ]
        );
        assert!(
            toml::from_str::<CanaryConfig>("to = \"a@b\"\n").is_err(),
            "interval is required"
        );
        assert!(
            toml::from_str::<CanaryConfig>("interval = \"5m\"\nto = \"a@b\"\nevery = \"1m\"\n")
                .is_err(),
            "unknown keys are errors"
        );
        assert!(
            toml::from_str::<CanaryConfig>("interval = \"5m\"\nto = \"a@b\"\n[imap]\nhost = \"h:1\"\nuser = \"u\"\npassword_file = \"p\"\ntls = \"ssl\"\n").is_err()
        );
    }

    #[test]
    fn message_carries_the_token() {
        let m = String::from_utf8(message("f@x", "t@y", "b0", "ABC123", "mx.test", 0)).unwrap();
        assert!(m.contains("\r\nX-Breakwater-Canary: ABC123\r\n"), "{m}");
        assert!(m.contains("Subject: breakwater canary ABC123\r\n"), "{m}");
        assert!(m.ends_with("\r\n") && !m.contains("\n\n") && m.contains("\r\n\r\n"));
        assert_ne!(token(QueueId(1)), token(QueueId(1)));
    }
}
