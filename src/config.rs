//! Configuration: the TOML contract of DESIGN.md, its defaults, and validation.
//!
//! Parsing (`serde`, `deny_unknown_fields`) rejects unknown keys and wrong types;
//! [`Config::validate`] then reports every semantic problem at once, each with the
//! key path it concerns (`backend[1].address`, `quiet_time[0].timezone`).

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type ...).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The file parsed but some values are unusable; every problem is listed.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One validation problem: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path in the file, e.g. `backend[0].address`.
    pub key: String,
    /// What is wrong, in words an admin can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A duration written as `30s`, `5m`, `2h`, `5d` (or `250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `<number><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} has no unit (use e.g. 30s, 5m, 2h, 5d)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a number"))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"
                ));
            }
        };
        n.checked_mul(ms)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our name: banner, EHLO reply, `Received:` header, HELO to backends.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Inbound SMTP.
    #[serde(default)]
    pub smtp: Smtp,
    /// The durable queue.
    #[serde(default)]
    pub journal: Journal,
    /// Which recipients we accept.
    #[serde(default)]
    pub relay: Relay,
    /// Where mail goes; at least one.
    #[serde(default)]
    pub backend: Vec<Backend>,
    /// Independent standbys that each get a copy of every (matching) message.
    #[serde(default)]
    pub mirror: Vec<Mirror>,
    /// Retry and concurrency of delivery.
    #[serde(default)]
    pub delivery: Delivery,
    /// Backend health probes.
    #[serde(default)]
    pub health: Health,
    /// Maintenance windows during which mail is held.
    #[serde(default)]
    pub quiet_time: Vec<QuietTime>,
    /// Bounce (DSN) routing.
    #[serde(default)]
    pub bounce: Bounce,
    /// Admin HTTP endpoint.
    #[serde(default)]
    pub admin: Admin,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// Who may read held mail on `/mail`, and whose mail.
    #[serde(default)]
    pub mailbox_access: Vec<MailboxAccess>,
    /// Mail that must keep arriving (silence alerts).
    #[serde(default)]
    pub flow: Vec<Flow>,
    /// Where alerts go (flows, backend outages, queue age).
    #[serde(default)]
    pub alert: Alert,
    /// Synthetic messages through each backend (`[canary]`).
    #[serde(default)]
    pub canary: Option<crate::canary::CanaryConfig>,
    /// `[auth]`: SPF, DKIM, DMARC and `Authentication-Results:` (src/smtp/auth.rs).
    #[serde(default)]
    pub auth: crate::smtp::auth::AuthConfig,
    /// `[[dnsbl]]`: DNS blocklists checked at connect (src/smtp/dnsbl.rs).
    #[serde(default)]
    pub dnsbl: Vec<crate::smtp::dnsbl::Dnsbl>,
    /// The file this config was read from (reloads read it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_hostname() -> String {
    "localhost".into()
}

/// `[smtp]`: the inbound listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    /// Addresses to listen on (`host:port`).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Largest message accepted, in bytes; advertised in EHLO SIZE.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Most recipients per transaction; more get `452 4.5.3`.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Most concurrent inbound sessions; more get `421 4.3.2`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may stay silent before `421 4.4.2` (RFC 5321: at least 5m).
    /// It also bounds every write to the client and the time to receive each whole
    /// command line or message line (Postfix's `smtpd_timeout` with
    /// `smtpd_per_record_deadline = yes`), so a client sending a byte at a time
    /// or never reading its replies loses its slot.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// The whole message (from `354` to the final dot, or all BDAT chunks) must
    /// arrive within this time; then `421 4.4.2`.
    #[serde(default = "default_data_timeout")]
    pub data_timeout: Dur,
    /// Most concurrent sessions from one IP address; more get `421 4.7.0`.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Error replies (4xx/5xx to commands) one session may receive; then
    /// `421 4.7.0` and the connection is closed (Postfix `smtpd_hard_error_limit`).
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// More `Received:` headers than this in a message: `554 5.4.6` (mail loop;
    /// Postfix `hopcount_limit`).
    #[serde(default = "default_max_received_headers")]
    pub max_received_headers: usize,
    /// Wait this long before the greeting; a client that talks before it is a
    /// pregreet offender (postscreen's test): logged, and its first command gets
    /// `554 5.5.0`. `0s` only catches clients that talk before the session starts.
    #[serde(default = "default_greet_pause")]
    pub greet_pause: Dur,
    /// Inbound STARTTLS; advertised only when set.
    #[serde(default)]
    pub tls: Option<SmtpTls>,
}

/// `[smtp.tls]`: the certificate for inbound STARTTLS (re-read on SIGHUP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpTls {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:2525".into()]
}
fn default_max_message_size() -> u64 {
    52_428_800
}
fn default_max_recipients() -> usize {
    100
}
fn default_max_connections() -> usize {
    1000
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_data_timeout() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_max_connections_per_ip() -> usize {
    20
}
fn default_max_errors() -> usize {
    10
}
fn default_max_received_headers() -> usize {
    50
}
fn default_greet_pause() -> Dur {
    Dur(Duration::ZERO)
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            listen: default_listen(),
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            data_timeout: default_data_timeout(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_errors: default_max_errors(),
            max_received_headers: default_max_received_headers(),
            greet_pause: default_greet_pause(),
            tls: None,
        }
    }
}

/// `[journal]`: where and how much we store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Directory holding the journal file.
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    /// Message bytes the journal may hold; beyond it clients get `452 4.3.1`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Free space on the journal's file system below which new mail is refused
    /// at MAIL with `452 4.3.1` (and `/readyz` says so); delivery goes on.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Keep delivered messages this long (bytes, envelope, outcome) for
    /// `breakwater replay`, `export` and `/mail`; 0s keeps nothing. Retained
    /// bytes count against `max_bytes` but are given up, oldest first, before
    /// new mail is refused.
    #[serde(default = "default_retain_delivered")]
    pub retain_delivered: Dur,
}

fn default_retain_delivered() -> Dur {
    Dur(Duration::ZERO)
}

fn default_journal_path() -> PathBuf {
    "/var/lib/breakwater".into()
}
fn default_max_bytes() -> u64 {
    10_737_418_240
}
fn default_min_free_bytes() -> u64 {
    536_870_912
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            path: default_journal_path(),
            max_bytes: default_max_bytes(),
            min_free_bytes: default_min_free_bytes(),
            retain_delivered: default_retain_delivered(),
        }
    }
}

/// `[relay]`: the domains we are MX for, and which recipients exist there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Recipient domains accepted from anyone. `.example.com` also matches subdomains
    /// (Postfix `relay_domains` style); `example.com` matches only itself.
    #[serde(default)]
    pub domains: Vec<String>,
    /// A file of known recipients, one a line: `user@example.com` or
    /// `*@example.com` (every address of the domain); `#` starts a comment.
    /// Re-read on SIGHUP. A relay domain with no line in it accepts everyone,
    /// unless `verify_recipients` says otherwise.
    #[serde(default)]
    pub recipients: Option<PathBuf>,
    /// Check unknown recipients with a RCPT probe to a backend that is up, and
    /// cache the answer (Postfix `reject_unverified_recipient`). While no backend
    /// is up, cached answers apply and uncached recipients are accepted.
    #[serde(default)]
    pub verify_recipients: bool,
    /// How long a backend's "this user exists" is cached.
    #[serde(default = "default_verify_positive_ttl")]
    pub verify_positive_ttl: Dur,
    /// How long a backend's "no such user" is cached.
    #[serde(default = "default_verify_negative_ttl")]
    pub verify_negative_ttl: Dur,
}

fn default_verify_positive_ttl() -> Dur {
    Dur(Duration::from_secs(7 * 86_400))
}
fn default_verify_negative_ttl() -> Dur {
    Dur(Duration::from_secs(3_600))
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            domains: Vec::new(),
            recipients: None,
            verify_recipients: false,
            verify_positive_ttl: default_verify_positive_ttl(),
            verify_negative_ttl: default_verify_negative_ttl(),
        }
    }
}

/// TLS policy towards a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Plain SMTP.
    #[default]
    None,
    /// STARTTLS if offered.
    Opportunistic,
    /// STARTTLS or no delivery.
    Required,
}

/// `[[backend]]`: one next hop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Label used in logs and metrics.
    pub name: String,
    /// `host:port` of the mail server.
    pub address: String,
    /// Lower is preferred; equal priorities share the load.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// TLS towards this backend.
    #[serde(default)]
    pub tls: TlsPolicy,
    /// Connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Timeout for each command reply (and the whole DATA transfer).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Dur,
    /// Most connections to this backend at once (default: `delivery.concurrency`).
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Backend {
    /// A backend with this name and default settings (address `127.0.0.1:25`).
    pub fn named(name: &str) -> Backend {
        Backend {
            name: name.into(),
            address: "127.0.0.1:25".into(),
            priority: default_priority(),
            tls: TlsPolicy::None,
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            max_connections: None,
        }
    }
}

/// `[[mirror]]`: an independent standby server that gets a copy of every
/// message (whose recipients match `recipients`), as its own delivery job:
/// retried on its own schedule, gated only by the standby's health (never by
/// the backends' outages, quiet time or holds), never bounced to the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Label used in logs and metrics (`breakwater_mirror_queue_depth{mirror}`).
    pub name: String,
    /// `host:port` of the standby.
    pub address: String,
    /// Recipient patterns to copy (`user@example.com`, `*@example.com`);
    /// empty: every recipient.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// TLS towards the standby.
    #[serde(default)]
    pub tls: TlsPolicy,
    /// Connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Timeout for each command reply (and the whole DATA transfer).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Dur,
    /// Most connections to the standby at once.
    #[serde(default = "default_mirror_connections")]
    pub max_connections: usize,
}

fn default_mirror_connections() -> usize {
    4
}

impl Mirror {
    /// The standby as a next hop (for the SMTP client and the probes).
    pub fn as_backend(&self) -> Backend {
        Backend {
            name: self.name.clone(),
            address: self.address.clone(),
            priority: default_priority(),
            tls: self.tls,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            max_connections: Some(self.max_connections),
        }
    }

    /// True if a copy for `address` goes to this standby.
    pub fn wants(&self, address: &str) -> bool {
        self.recipients.is_empty() || self.recipients.iter().any(|p| address_matches(p, address))
    }
}

/// `user@example.com` (exact, case-insensitive) or `*@example.com` (any
/// address of the domain) or `*` (anything).
pub fn address_matches(pattern: &str, address: &str) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*@") {
        Some(domain) => address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => pattern.eq_ignore_ascii_case(address),
    }
}

fn default_priority() -> u32 {
    10
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_command_timeout() -> Dur {
    Dur(Duration::from_secs(120))
}

/// `[delivery]`: retry schedule and parallelism.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// Delay before each retry; the last step repeats.
    #[serde(default = "default_retry")]
    pub retry: Vec<Dur>,
    /// After this, undelivered recipients are bounced.
    #[serde(default = "default_max_queue_lifetime")]
    pub max_queue_lifetime: Dur,
    /// Most deliveries in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most messages per second while draining a backlog (unset: unlimited).
    #[serde(default)]
    pub drain_rate: Option<f64>,
    /// Send a delay warning DSN after this long (unset: never).
    #[serde(default)]
    pub delay_warning: Option<Dur>,
    /// Grace period for in-flight deliveries at shutdown.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// Longest line sent to a backend, CRLF not counted; longer lines are broken
    /// by inserting CRLF SPACE, as Postfix's `smtp_line_length_limit` does
    /// (RFC 5322's limit is 998). 0 sends lines as they came.
    #[serde(default = "default_line_length_limit")]
    pub line_length_limit: usize,
}

fn default_retry() -> Vec<Dur> {
    ["1m", "5m", "15m", "1h"]
        .iter()
        .map(|s| Dur::parse(s).expect("valid default"))
        .collect()
}
fn default_max_queue_lifetime() -> Dur {
    Dur(Duration::from_secs(5 * 86_400))
}
fn default_concurrency() -> usize {
    16
}
fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_line_length_limit() -> usize {
    998
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            retry: default_retry(),
            max_queue_lifetime: default_max_queue_lifetime(),
            concurrency: default_concurrency(),
            drain_rate: None,
            delay_warning: None,
            shutdown_grace: default_shutdown_grace(),
            line_length_limit: default_line_length_limit(),
        }
    }
}

/// `[health]`: backend probes (implemented by the continuity work).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Time between probes.
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// Time a probe may take.
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive failures before a backend counts as down.
    #[serde(default = "default_fall_rise")]
    pub fall: u32,
    /// Consecutive successes before a backend counts as up again.
    #[serde(default = "default_fall_rise")]
    pub rise: u32,
}

fn default_health_interval() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_fall_rise() -> u32 {
    2
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            fall: default_fall_rise(),
            rise: default_fall_rise(),
        }
    }
}

/// `[[quiet_time]]`: a recurring (`days`/`start`/`end`/`timezone`) or one-off
/// (`from`/`until`) maintenance window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietTime {
    /// Label for logs.
    pub name: String,
    /// IANA time zone of a recurring window (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Days a recurring window starts on (`mon` .. `sun`; empty = every day).
    #[serde(default)]
    pub days: Vec<String>,
    /// Local start time `HH:MM` of a recurring window.
    #[serde(default)]
    pub start: Option<String>,
    /// Local end time `HH:MM`; before `start` means the window crosses midnight.
    #[serde(default)]
    pub end: Option<String>,
    /// RFC 3339 start of a one-off window.
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339 end of a one-off window.
    #[serde(default)]
    pub until: Option<String>,
    /// Backends the window applies to (default: all).
    #[serde(default)]
    pub backends: Vec<String>,
}

/// `[[flow]]`: mail that must keep arriving. A message is part of the flow
/// when every given matcher matches (`from`, any of `to`, `header`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Label in metrics (`breakwater_flow_silent{flow}`) and alerts.
    pub name: String,
    /// Envelope sender patterns (`user@example.com`, `*@example.com`); any matches.
    #[serde(default, deserialize_with = "one_or_many")]
    pub from: Vec<String>,
    /// Recipient patterns; a message matches when any recipient matches any.
    #[serde(default, deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    /// A header whose (unfolded) value must match a regular expression.
    #[serde(default)]
    pub header: Option<FlowHeader>,
    /// Longest allowed gap between two messages (counted only while active).
    pub max_silence: Dur,
    /// "Fewer than expected": at least this many messages per `period`.
    #[serde(default)]
    pub min_count: Option<u32>,
    /// The period `min_count` counts over (default: `max_silence`).
    #[serde(default)]
    pub period: Option<Dur>,
    /// When the flow is expected (default: always). Same fields as
    /// `[[quiet_time]]`: `days`, `start`, `end`, `timezone`, or `from`/`until`.
    #[serde(default)]
    pub active: Vec<FlowWindow>,
}

/// `flow.header`: `{ name = "Subject", regex = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowHeader {
    /// Header field name (case-insensitive).
    pub name: String,
    /// Regular expression (Rust `regex` syntax) searched in the value.
    pub regex: String,
}

/// `flow.active`: a window in which the flow is expected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowWindow {
    /// IANA time zone (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Days (`mon` .. `sun`, empty: every day).
    #[serde(default)]
    pub days: Vec<String>,
    /// Local start `HH:MM`.
    #[serde(default)]
    pub start: Option<String>,
    /// Local end `HH:MM`.
    #[serde(default)]
    pub end: Option<String>,
    /// RFC 3339 start of a one-off window.
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339 end of a one-off window.
    #[serde(default)]
    pub until: Option<String>,
}

impl FlowWindow {
    /// The window as a `[[quiet_time]]` (same parser, same DST rules).
    pub fn as_quiet_time(&self, name: &str) -> QuietTime {
        QuietTime {
            name: name.to_owned(),
            timezone: self.timezone.clone(),
            days: self.days.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            backends: Vec::new(),
        }
    }
}

/// `[alert]`: alert mail and webhook, on a route independent of the backends.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Who gets alert mail (none: no alert mail).
    #[serde(default)]
    pub to: Vec<String>,
    /// Envelope and `From:` address of alert mail (default: the null sender
    /// `<>` with `From: MAILER-DAEMON@HOSTNAME`, as Postfix sends its notices).
    #[serde(default)]
    pub from: Option<String>,
    /// Smart host for alert mail (`host:port`); unset: the recipients' MX.
    /// Never the backends: alerts must not depend on what failed.
    #[serde(default)]
    pub relay: Option<String>,
    /// `http://host:port/path`: each alert is also POSTed as JSON (retried).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Alert when a backend has been down this long (unset: never).
    #[serde(default)]
    pub backend_down: Option<Dur>,
    /// Alert when the oldest queued message is this old (unset: never).
    #[serde(default)]
    pub queue_age: Option<Dur>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `[bounce]`: how DSNs leave.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounce {
    /// Smart host for DSNs (`host:port`); unset = the sender domain's MX.
    #[serde(default)]
    pub relay: Option<String>,
}

/// `[admin]`: metrics, health endpoints and the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `host:port` of the admin HTTP listener.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A file holding the bearer token every `/api` call must carry.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9925".into()
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

impl Admin {
    /// The token in `token_file` (surrounding white space removed), if set.
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{} must hold one token without spaces",
                path.display()
            ));
        }
        Ok(Some(token.to_owned()))
    }
}

/// `[[mailbox_access]]`: one person who may read held mail on `/mail`
/// during an outage, and the recipients whose mail they may see.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxAccess {
    /// The sign-in name.
    pub user: String,
    /// An argon2 PHC string, from `breakwater hash-password`.
    pub password_hash: String,
    /// `alice@example.com` (any case) or `*@example.com` (the whole domain).
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl fmt::Debug for MailboxAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxAccess")
            .field("user", &self.user)
            .field("password_hash", &"<hidden>")
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// `[log]`: how log lines look.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`; levels come from `RUST_LOG`.
    #[serde(default)]
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, Error> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            let message = if key.is_empty() || key == "." {
                inner
            } else {
                format!("{key}: {inner}")
            };
            Error::Parse {
                path: PathBuf::from("<config>"),
                message,
            }
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// Every semantic problem in the configuration, each with its key path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            p.add("hostname", "must be a host name without spaces");
        }
        self.validate_smtp(&mut p);
        if self.journal.max_bytes == 0 {
            p.add("journal.max_bytes", "must be greater than 0");
        }
        if let Some(path) = &self.relay.recipients
            && let Err(e) = std::fs::metadata(path)
        {
            p.add(
                "relay.recipients",
                format!("cannot read {}: {e}", path.display()),
            );
        }
        if self.relay.verify_positive_ttl.0.is_zero() {
            p.add("relay.verify_positive_ttl", "must be greater than 0");
        }
        if self.relay.verify_negative_ttl.0.is_zero() {
            p.add("relay.verify_negative_ttl", "must be greater than 0");
        }
        if self.relay.domains.is_empty() {
            p.add(
                "relay.domains",
                "must list at least one domain (the domains this relay is MX for)",
            );
        }
        for (i, d) in self.relay.domains.iter().enumerate() {
            let bare = d.strip_prefix('.').unwrap_or(d);
            if bare.is_empty() || bare.contains(['@', ' ', '/', ':']) {
                p.add(
                    format!("relay.domains[{i}]"),
                    format!("{d:?} is not a domain"),
                );
            }
        }
        self.validate_backends(&mut p);
        self.validate_mirrors(&mut p);
        self.validate_delivery(&mut p);
        self.validate_health(&mut p);
        for (i, q) in self.quiet_time.iter().enumerate() {
            for problem in crate::schedule::validate(q, &self.backend) {
                p.add(format!("quiet_time[{i}].{}", problem.key), problem.message);
            }
        }
        if let Some(r) = &self.bounce.relay {
            check_host_port(&mut p, "bounce.relay", r);
        }
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            p.add(
                "admin.listen",
                format!("{:?} is not ip:port", self.admin.listen),
            );
        }
        if let Err(e) = self.admin.token() {
            p.add("admin.token_file", e);
        }
        self.validate_mailbox_access(&mut p);
        for (key, message) in crate::flows::validate(self) {
            p.add(key, message);
        }
        if let Some(c) = &self.canary {
            c.validate(&mut |k, m| p.add(format!("canary.{k}"), m));
        }
        p.0.extend(crate::smtp::auth::validate(&self.auth, &self.dnsbl));
        p.0
    }

    fn validate_mailbox_access(&self, p: &mut Problems) {
        for (i, m) in self.mailbox_access.iter().enumerate() {
            let key = |k: &str| format!("mailbox_access[{i}].{k}");
            if m.user.trim().is_empty() {
                p.add(key("user"), "must not be empty");
            } else if m.user.len() > 64
                || m.user.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                p.add(key("user"), "must be at most 64 characters, without spaces");
            } else if m.user == crate::admin::mail::ADMIN_USER {
                p.add(
                    key("user"),
                    "\"admin\" is reserved: it signs in with the admin token (admin.token_file)",
                );
            }
            if self.mailbox_access[..i].iter().any(|o| o.user == m.user) {
                p.add(key("user"), format!("{:?} is used twice", m.user));
            }
            if let Err(e) = crate::admin::mail::check_password_hash(&m.password_hash) {
                p.add(key("password_hash"), e);
            }
            if m.addresses.is_empty() {
                p.add(
                    key("addresses"),
                    "must list at least one address (alice@example.com or *@example.com)",
                );
            }
            for (j, a) in m.addresses.iter().enumerate() {
                if let Err(e) = crate::admin::mail::Pattern::parse(a) {
                    p.add(format!("mailbox_access[{i}].addresses[{j}]"), e);
                }
            }
        }
    }

    fn validate_smtp(&self, p: &mut Problems) {
        if self.smtp.listen.is_empty() {
            p.add("smtp.listen", "must list at least one address");
        }
        for (i, l) in self.smtp.listen.iter().enumerate() {
            if l.parse::<SocketAddr>().is_err() {
                p.add(format!("smtp.listen[{i}]"), format!("{l:?} is not ip:port"));
            }
        }
        if self.smtp.max_message_size < 1024 {
            p.add("smtp.max_message_size", "must be at least 1024 bytes");
        }
        if self.smtp.max_recipients == 0 {
            p.add(
                "smtp.max_recipients",
                "must be at least 1 (RFC 5321 wants 100)",
            );
        }
        if self.smtp.max_connections == 0 {
            p.add("smtp.max_connections", "must be at least 1");
        }
        if self.smtp.idle_timeout.0 < Duration::from_secs(1) {
            p.add(
                "smtp.idle_timeout",
                "must be at least 1s (RFC 5321 suggests 5m)",
            );
        }
        if self.smtp.data_timeout.0 < Duration::from_secs(1) {
            p.add(
                "smtp.data_timeout",
                "must be at least 1s (RFC 5321 suggests 10m)",
            );
        }
        if self.smtp.max_connections_per_ip == 0 {
            p.add("smtp.max_connections_per_ip", "must be at least 1");
        }
        if self.smtp.max_errors == 0 {
            p.add("smtp.max_errors", "must be at least 1");
        }
        if self.smtp.max_received_headers == 0 {
            p.add("smtp.max_received_headers", "must be at least 1");
        }
        if self.smtp.greet_pause.0 > Duration::from_secs(30) {
            p.add(
                "smtp.greet_pause",
                "must be at most 30s (senders give up waiting for a greeting)",
            );
        }
        if let Some(tls) = &self.smtp.tls {
            for (key, path) in [("smtp.tls.cert", &tls.cert), ("smtp.tls.key", &tls.key)] {
                if let Err(e) = std::fs::metadata(path) {
                    p.add(key, format!("cannot read {}: {e}", path.display()));
                }
            }
        }
    }

    fn validate_backends(&self, p: &mut Problems) {
        if self.backend.is_empty() {
            p.add("backend", "at least one [[backend]] is required");
        }
        for (i, b) in self.backend.iter().enumerate() {
            if b.name.trim().is_empty() {
                p.add(format!("backend[{i}].name"), "must not be empty");
            }
            if self.backend[..i].iter().any(|o| o.name == b.name) {
                p.add(
                    format!("backend[{i}].name"),
                    format!("{:?} is used twice", b.name),
                );
            }
            check_host_port(p, &format!("backend[{i}].address"), &b.address);
            if b.max_connections == Some(0) {
                p.add(
                    format!("backend[{i}].max_connections"),
                    "must be at least 1",
                );
            }
            if b.connect_timeout.0.is_zero() {
                p.add(
                    format!("backend[{i}].connect_timeout"),
                    "must be greater than 0",
                );
            }
            if b.command_timeout.0.is_zero() {
                p.add(
                    format!("backend[{i}].command_timeout"),
                    "must be greater than 0",
                );
            }
        }
    }

    fn validate_mirrors(&self, p: &mut Problems) {
        for (i, m) in self.mirror.iter().enumerate() {
            if m.name.trim().is_empty() || m.name.contains([':', '/', ' ']) {
                p.add(
                    format!("mirror[{i}].name"),
                    "must be a non-empty name without ':', '/' or spaces",
                );
            }
            if self.mirror[..i].iter().any(|o| o.name == m.name) {
                p.add(
                    format!("mirror[{i}].name"),
                    format!("{:?} is used twice", m.name),
                );
            }
            check_host_port(p, &format!("mirror[{i}].address"), &m.address);
            if self.backend.iter().any(|b| b.address == m.address) {
                p.add(
                    format!("mirror[{i}].address"),
                    format!(
                        "{} is also a [[backend]]: a standby must be independent of the backends",
                        m.address
                    ),
                );
            }
            for (k, r) in m.recipients.iter().enumerate() {
                let r = r.trim();
                let ok = r == "*"
                    || r.strip_prefix("*@")
                        .is_some_and(|d| !d.is_empty() && !d.contains('@'))
                    || (r.contains('@') && !r.contains('*'));
                if !ok {
                    p.add(
                        format!("mirror[{i}].recipients[{k}]"),
                        format!("{r:?} is not an address, *@domain or *"),
                    );
                }
            }
            if m.max_connections == 0 {
                p.add(format!("mirror[{i}].max_connections"), "must be at least 1");
            }
            if m.connect_timeout.0.is_zero() {
                p.add(
                    format!("mirror[{i}].connect_timeout"),
                    "must be greater than 0",
                );
            }
            if m.command_timeout.0.is_zero() {
                p.add(
                    format!("mirror[{i}].command_timeout"),
                    "must be greater than 0",
                );
            }
        }
    }

    fn validate_delivery(&self, p: &mut Problems) {
        let d = &self.delivery;
        if d.retry.is_empty() {
            p.add("delivery.retry", "must list at least one delay");
        }
        for (i, r) in d.retry.iter().enumerate() {
            if r.0.is_zero() {
                p.add(format!("delivery.retry[{i}]"), "must be greater than 0");
            }
        }
        if d.max_queue_lifetime.0.is_zero() {
            p.add("delivery.max_queue_lifetime", "must be greater than 0");
        }
        if d.concurrency == 0 {
            p.add("delivery.concurrency", "must be at least 1");
        }
        if d.line_length_limit != 0 && d.line_length_limit < 78 {
            p.add(
                "delivery.line_length_limit",
                "must be 0 (off) or at least 78 (RFC 5322 asks for 78, allows 998)",
            );
        }
        if let Some(rate) = d.drain_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            p.add(
                "delivery.drain_rate",
                "must be a positive number of messages per second",
            );
        }
    }

    fn validate_health(&self, p: &mut Problems) {
        let h = &self.health;
        if h.interval.0.is_zero() {
            p.add("health.interval", "must be greater than 0");
        }
        if h.timeout.0.is_zero() {
            p.add("health.timeout", "must be greater than 0");
        }
        if h.fall == 0 {
            p.add("health.fall", "must be at least 1");
        }
        if h.rise == 0 {
            p.add("health.rise", "must be at least 1");
        }
    }

    /// True if `domain` (any case) is one we relay for.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.relay
            .domains
            .iter()
            .any(|d| match d.strip_prefix('.') {
                Some(parent) => {
                    domain.len() > parent.len()
                        && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
                        && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
                }
                None => d.trim_end_matches('.').eq_ignore_ascii_case(domain),
            })
    }
}

fn check_host_port(p: &mut Problems, key: &str, value: &str) {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
    if !ok {
        p.add(key, format!("{value:?} is not host:port"));
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [relay]
        domains = ["example.com"]
        [[backend]]
        name = "primary"
        address = "127.0.0.1:25"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.smtp.max_message_size, 52_428_800);
        assert_eq!(c.delivery.retry.len(), 4);
        assert_eq!(c.delivery.concurrency, 16);
        assert_eq!(c.smtp.idle_timeout.0, Duration::from_secs(300));
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(Dur::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(Dur::parse("2h").unwrap().0, Duration::from_secs(7200));
        assert_eq!(Dur::parse("5d").unwrap().0, Duration::from_secs(432_000));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("m").is_err());
        assert!(Dur::parse("5w").is_err());
        assert!(Dur::parse("99999999999999999999d").is_err());
    }

    #[test]
    fn type_errors_name_the_key_path() {
        let e = Config::parse(&format!("{MINIMAL}\n[smtp]\nidle_timeout = \"5x\"\n")).unwrap_err();
        assert!(e.to_string().contains("smtp.idle_timeout"), "{e}");
        let e =
            Config::parse(&format!("{MINIMAL}\n[delivery]\nretry = [\"1m\", 5]\n")).unwrap_err();
        assert!(e.to_string().contains("delivery.retry[1]"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::parse(&format!("{MINIMAL}\n[smtp]\nlisten_on = []\n")).unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
    }

    #[test]
    fn all_problems_reported_with_key_paths() {
        let text = r#"
            hostname = ""
            [smtp]
            listen = ["nonsense"]
            max_recipients = 0
            [delivery]
            concurrency = 0
            retry = []
            [[backend]]
            name = "a"
            address = "no-port"
            [[backend]]
            name = "a"
            address = "127.0.0.1:25"
        "#;
        let Error::Invalid(problems) = Config::parse(text).unwrap_err() else {
            panic!("expected validation errors");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "hostname",
            "smtp.listen[0]",
            "smtp.max_recipients",
            "relay.domains",
            "backend[0].address",
            "backend[1].name",
            "delivery.retry",
            "delivery.concurrency",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
    }

    #[test]
    fn mailbox_access_is_checked() {
        let hash = crate::admin::mail::hash_password("pw").unwrap();
        let ok = format!(
            "{MINIMAL}\n[[mailbox_access]]\nuser = \"alice\"\npassword_hash = \"{hash}\"\naddresses = [\"alice@example.com\", \"*@sales.example.com\"]\n"
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.mailbox_access[0].user, "alice");
        assert!(
            !format!("{c:?}").contains(&hash),
            "the hash stays out of Debug"
        );
        let bad = format!(
            "{MINIMAL}
[[mailbox_access]]
user = \"\"
password_hash = \"$argon2id$v=19$...\"
addresses = [\"alice\"]
[[mailbox_access]]
user = \"bob\"
password_hash = \"{hash}\"
addresses = []
[[mailbox_access]]
user = \"bob\"
password_hash = \"{hash}\"
addresses = [\"*@x.test\"]
[[mailbox_access]]
user = \"admin\"
password_hash = \"{hash}\"
addresses = [\"*@x.test\"]
"
        );
        let Error::Invalid(problems) = Config::parse(&bad).unwrap_err() else {
            panic!("expected validation errors");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "mailbox_access[0].user",
            "mailbox_access[0].password_hash",
            "mailbox_access[0].addresses[0]",
            "mailbox_access[1].addresses",
            "mailbox_access[2].user",
            "mailbox_access[3].user",
        ] {
            assert!(keys.contains(&want), "missing {want} in {problems:?}");
        }
        let e = Config::parse(&format!(
            "{MINIMAL}\n[[mailbox_access]]\nuser = \"a\"\npassword_hash = \"{hash}\"\naddresses = [\"a@x.test\"]\npassword = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
    }

    #[test]
    fn relay_domain_matching() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.relay.domains = vec!["example.com".into(), ".corp.test".into()];
        assert!(c.is_relay_domain("example.com"));
        assert!(c.is_relay_domain("EXAMPLE.com."));
        assert!(!c.is_relay_domain("sub.example.com"));
        assert!(!c.is_relay_domain("badexample.com"));
        assert!(c.is_relay_domain("a.corp.test"));
        assert!(!c.is_relay_domain("corp.test"));
        assert!(!c.is_relay_domain("xcorp.test"));
    }
}
