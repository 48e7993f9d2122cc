//! Talking to the backends: connection pools, backend order, and one SMTP
//! transaction per message with a reply per recipient (mail-send underneath).

use super::commands::{mail_command, rcpt_command};
use super::gate::Gate;
use super::mx::{Hops, Router};
use super::outcome::Outcome;
use super::tls::Stream;
use super::transfer::{self, Body};
use crate::config;
use crate::config::TlsPolicy;
use crate::health::Health;
use crate::journal::{Journal, Purpose, Record};
use crate::smtp::reply::Reply;
use mail_send::SmtpClient;
use smtp_proto::{EXT_CHUNKING, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_START_TLS, EhloResponse};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// An idle connection is reused only within this time (Postfix's connection
/// cache keeps them for 2 s by default; a local backend tolerates longer).
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// The result of one attempt on one message.
#[derive(Debug)]
pub struct Attempt {
    /// The backend that answered (None if none could be reached).
    pub backend: Option<String>,
    /// One outcome per open recipient: (index into `record.rcpts`, outcome).
    pub outcomes: Vec<(usize, Outcome)>,
    /// The backend took the DSN request along (it offers DSN), so NOTIFY=SUCCESS
    /// is its business now, not ours.
    pub dsn_passed: bool,
}

/// A live connection to a backend, after EHLO (and STARTTLS if used).
struct Conn {
    client: SmtpClient<Stream>,
    caps: u32,
    size_limit: usize,
    last_used: Instant,
    /// A transfer broke off in the middle: the session state is unknown, so
    /// the connection is closed, never reused.
    spoiled: bool,
}

/// One `[[backend]]` with its idle connections and connection limit.
struct Backend {
    cfg: config::Backend,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
}

/// Where a job goes: decided from its purpose before any SMTP is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The backends, by priority (only the one named, if set), through the gate.
    Backends { only: Option<&'a str> },
    /// The standby named.
    Mirror(&'a str),
    /// The sender's mail server (MX) or `bounce.relay`.
    NextHop,
    /// `alert.relay`, or the recipients' MX.
    Alert,
}

/// The route of a job.
pub fn route(purpose: &Purpose) -> Route<'_> {
    match purpose {
        Purpose::Primary => Route::Backends { only: None },
        Purpose::Replay { to, .. } => Route::Backends {
            only: to.as_deref(),
        },
        Purpose::Mirror { mirror } => Route::Mirror(mirror),
        Purpose::Notice => Route::NextHop,
        Purpose::Alert => Route::Alert,
        Purpose::Canary { backend, .. } => Route::Backends {
            only: Some(backend),
        },
    }
}

/// All backends, in preference order, and the standbys.
pub struct Backends {
    list: Vec<Backend>,
    /// The `[[mirror]]` standbys, by name.
    mirrors: Vec<Backend>,
    /// The standbys' circuits.
    mirror_health: Arc<Health>,
    helo: String,
    rotation: AtomicUsize,
    gate: Arc<Gate>,
    bounces: Router,
    /// `alert.relay` (or MX): independent of the backends.
    alerts: Router,
    bounce_timeouts: config::Backend,
    tls: TlsConnector,
    /// `delivery.line_length_limit`: longer lines are folded on the way out.
    line_limit: usize,
}

impl Backends {
    /// The backends of `config`, sorted by priority, its standbys, and the
    /// routes of DSNs (`bounce.relay`) and alerts (`alert.relay`); the EHLO name
    /// is `hostname`. Backends the `gate` is shut for (down, in a quiet window)
    /// are skipped, and connection results are reported to its health view.
    /// Lines longer than `delivery.line_length_limit` (0: no limit) are folded.
    pub fn new(config: &config::Config, gate: Arc<Gate>) -> Backends {
        let (cfgs, concurrency, helo) = (
            &config.backend,
            config.delivery.concurrency,
            &config.hostname,
        );
        let (bounce_relay, alert_relay) = (config.bounce.relay.clone(), config.alert.relay.clone());
        let (line_limit, mirrors) = (config.delivery.line_length_limit, &config.mirror);
        let mirror_health = gate.mirrors().clone();
        let pool = |cfg: config::Backend| Backend {
            slots: Arc::new(Semaphore::new(cfg.max_connections.unwrap_or(concurrency))),
            cfg,
            idle: Mutex::new(Vec::new()),
        };
        let mut list: Vec<Backend> = cfgs.iter().cloned().map(pool).collect();
        let mirrors = mirrors.iter().map(|m| pool(m.as_backend())).collect();
        list.sort_by_key(|b| b.cfg.priority);
        Backends {
            list,
            mirrors,
            mirror_health,
            helo: helo.to_owned(),
            rotation: AtomicUsize::new(0),
            gate,
            bounces: Router::new(bounce_relay),
            alerts: Router::new(alert_relay),
            // DSNs to the Internet: STARTTLS when offered, as Postfix's `may`.
            bounce_timeouts: config::Backend {
                tls: TlsPolicy::Opportunistic,
                ..config::Backend::named("bounce")
            },
            tls: super::tls::connector(),
            line_limit,
        }
    }

    /// The order to try backends in: by priority, rotating among equals so they
    /// share the load.
    fn order(&self) -> Vec<usize> {
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let mut order = Vec::with_capacity(self.list.len());
        let mut start = 0;
        while start < self.list.len() {
            let prio = self.list[start].cfg.priority;
            let end = start
                + self.list[start..]
                    .iter()
                    .take_while(|b| b.cfg.priority == prio)
                    .count();
            let n = end - start;
            order.extend((0..n).map(|k| start + (turn + k) % n));
            start = end;
        }
        order
    }

    /// Delivers `record`'s message, streamed from `journal`, for every open
    /// recipient: the first backend that can be reached gets the transaction;
    /// connection failures move on to the next.
    pub async fn deliver(&self, record: &Record, journal: &Journal, prefix: &[u8]) -> Attempt {
        let body = Body {
            journal,
            id: record.message,
            size: record.size,
            line_limit: self.line_limit,
            prefix,
        };
        let only = match route(&record.purpose) {
            Route::NextHop => return self.deliver_next_hop(&self.bounces, record, body).await,
            Route::Alert => return self.deliver_next_hop(&self.alerts, record, body).await,
            Route::Mirror(name) => return self.deliver_mirror(name, record, body).await,
            Route::Backends { only } => only,
        };
        let mut last_error = String::from("no backend may take mail now (down or in quiet time)");
        let quiet_ok = matches!(
            record.purpose,
            Purpose::Canary {
                during_quiet_time: true,
                ..
            }
        );
        for i in self.order() {
            let backend = &self.list[i];
            if only.is_some_and(|o| o != backend.cfg.name) {
                continue;
            }
            if !self.gate.may_take(&backend.cfg.name, quiet_ok) {
                continue;
            }
            let Ok(_slot) = backend.slots.acquire().await else {
                continue;
            };
            let result = self.attempt_on(backend, record, body).await;
            // A connection that could not be made, or broke mid-transaction, counts
            // as a failed probe, so an outage is noticed between probes.
            let healthy =
                matches!(&result, Ok((o, _)) if !o.iter().any(|(_, x)| x.is_connection_loss()));
            self.gate.health().report(&backend.cfg.name, healthy);
            match result {
                Ok((outcomes, dsn_passed)) => {
                    return Attempt {
                        backend: Some(backend.cfg.name.clone()),
                        outcomes,
                        dsn_passed,
                    };
                }
                Err(e) => {
                    tracing::debug!(id = %record.id, backend = %backend.cfg.name, "backend unreachable: {e}");
                    last_error = format!("{}: {e}", backend.cfg.name);
                }
            }
        }
        unreachable(record, &last_error)
    }

    /// Delivers a copy to the standby `name`. A standby no longer in the
    /// config fails the copy (nothing is left to deliver it to).
    async fn deliver_mirror(&self, name: &str, record: &Record, body: Body<'_>) -> Attempt {
        let Some(mirror) = self.mirrors.iter().find(|m| m.cfg.name == name) else {
            let failed = Outcome::Failed(
                format!("554 5.3.0 mirror {name:?} is no longer in the config; copy dropped")
                    .into(),
            );
            return Attempt {
                backend: None,
                outcomes: open_rcpts(record).map(|i| (i, failed.clone())).collect(),
                dsn_passed: false,
            };
        };
        let Ok(_slot) = mirror.slots.acquire().await else {
            return unreachable(record, "shutting down");
        };
        let result = self.attempt_on(mirror, record, body).await;
        let healthy =
            matches!(&result, Ok((o, _)) if !o.iter().any(|(_, x)| x.is_connection_loss()));
        self.mirror_health.report(name, healthy);
        match result {
            Ok((outcomes, _)) => Attempt {
                backend: Some(name.to_owned()),
                outcomes,
                dsn_passed: false,
            },
            Err(e) => unreachable(record, &format!("mirror {name}: {e}")),
        }
    }

    /// Delivers a DSN or an alert to its recipient's mail server (or the
    /// `router`'s relay): a fresh connection per hop, no pooling, no backend
    /// gate. An alert's recipients share the first one's route.
    async fn deliver_next_hop(&self, router: &Router, record: &Record, body: Body<'_>) -> Attempt {
        let Some(rcpt) = record.rcpts.first() else {
            return unreachable(record, "DSN without recipient");
        };
        let hops = match router.hops(&rcpt.address).await {
            Hops::Try(hops) => hops,
            Hops::NullMx => {
                let failed = Outcome::Failed(
                    "556 5.1.10 recipient domain publishes a null MX (RFC 7505)".into(),
                );
                return Attempt {
                    backend: None,
                    outcomes: open_rcpts(record).map(|i| (i, failed.clone())).collect(),
                    dsn_passed: false,
                };
            }
            Hops::Unresolved(e) => return unreachable(record, &e),
        };
        let mut last_error = String::from("no next hop");
        for hop in hops {
            let cfg = config::Backend {
                address: hop.clone(),
                ..self.bounce_timeouts.clone()
            };
            let mut conn = match connect(&cfg, &self.helo, &self.tls).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = format!("{hop}: {e}");
                    continue;
                }
            };
            let result = transaction(&mut conn, record, body).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.client.quit()).await;
            if let Ok(outcomes) = result {
                return Attempt {
                    backend: Some(hop),
                    outcomes,
                    dsn_passed: false,
                };
            }
            last_error = format!("{hop}: connection lost");
        }
        unreachable(record, &last_error)
    }

    /// One transaction on `backend`. `Err` means no transaction could start
    /// (connect, greeting or EHLO failed); a reused connection that turns out to
    /// be dead is replaced once.
    async fn attempt_on(
        &self,
        backend: &Backend,
        record: &Record,
        body: Body<'_>,
    ) -> Result<(Vec<(usize, Outcome)>, bool), mail_send::Error> {
        if let Some(mut conn) = take_idle(backend) {
            // Err(Stale): closed while idle, so fall through to a fresh connection.
            if let Ok(outcomes) = transaction(&mut conn, record, body).await {
                let dsn = conn.caps & EXT_DSN != 0;
                if reusable(&conn, &outcomes) {
                    put_idle(backend, conn);
                }
                return Ok((outcomes, dsn));
            }
        }
        let mut conn = connect(&backend.cfg, &self.helo, &self.tls).await?;
        match transaction(&mut conn, record, body).await {
            Ok(outcomes) => {
                let dsn = conn.caps & EXT_DSN != 0;
                if reusable(&conn, &outcomes) {
                    put_idle(backend, conn);
                }
                Ok((outcomes, dsn))
            }
            Err(Stale) => Err(mail_send::Error::Io(std::io::Error::other(
                "connection closed by backend",
            ))),
        }
    }

    /// Closes every idle connection politely (QUIT).
    pub async fn close_idle(&self) {
        for b in self.list.iter().chain(&self.mirrors) {
            let conns: Vec<Conn> = std::mem::take(&mut *b.idle.lock().expect("idle lock"));
            for c in conns {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.client.quit()).await;
            }
        }
    }
}

/// Asks `backend` whether it would take mail for `address` (`MAIL FROM:<>`,
/// `RCPT TO`, then `QUIT`), with the backend's TLS policy, all within
/// `timeout`. Returns the RCPT reply; `Err` if no answer about the recipient
/// was had (connection trouble, MAIL refused), which says nothing about it.
pub async fn probe_recipient(
    backend: &config::Backend,
    helo: &str,
    address: &str,
    timeout: Duration,
) -> Result<Reply, String> {
    let run = async {
        let tls = super::tls::connector();
        let mut conn = connect(backend, helo, &tls)
            .await
            .map_err(|e| e.to_string())?;
        let mail = conn
            .client
            .cmd(b"MAIL FROM:<>\r\n")
            .await
            .map_err(|e| e.to_string())?;
        if !(200..300).contains(&mail.code) {
            return Err(format!("MAIL refused: {}", Reply::from(mail)));
        }
        let rcpt = conn
            .client
            .cmd(format!("RCPT TO:<{address}>\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.client.quit()).await;
        Ok(Reply::from(rcpt))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Every open recipient deferred: no server could be reached.
fn unreachable(record: &Record, detail: &str) -> Attempt {
    let outcome = Outcome::unreachable(detail);
    Attempt {
        backend: None,
        outcomes: open_rcpts(record).map(|i| (i, outcome.clone())).collect(),
        dsn_passed: false,
    }
}

fn take_idle(b: &Backend) -> Option<Conn> {
    let mut idle = b.idle.lock().expect("idle lock");
    while let Some(c) = idle.pop() {
        if c.last_used.elapsed() < IDLE_LIMIT {
            return Some(c);
        }
    }
    None
}

/// A connection goes back to the pool unless it broke, or the backend closed
/// it, or a transfer broke off in the middle.
fn reusable(conn: &Conn, outcomes: &[(usize, Outcome)]) -> bool {
    !conn.spoiled && !outcomes.iter().any(|(_, o)| o.is_connection_loss())
}

fn put_idle(b: &Backend, mut conn: Conn) {
    conn.last_used = Instant::now();
    b.idle.lock().expect("idle lock").push(conn);
}

fn open_rcpts(record: &Record) -> impl Iterator<Item = usize> + '_ {
    record
        .rcpts
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state.is_open())
        .map(|(i, _)| i)
}

/// Opens a connection as `cfg.tls` asks. With `opportunistic`, a STARTTLS that is
/// refused or whose handshake fails is followed by a new connection in clear
/// text, as Postfix's `may` level does.
async fn connect(
    cfg: &config::Backend,
    helo: &str,
    tls: &TlsConnector,
) -> Result<Conn, mail_send::Error> {
    match open(cfg, helo, tls, cfg.tls).await {
        Err(mail_send::Error::Tls(e)) if cfg.tls == TlsPolicy::Opportunistic => {
            tracing::info!(backend = %cfg.name, "STARTTLS failed ({e}); sending in clear text");
            open(cfg, helo, tls, TlsPolicy::None).await
        }
        other => other,
    }
}

/// Opens a connection: TCP (no Nagle), greeting, EHLO, and STARTTLS plus a
/// second EHLO as `policy` asks.
async fn open(
    cfg: &config::Backend,
    helo: &str,
    tls: &TlsConnector,
    policy: TlsPolicy,
) -> Result<Conn, mail_send::Error> {
    let stream = tokio::time::timeout(cfg.connect_timeout.0, TcpStream::connect(&cfg.address))
        .await
        .map_err(|_| mail_send::Error::Timeout)??;
    stream.set_nodelay(true)?;
    let mut client = SmtpClient {
        stream: Stream::Plain(stream),
        timeout: cfg.command_timeout.0,
    };
    let greeting = tokio::time::timeout(cfg.command_timeout.0, client.read())
        .await
        .map_err(|_| mail_send::Error::Timeout)??;
    if !(200..300).contains(&greeting.code) {
        return Err(mail_send::Error::UnexpectedReply(greeting));
    }
    let mut ehlo: EhloResponse<String> = client.ehlo(helo).await?;
    let offered = ehlo.capabilities & EXT_START_TLS != 0;
    match policy {
        TlsPolicy::None => {}
        TlsPolicy::Opportunistic | TlsPolicy::Required if offered => {
            let host = cfg
                .address
                .rsplit_once(':')
                .map_or(cfg.address.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            client = super::tls::starttls(client, host, tls).await?;
            ehlo = client.ehlo(helo).await?;
        }
        TlsPolicy::Opportunistic => {}
        TlsPolicy::Required => {
            return Err(mail_send::Error::Tls(Box::new(rustls::Error::General(
                "backend does not offer STARTTLS and tls = \"required\"".into(),
            ))));
        }
    }
    Ok(Conn {
        client,
        caps: ehlo.capabilities,
        size_limit: ehlo.size,
        last_used: Instant::now(),
        spoiled: false,
    })
}

/// The connection died before the backend said anything about this message.
struct Stale;

/// MAIL, RCPT for each open recipient, then the body by BDAT (if offered) or
/// DATA, streamed from the journal. Returns an outcome for every open
/// recipient; `Err(Stale)` if the very first command found the connection dead
/// (nothing was said about the message).
async fn transaction(
    conn: &mut Conn,
    record: &Record,
    body: Body<'_>,
) -> Result<Vec<(usize, Outcome)>, Stale> {
    let rcpts: Vec<usize> = open_rcpts(record).collect();
    let all = |o: Outcome| rcpts.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
    // SIZE= (and the check against the backend's limit) uses the stored size.
    // Folding long lines adds 3 bytes per fold, so a folded message is a few
    // bytes larger than declared; finding out exactly would mean reading the
    // whole message before sending it.
    let size = usize::try_from(record.size + body.prefix.len() as u64).unwrap_or(usize::MAX);
    if conn.caps & EXT_SIZE != 0 && conn.size_limit > 0 && size > conn.size_limit {
        return Ok(all(Outcome::Failed(
            format!(
                "552 5.3.4 message size {size} exceeds backend limit {}",
                conn.size_limit
            )
            .into(),
        )));
    }
    let mut cmds = vec![mail_command(conn.caps, record, size)];
    cmds.extend(
        rcpts
            .iter()
            .map(|&i| rcpt_command(conn.caps, &record.rcpts[i])),
    );
    let replies = match send_envelope(conn, cmds).await {
        Ok(r) => r,
        Err(EnvelopeError::Stale) => return Err(Stale),
        Err(EnvelopeError::Other(e)) => return Ok(all(Outcome::from_error(&e))),
    };
    let mail = Reply::from(replies[0].clone());
    if !mail.is_positive() {
        reset(conn).await;
        return Ok(all(Outcome::from_reply(&mail)));
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::with_capacity(rcpts.len());
    for (&i, r) in rcpts.iter().zip(&replies[1..]) {
        let r = Reply::from(r.clone());
        if r.is_positive() {
            accepted.push(i);
        } else {
            outcomes.push((i, Outcome::from_reply(&r)));
        }
    }
    if accepted.is_empty() {
        reset(conn).await;
        return Ok(outcomes);
    }
    let chunking = conn.caps & EXT_CHUNKING != 0;
    let outcome = match transfer::send(&mut conn.client, chunking, body).await {
        Ok(r) => Outcome::from_reply(&Reply::from(r)),
        Err(e) => {
            conn.spoiled = true;
            Outcome::from_transfer(&e)
        }
    };
    outcomes.extend(accepted.into_iter().map(|i| (i, outcome.clone())));
    Ok(outcomes)
}

enum EnvelopeError {
    Stale,
    Other(mail_send::Error),
}

/// Sends MAIL and the RCPTs, pipelined when the backend offers PIPELINING, and
/// returns one reply per command.
async fn send_envelope(
    conn: &mut Conn,
    cmds: Vec<String>,
) -> Result<Vec<smtp_proto::Response<String>>, EnvelopeError> {
    if conn.caps & EXT_PIPELINING != 0 {
        let n = cmds.len();
        return match conn.client.cmds(cmds).await {
            Ok(r) if r.len() == n => Ok(r),
            Ok(_) => Err(EnvelopeError::Other(mail_send::Error::UnparseableReply)),
            Err(e) => Err(classify_first(e)),
        };
    }
    let mut replies = Vec::with_capacity(cmds.len());
    for (k, cmd) in cmds.iter().enumerate() {
        match conn.client.cmd(cmd).await {
            Ok(r) => {
                let stop = k == 0 && !(200..300).contains(&r.code);
                replies.push(r);
                if stop {
                    // MAIL refused: the RCPTs are not sent; pad so every rcpt has a reply.
                    let r0 = replies[0].clone();
                    replies.resize(cmds.len(), r0);
                    return Ok(replies);
                }
            }
            Err(e) if k == 0 => return Err(classify_first(e)),
            Err(e) => return Err(EnvelopeError::Other(e)),
        }
    }
    Ok(replies)
}

/// An I/O failure or a 421 on the first command of a transaction means the
/// connection was already dead; the message itself was not judged.
fn classify_first(e: mail_send::Error) -> EnvelopeError {
    match e {
        mail_send::Error::Io(_) | mail_send::Error::UnparseableReply => EnvelopeError::Stale,
        mail_send::Error::UnexpectedReply(ref r) if r.code == 421 => EnvelopeError::Stale,
        other => EnvelopeError::Other(other),
    }
}

async fn reset(conn: &mut Conn) {
    let _ = conn.client.rset().await;
}
