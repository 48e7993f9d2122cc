//! Edge authentication (`[auth]`): SPF for the MAIL FROM and HELO identities
//! (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489), checked with mail-auth at
//! the end of DATA / BDAT LAST, before the journal commit, and written into an
//! `Authentication-Results:` header (RFC 8601) that is prepended before our
//! `Received:`.
//!
//! With `[auth] enabled = true` a message is kept in memory until its end (no
//! staging in parts): the DKIM check needs all of it, and the header goes in
//! front of everything. The verification is bounded by `auth.dns_timeout` in
//! total; a method whose lookups did not finish in time is `temperror`, and a
//! DNS problem alone never refuses mail. Only `dmarc_reject = true` with a
//! definite DMARC `fail` under the domain's `p=reject` refuses (`550 5.7.1`).
//!
//! DNS answers are cached by the resolver (hickory's cache, by TTL, positive
//! and negative answers); one resolver is shared by every session and built
//! again only when `auth.resolver` or `auth.dns_timeout` change.
//!
//! The header formatting ([`header`]) and the removal of forged headers
//! ([`strip_ours`]) are pure functions (the removal works in place on the buffer), tested below.

use crate::config::{Dur, Problem};
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use serde::Deserialize;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Verify SPF, DKIM, DMARC and prepend `Authentication-Results:`.
    #[serde(default)]
    pub enabled: bool,
    /// Refuse (`550 5.7.1`) a DMARC `fail` whose domain publishes `p=reject`.
    #[serde(default)]
    pub dmarc_reject: bool,
    /// The whole verification of a message (and each DNSBL check) takes at
    /// most this long; what is unfinished is `temperror`.
    #[serde(default = "default_dns_timeout")]
    pub dns_timeout: Dur,
    /// A DNS server (`ip:port`) instead of `/etc/resolv.conf`.
    #[serde(default)]
    pub resolver: Option<String>,
    /// Bytes all sessions together may hold of messages kept whole for the
    /// check; a message that would go over it gets `452 4.3.1`.
    #[serde(default = "default_max_memory")]
    pub max_memory: u64,
}

fn default_dns_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

/// 256 MiB.
fn default_max_memory() -> u64 {
    256 << 20
}

/// The least `auth.max_memory` accepted.
const MIN_MAX_MEMORY: u64 = 1 << 20;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            dmarc_reject: false,
            dns_timeout: default_dns_timeout(),
            resolver: None,
            max_memory: default_max_memory(),
        }
    }
}

/// The problems of `[auth]` and `[[dnsbl]]`, with their key paths.
pub fn validate(auth: &AuthConfig, dnsbl: &[super::dnsbl::Dnsbl]) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut add = |key: String, message: String| p.push(Problem { key, message });
    let t = auth.dns_timeout.0;
    if t.is_zero() || t > Duration::from_secs(60) {
        add(
            "auth.dns_timeout".into(),
            format!("{} must be more than 0 and at most 60s", auth.dns_timeout),
        );
    }
    if auth.max_memory < MIN_MAX_MEMORY {
        add(
            "auth.max_memory".into(),
            format!(
                "{} must be at least {MIN_MAX_MEMORY} bytes (1 MiB)",
                auth.max_memory
            ),
        );
    }
    if let Some(r) = &auth.resolver
        && r.parse::<SocketAddr>().is_err()
    {
        add(
            "auth.resolver".into(),
            format!("{r:?} is not ip:port (e.g. \"127.0.0.1:53\")"),
        );
    }
    for (i, z) in dnsbl.iter().enumerate() {
        let zone = z.zone.trim_end_matches('.');
        if !is_domain(zone) {
            add(
                format!("dnsbl[{i}].zone"),
                format!("{:?} is not a DNS zone", z.zone),
            );
        }
        if dnsbl[..i]
            .iter()
            .any(|o| o.zone.trim_end_matches('.').eq_ignore_ascii_case(zone))
        {
            add(
                format!("dnsbl[{i}].zone"),
                format!("{:?} is listed twice", z.zone),
            );
        }
    }
    p
}

/// The shared resolver, built on first use from `[auth]` (and again when its
/// DNS settings change on a reload), and the memory budget of messages held
/// whole (`auth.max_memory`).
#[derive(Default)]
pub struct Edge {
    built: Mutex<Option<Built>>,
    /// What all sessions together may hold of messages kept whole.
    pub memory: Budget,
}

/// A resolver and the `auth.resolver` and `auth.dns_timeout` it was built for.
type Built = (Option<String>, Duration, Arc<MessageAuthenticator>);

impl Edge {
    /// An edge whose memory budget is `cfg.max_memory`.
    pub fn new(cfg: &AuthConfig) -> Edge {
        Edge {
            built: Mutex::new(None),
            memory: Budget::new(cfg.max_memory),
        }
    }

    /// The authenticator for `cfg`'s resolver settings.
    pub fn authenticator(&self, cfg: &AuthConfig) -> Result<Arc<MessageAuthenticator>, String> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, t, a)) = built.as_ref()
            && *r == cfg.resolver
            && *t == cfg.dns_timeout.0
        {
            return Ok(a.clone());
        }
        let a = Arc::new(build(cfg)?);
        *built = Some((cfg.resolver.clone(), cfg.dns_timeout.0, a.clone()));
        Ok(a)
    }
}

/// A byte budget shared by every session (`auth.max_memory`): each message
/// held whole reserves what its buffer holds, without waiting, and gives it
/// back when its [`Reservation`] is dropped (refused, reset, disconnected,
/// timed out, committed).
#[derive(Debug, Clone)]
pub struct Budget(Arc<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    /// The most that may be reserved at once (follows a reload).
    limit: AtomicU64,
    /// Reserved now.
    used: AtomicU64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(default_max_memory())
    }
}

impl Budget {
    /// A budget of `limit` bytes, none reserved.
    pub fn new(limit: u64) -> Budget {
        Budget(Arc::new(BudgetState {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }))
    }

    /// A new limit (a reload); what is reserved stays reserved, and nothing
    /// more is until it fits under the new limit.
    pub fn set_limit(&self, limit: u64) {
        self.0.limit.store(limit, Ordering::Relaxed);
    }

    /// The limit in force.
    pub fn limit(&self) -> u64 {
        self.0.limit.load(Ordering::Relaxed)
    }

    /// Bytes reserved now, by all sessions.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Acquire)
    }

    /// An empty reservation, to grow with [`Reservation::grow_to`].
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of a [`Budget`] held by one message; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `total` bytes in all (never fewer than now), if the budget has
    /// room for the difference; `false` (and nothing changed) when it has not.
    /// Never waits.
    pub fn grow_to(&mut self, total: u64) -> bool {
        let Some(extra) = total.checked_sub(self.bytes).filter(|&e| e > 0) else {
            return true;
        };
        let limit = self.budget.limit();
        let fits = self
            .budget
            .0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|&n| n <= limit)
            })
            .is_ok();
        if fits {
            self.bytes = total;
        }
        fits
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.0.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

fn build(cfg: &AuthConfig) -> Result<MessageAuthenticator, String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = cfg.dns_timeout.0;
    opts.attempts = 1;
    opts.cache_size = 8192;
    opts.use_hosts_file = ResolveHosts::Never;
    let config = match &cfg.resolver {
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("auth.resolver: {addr:?} is not ip:port"))?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            ResolverConfig::from_parts(None, vec![], vec![ns])
        }
        None => {
            let (config, system) = mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
            opts.ndots = system.ndots;
            config
        }
    };
    MessageAuthenticator::new(config, opts).map_err(|e| format!("DNS resolver: {e}"))
}

/// A result of RFC 8601 section 2.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl Verdict {
    /// The result keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::None => "none",
            Verdict::TempError => "temperror",
            Verdict::PermError => "permerror",
        }
    }
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimVerdict {
    pub result: Verdict,
    /// `d=`, `s=` and the first 8 base64 characters of `b=` (empty when the
    /// signature could not be read).
    pub domain: String,
    pub selector: String,
    pub b: String,
}

/// Everything the header reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    /// SPF of the MAIL FROM identity (postmaster@HELO for the null sender).
    pub spf_mailfrom: Verdict,
    pub mailfrom: String,
    /// SPF of the HELO identity.
    pub spf_helo: Verdict,
    pub helo: String,
    /// One per signature; none: `dkim=none`.
    pub dkim: Vec<DkimVerdict>,
    pub dmarc: Verdict,
    /// The RFC 5322.From domain (empty: not reported).
    pub from_domain: String,
}

/// The `Authentication-Results:` header for `results`, CRLF-terminated, one
/// result per line (folded with a tab, shown here as spaces):
///
/// ```text
/// Authentication-Results: relay.test;
///     spf=pass smtp.mailfrom=sender@example.org;
///     spf=pass smtp.helo=mail.example.org;
///     dkim=pass header.d=example.org header.s=sel header.b=AbCdEfGh;
///     dmarc=pass header.from=example.org
/// ```
pub fn header(authserv_id: &str, r: &Results) -> Vec<u8> {
    let mut h = format!("Authentication-Results: {};", value(authserv_id));
    h.push_str(&format!(
        "\r\n\tspf={} smtp.mailfrom={};",
        r.spf_mailfrom.as_str(),
        value(&r.mailfrom)
    ));
    h.push_str(&format!(
        "\r\n\tspf={} smtp.helo={};",
        r.spf_helo.as_str(),
        value(&r.helo)
    ));
    if r.dkim.is_empty() {
        h.push_str("\r\n\tdkim=none;");
    }
    for d in &r.dkim {
        h.push_str(&format!("\r\n\tdkim={}", d.result.as_str()));
        if !d.domain.is_empty() {
            h.push_str(&format!(" header.d={}", value(&d.domain)));
        }
        if !d.selector.is_empty() {
            h.push_str(&format!(" header.s={}", value(&d.selector)));
        }
        if !d.b.is_empty() {
            h.push_str(&format!(" header.b={}", value(&d.b)));
        }
        h.push(';');
    }
    h.push_str(&format!("\r\n\tdmarc={}", r.dmarc.as_str()));
    if !r.from_domain.is_empty() {
        h.push_str(&format!(" header.from={}", value(&r.from_domain)));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// A property value as RFC 8601 allows it: as is when it is a token or
/// `local@domain` of token characters, else a quoted string. Controls are
/// dropped and the length is bounded, so a client's HELO or a forged
/// signature cannot break the header.
fn value(s: &str) -> Cow<'_, str> {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(255).collect();
    let plain = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~/=?".contains(c) || !c.is_ascii()
            })
    };
    let ok = match clean.rsplit_once('@') {
        Some((local, domain)) => (local.is_empty() || plain(local)) && plain(domain),
        None => plain(&clean),
    };
    if ok && clean.len() == s.len() {
        return Cow::Borrowed(s);
    }
    if ok {
        return Cow::Owned(clean);
    }
    let mut q = String::with_capacity(clean.len() + 2);
    q.push('"');
    for c in clean.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Cow::Owned(q)
}

/// Removes from `buf[from..]` (the client's bytes) the `Authentication-Results:`
/// fields of its header section whose authserv-id is `authserv_id` (RFC 8601
/// section 5: ours, so forged); others stay, and every other byte too. In
/// place and in one pass however many fields go: no second copy of the
/// message outside `auth.max_memory`. True if any went.
pub fn strip_ours(buf: &mut Vec<u8>, from: usize, authserv_id: &str) -> bool {
    let Some(msg) = buf.get(from..) else {
        return false;
    };
    let drop = forged_fields(msg, authserv_id);
    if drop.is_empty() {
        return false;
    }
    let mut write = from;
    let mut at = from;
    for (s, e) in drop {
        let (s, e) = (from + s, from + e);
        buf.copy_within(at..s, write);
        write += s - at;
        at = e;
    }
    let end = buf.len();
    buf.copy_within(at..end, write);
    write += end - at;
    buf.truncate(write);
    true
}

/// The byte ranges of the forged fields [`strip_ours`] removes, in order.
fn forged_fields(msg: &[u8], authserv_id: &str) -> Vec<(usize, usize)> {
    let mut drop: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        // The end of the header section: an empty line.
        if msg[pos..].starts_with(b"\r\n") || msg[pos] == b'\n' {
            break;
        }
        let start = pos;
        // One field: its first line and every continuation line.
        loop {
            match msg[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => pos += i + 1,
                None => pos = msg.len(),
            }
            if !matches!(msg.get(pos), Some(b' ' | b'\t')) {
                break;
            }
        }
        let field = &msg[start..pos];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            let name = field[..colon].trim_ascii_end();
            if name.eq_ignore_ascii_case(b"Authentication-Results")
                && authserv_id_of(&field[colon + 1..]).is_some_and(|id| {
                    // Quoted pairs (`"relay\\.test"`) unquoted before comparing.
                    let plain: Vec<u8> = id.iter().copied().filter(|&b| b != b'\\').collect();
                    plain.eq_ignore_ascii_case(authserv_id.as_bytes())
                })
            {
                drop.push((start, pos));
            }
        }
    }
    drop
}

/// Most `DKIM-Signature:` fields of a message that are verified; with more,
/// DKIM is not checked (`dkim=permerror`).
const MAX_DKIM_SIGNATURES: usize = 10;

/// The authserv-id at the start of an `Authentication-Results:` value:
/// after white space and comments, up to `;`, white space or a comment.
fn authserv_id_of(v: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut depth = 0usize;
    while i < v.len() {
        match v[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let start = i.min(v.len());
    let rest = &v[start..];
    if rest.first() == Some(&b'"') {
        // RFC 8601 allows a quoted-string; compare what it says, not its quotes
        // (`"relay.test"` is ours too).
        let close = rest[1..].iter().position(|&b| b == b'"')?;
        let id = &rest[1..1 + close];
        let id = id.strip_suffix(b".").unwrap_or(id);
        return (!id.is_empty()).then_some(id);
    }
    let end = rest
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
        .unwrap_or(rest.len());
    let id = &rest[..end];
    let id = id.strip_suffix(b".").unwrap_or(id);
    (!id.is_empty()).then_some(id)
}

/// True for something that can be looked up as a domain: dotted labels of
/// at most 63 characters, no IP literal.
pub fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
        && s.parse::<std::net::Ipv4Addr>().is_err()
}

/// The first 6 bytes of `b` in base64 (8 characters), as `header.b` shows it.
pub fn b_prefix(b: &[u8]) -> String {
    base64(&b[..b.len().min(6)])
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Checks the message in `spool` (our `header_len` bytes of header lines,
/// then the client's) and rewrites it as `Authentication-Results:`, our
/// header lines, then the client's bytes without forged results; or refuses
/// it (DMARC `p=reject` with `auth.dmarc_reject`).
pub async fn apply(
    s: &mut super::session::Session,
    tx: &super::session::Transaction,
    spool: &mut crate::journal::Spool,
    header_len: usize,
) -> Result<(), super::reply::Reply> {
    let id = spool.id();
    if spool.len() != spool.buf().len() as u64 || spool.buf().len() < header_len {
        // Cannot happen: an [auth] message is never staged in parts.
        tracing::error!(%id, "message was staged before its check: no Authentication-Results");
        return Ok(());
    }
    let cfg = &s.cfg;
    let helo = s.helo.as_deref().unwrap_or("");
    let sender = Sender {
        ip: s.client_ip,
        helo,
        mail_from: &tx.mail_from,
        hostname: &cfg.hostname,
    };
    let started = std::time::Instant::now();
    let outcome = match s.ctx.auth.authenticator(&cfg.auth) {
        Ok(a) => {
            verify(
                &a,
                &sender,
                &spool.buf()[header_len..],
                cfg.auth.dns_timeout.0,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(%id, "authentication not checked: {e}");
            unchecked(&sender)
        }
    };
    let r = &outcome.results;
    let m = &s.ctx.metrics.auth_results;
    m.with_label_values(&["spf", r.spf_mailfrom.as_str()]).inc();
    m.with_label_values(&["spf_helo", r.spf_helo.as_str()])
        .inc();
    if r.dkim.is_empty() {
        m.with_label_values(&["dkim", "none"]).inc();
    }
    for d in &r.dkim {
        m.with_label_values(&["dkim", d.result.as_str()]).inc();
    }
    m.with_label_values(&["dmarc", r.dmarc.as_str()]).inc();
    let dkim: Vec<String> = r
        .dkim
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d.result.as_str(),
                super::connection::printable(&d.domain)
            )
        })
        .collect();
    tracing::info!(
        "{id} auth spf={} spf_helo={} dkim=[{}] dmarc={} from_domain={} in {:?}",
        r.spf_mailfrom.as_str(),
        r.spf_helo.as_str(),
        dkim.join(","),
        r.dmarc.as_str(),
        super::connection::printable(&r.from_domain),
        started.elapsed()
    );
    if cfg.auth.dmarc_reject && outcome.dmarc_policy_reject {
        tracing::warn!(%id, client = %s.client_ip, "rejected message: DMARC fail, p=reject of {}", super::connection::printable(&r.from_domain));
        s.ctx
            .metrics
            .reject(crate::admin::metrics::Rejection::Dmarc);
        return Err(super::reply::Reply::new(
            550,
            "5.7.1",
            format!(
                "Message rejected: DMARC policy of {} says reject",
                value(&r.from_domain)
            ),
        ));
    }
    let header = header(&cfg.hostname, r);
    let buf = spool.buf();
    if strip_ours(buf, header_len, &cfg.hostname) {
        tracing::info!(%id, "removed Authentication-Results headers claiming to be ours");
    }
    buf.splice(0..0, header);
    Ok(())
}

/// Results when no resolver could be had: every method `temperror`.
fn unchecked(sender: &Sender<'_>) -> Outcome {
    let helo = sender.helo.trim_end_matches('.');
    Outcome {
        results: Results {
            spf_mailfrom: Verdict::TempError,
            mailfrom: if sender.mail_from.is_empty() {
                format!("postmaster@{helo}")
            } else {
                sender.mail_from.to_owned()
            },
            spf_helo: Verdict::TempError,
            helo: helo.to_owned(),
            dkim: vec![DkimVerdict {
                result: Verdict::TempError,
                domain: String::new(),
                selector: String::new(),
                b: String::new(),
            }],
            dmarc: Verdict::TempError,
            from_domain: String::new(),
        },
        dmarc_policy_reject: false,
    }
}

/// Who sent the message, as SPF and DMARC see it.
pub struct Sender<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// The reverse path, empty for `<>`.
    pub mail_from: &'a str,
    /// Our host name (SPF's `%{r}`).
    pub hostname: &'a str,
}

/// What the checks found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub results: Results,
    /// DMARC failed under `p=reject` (refuse it when `dmarc_reject` is set).
    pub dmarc_policy_reject: bool,
}

fn spf_verdict(r: SpfResult) -> Verdict {
    match r {
        SpfResult::Pass => Verdict::Pass,
        SpfResult::Fail => Verdict::Fail,
        SpfResult::SoftFail => Verdict::SoftFail,
        SpfResult::Neutral => Verdict::Neutral,
        SpfResult::TempError => Verdict::TempError,
        SpfResult::PermError => Verdict::PermError,
        SpfResult::None => Verdict::None,
    }
}

fn dkim_verdict(r: &DkimResult) -> Verdict {
    match r {
        DkimResult::Pass => Verdict::Pass,
        // RFC 6376 6.3: a body hash that does not match fails the signature
        // (mail-auth calls it neutral).
        DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            Verdict::Fail
        }
        DkimResult::Neutral(_) => Verdict::Neutral,
        DkimResult::Fail(_) => Verdict::Fail,
        DkimResult::PermError(_) => Verdict::PermError,
        DkimResult::TempError(_) => Verdict::TempError,
        DkimResult::None => Verdict::None,
    }
}

fn dmarc_verdict(r: &DmarcResult) -> Verdict {
    match r {
        DmarcResult::Pass => Verdict::Pass,
        DmarcResult::Fail(_) => Verdict::Fail,
        DmarcResult::TempError(_) => Verdict::TempError,
        DmarcResult::PermError(_) => Verdict::PermError,
        DmarcResult::None => Verdict::None,
    }
}

/// Checks SPF (both identities), DKIM and DMARC for `message` (the client's
/// bytes) from `sender`, all within `limit`.
pub async fn verify(
    auth: &MessageAuthenticator,
    sender: &Sender<'_>,
    message: &[u8],
    limit: Duration,
) -> Outcome {
    let deadline = Instant::now() + limit;
    let helo = sender.helo.trim_end_matches('.');
    let mailfrom = if sender.mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else {
        sender.mail_from.to_owned()
    };
    let mf_domain = mailfrom.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    let parsed = AuthenticatedMessage::parse(message);

    let spf_mf = async {
        if !is_domain(&mf_domain) {
            return SpfOutput::new(mf_domain.clone());
        }
        auth.verify_spf(SpfParameters::verify_mail_from(
            sender.ip,
            helo,
            sender.hostname,
            &mailfrom,
        ))
        .await
    };
    let spf_helo = async {
        if !is_domain(helo) {
            return SpfOutput::new(helo.to_owned());
        }
        auth.verify_spf(SpfParameters::verify_ehlo(sender.ip, helo, sender.hostname))
            .await
    };
    // Each signature costs hashing and a lookup: a message with more than
    // MAX_DKIM_SIGNATURES is not checked at all (a CPU bomb otherwise).
    let too_many = parsed
        .as_ref()
        .is_some_and(|m| m.dkim_headers.len() > MAX_DKIM_SIGNATURES);
    let dkim = async {
        match &parsed {
            Some(_) if too_many => Vec::new(),
            Some(m) => auth.verify_dkim(m).await,
            None => Vec::new(),
        }
    };
    let (spf_mf, spf_helo, dkim) = tokio::join!(
        timeout_at(deadline, spf_mf),
        timeout_at(deadline, spf_helo),
        timeout_at(deadline, dkim)
    );
    let late = spf_mf.is_err() || dkim.is_err();
    let spf_mf = spf_mf
        .unwrap_or_else(|_| SpfOutput::new(mf_domain.clone()).with_result(SpfResult::TempError));
    let spf_helo_verdict = spf_helo.map_or(Verdict::TempError, |o| spf_verdict(o.result()));
    let (dkim_verdicts, dkim) = match dkim {
        Ok(outputs) => (
            outputs
                .iter()
                .map(|o| {
                    let (domain, selector, b) = o.signature().map_or_else(Default::default, |s| {
                        (s.d.clone(), s.s.clone(), b_prefix(&s.b))
                    });
                    DkimVerdict {
                        result: dkim_verdict(o.result()),
                        domain,
                        selector,
                        b,
                    }
                })
                .collect(),
            outputs,
        ),
        Err(_) => (
            vec![DkimVerdict {
                result: Verdict::TempError,
                domain: String::new(),
                selector: String::new(),
                b: String::new(),
            }],
            Vec::new(),
        ),
    };
    let dkim_verdicts = if too_many {
        vec![DkimVerdict {
            result: Verdict::PermError,
            domain: String::new(),
            selector: String::new(),
            b: String::new(),
        }]
    } else {
        dkim_verdicts
    };
    let from_domain = parsed
        .as_ref()
        .and_then(|m| m.from.first())
        .and_then(|f| f.rsplit_once('@'))
        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
    let (dmarc, reject) = match &parsed {
        None => (Verdict::None, false),
        Some(m) => {
            let params = DmarcParameters::new(m, &dkim, &mf_domain, &spf_mf);
            match timeout_at(deadline, auth.verify_dmarc(params)).await {
                Err(_) => (Verdict::TempError, false),
                Ok(out) => {
                    let v = dmarc_verdict(&out.result());
                    // An unfinished SPF or DKIM check, or one the DNS could
                    // not answer (SERVFAIL), might have passed: a DMARC fail
                    // built on it is not a fail, and never worth a 550.
                    let uncertain = late
                        || spf_verdict(spf_mf.result()) == Verdict::TempError
                        || dkim_verdicts.iter().any(|d| d.result == Verdict::TempError);
                    if uncertain && v != Verdict::Pass {
                        (Verdict::TempError, false)
                    } else {
                        (v, v == Verdict::Fail && out.policy() == Policy::Reject)
                    }
                }
            }
        }
    };
    Outcome {
        results: Results {
            spf_mailfrom: spf_verdict(spf_mf.result()),
            mailfrom,
            spf_helo: spf_helo_verdict,
            helo: helo.to_owned(),
            dkim: dkim_verdicts,
            dmarc,
            from_domain,
        },
        dmarc_policy_reject: reject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        Results {
            spf_mailfrom: Verdict::Pass,
            mailfrom: "sender@example.org".into(),
            spf_helo: Verdict::None,
            helo: "mail.example.org".into(),
            dkim: vec![DkimVerdict {
                result: Verdict::Pass,
                domain: "example.org".into(),
                selector: "sel".into(),
                b: "AbCdEfGh".into(),
            }],
            dmarc: Verdict::Pass,
            from_domain: "example.org".into(),
        }
    }

    #[test]
    fn header_format_is_exact() {
        assert_eq!(
            String::from_utf8(header("relay.test", &results())).unwrap(),
            "Authentication-Results: relay.test;\r\n\
             \tspf=pass smtp.mailfrom=sender@example.org;\r\n\
             \tspf=none smtp.helo=mail.example.org;\r\n\
             \tdkim=pass header.d=example.org header.s=sel header.b=AbCdEfGh;\r\n\
             \tdmarc=pass header.from=example.org\r\n"
        );
    }

    #[test]
    fn header_without_signatures_or_from() {
        let mut r = results();
        r.dkim.clear();
        r.dmarc = Verdict::None;
        r.from_domain.clear();
        r.spf_mailfrom = Verdict::TempError;
        let h = String::from_utf8(header("relay.test", &r)).unwrap();
        assert!(h.ends_with("\tdkim=none;\r\n\tdmarc=none\r\n"), "{h}");
        assert!(h.contains("spf=temperror smtp.mailfrom="), "{h}");
    }

    #[test]
    fn hostile_values_are_quoted_not_injected() {
        let mut r = results();
        r.helo = "evil\r\nX-Injected: 1; dkim=pass".into();
        r.mailfrom = "\"a b\"@example.org".into();
        r.dkim[0].selector = "s(1)".into();
        let h = String::from_utf8(header("relay.test", &r)).unwrap();
        assert_eq!(h.matches("\r\n").count(), 5, "{h}");
        assert!(
            h.contains("smtp.helo=\"evilX-Injected: 1; dkim=pass\";"),
            "{h}"
        );
        assert!(
            h.contains("smtp.mailfrom=\"\\\"a b\\\"@example.org\";"),
            "{h}"
        );
        assert!(h.contains("header.s=\"s(1)\""), "{h}");
        let long = "a".repeat(5000);
        r.helo = long;
        let h = header("relay.test", &r);
        assert!(h.len() < 1200);
    }

    #[test]
    fn strips_only_our_authserv_id() {
        let msg = b"Authentication-Results: relay.test; spf=pass\r\n\
            Authentication-Results: other.test; spf=fail\r\n\
            Subject: hi\r\n\r\nAuthentication-Results: relay.test; body stays\r\n";
        assert_eq!(
            &*strip(msg, "relay.test"),
            &b"Authentication-Results: other.test; spf=fail\r\n\
            Subject: hi\r\n\r\nAuthentication-Results: relay.test; body stays\r\n"[..]
        );
    }

    #[test]
    fn strips_folded_and_case_insensitive() {
        let msg = b"From: a@b.test\r\n\
            authentication-results:\r\n\t (comment (nested) \\) ) RELAY.test.\r\n\t;\r\n\tspf=pass\r\n\
            To: c@d.test\r\n\r\nbody\r\n";
        assert_eq!(
            &*strip(msg, "relay.test"),
            &b"From: a@b.test\r\nTo: c@d.test\r\n\r\nbody\r\n"[..]
        );
        // A similar name is not ours.
        let msg = b"Authentication-Results: relay.test.evil; spf=pass\r\n\r\n";
        assert_eq!(&*strip(msg, "relay.test"), &msg[..]);
        let msg = b"Authentication-Results: relay.testing; spf=pass\r\n\r\n";
        assert_eq!(&*strip(msg, "relay.test"), &msg[..]);
        let msg = b"Authentication-Results-X: relay.test; spf=pass\r\n\r\n";
        assert_eq!(&*strip(msg, "relay.test"), &msg[..]);
    }

    #[test]
    fn strips_a_quoted_authserv_id_of_ours() {
        for forged in [
            &b"Authentication-Results: \"relay.test\"; dkim=pass\r\nSubject: x\r\n\r\nb"[..],
            b"Authentication-Results: (c) \"RELAY.TEST.\"; dkim=pass\r\nSubject: x\r\n\r\nb",
            b"Authentication-Results: \"relay\\.test\"; dkim=pass\r\nSubject: x\r\n\r\nb",
        ] {
            assert_eq!(
                &*strip(forged, "relay.test"),
                &b"Subject: x\r\n\r\nb"[..],
                "{:?}",
                String::from_utf8_lossy(forged)
            );
        }
        let other = b"Authentication-Results: \"other.test\"; dkim=pass\r\n\r\n";
        assert_eq!(&*strip(other, "relay.test"), &other[..]);
        let open = b"Authentication-Results: \"relay.test; dkim=pass\r\n\r\n";
        let _ = strip(open, "relay.test"); // unterminated: no panic
    }

    #[test]
    fn strips_at_the_end_and_without_body() {
        let msg = b"Subject: x\r\nAuthentication-Results: relay.test;\r\n spf=pass\r\n";
        assert_eq!(&*strip(msg, "relay.test"), &b"Subject: x\r\n"[..]);
        let msg = b"Subject: x\r\nAuthentication-Results: relay.test; spf=pass";
        assert_eq!(&*strip(msg, "relay.test"), &b"Subject: x\r\n"[..]);
        let msg = b"Subject: x\r\nAuthentication-Results: relay.test;\r\n\r\nb";
        assert_eq!(&*strip(msg, "relay.test"), &b"Subject: x\r\n\r\nb"[..]);
    }

    /// [`strip_ours`] on a copy of a whole message.
    fn strip(msg: &[u8], authserv_id: &str) -> Vec<u8> {
        let mut buf = msg.to_vec();
        strip_ours(&mut buf, 0, authserv_id);
        buf
    }

    #[test]
    fn stripping_keeps_our_prefix_and_takes_many_fields_in_one_pass() {
        let many = "Authentication-Results: relay.test; x\r\nX: y\r\n".repeat(500) + "\r\nbody\r\n";
        let prefix = b"Received: from us\r\nAuthentication-Results: relay.test; ours\r\n";
        let mut buf = prefix.to_vec();
        buf.extend_from_slice(many.as_bytes());
        assert!(strip_ours(&mut buf, prefix.len(), "relay.test"));
        let mut want = prefix.to_vec();
        want.extend_from_slice(("X: y\r\n".repeat(500) + "\r\nbody\r\n").as_bytes());
        assert_eq!(buf, want, "our own lines before `from` stay");
        let mut buf = prefix.to_vec();
        buf.extend_from_slice(b"Subject: none of ours\r\n\r\n");
        let before = buf.clone();
        assert!(!strip_ours(&mut buf, prefix.len(), "relay.test"));
        assert_eq!(buf, before);
        let mut short = b"abc".to_vec();
        assert!(!strip_ours(&mut short, 10, "relay.test"));
        assert_eq!(short, b"abc");
    }

    #[test]
    fn strip_edge_cases_do_not_panic() {
        for msg in [
            &b""[..],
            b"\r\n",
            b"\r\nAuthentication-Results: relay.test; spf=pass\r\n",
            b"Authentication-Results:",
            b"Authentication-Results: (unclosed",
            b"Authentication-Results: \\",
            b"no colon at all\r\n",
            b":\r\n\r\n",
            b"\t\r\n",
            &[0xff, 0xfe, b':', b'\n'],
        ] {
            let out = strip(msg, "relay.test");
            assert!(out.len() <= msg.len());
        }
        // No header section: nothing is removed.
        let msg = b"\r\nAuthentication-Results: relay.test; spf=pass\r\n";
        assert_eq!(&*strip(msg, "relay.test"), &msg[..]);
        assert_eq!(
            &*strip(b"Authentication-Results: relay.test", "relay.test"),
            b""
        );
    }

    #[test]
    fn base64_and_domains() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b_prefix(b"foobarbaz"), "Zm9vYmFy");
        assert!(is_domain("mail.example.org"));
        assert!(is_domain("mail.example.org."));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("[127.0.0.1]"));
        assert!(!is_domain("127.0.0.1"));
        assert!(!is_domain("a..b"));
        assert!(!is_domain(""));
    }

    #[test]
    fn config_problems_name_their_keys() {
        let auth = AuthConfig {
            dns_timeout: Dur(Duration::ZERO),
            resolver: Some("localhost".into()),
            max_memory: (1 << 20) - 1,
            ..AuthConfig::default()
        };
        let bl = vec![
            super::super::dnsbl::Dnsbl {
                zone: "bl.example.org".into(),
                action: super::super::dnsbl::Action::Reject,
            },
            super::super::dnsbl::Dnsbl {
                zone: "BL.example.org.".into(),
                action: super::super::dnsbl::Action::Tag,
            },
            super::super::dnsbl::Dnsbl {
                zone: "not a zone".into(),
                action: super::super::dnsbl::Action::Tag,
            },
        ];
        let keys: Vec<String> = validate(&auth, &bl).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "auth.dns_timeout",
                "auth.max_memory",
                "auth.resolver",
                "dnsbl[1].zone",
                "dnsbl[2].zone"
            ]
        );
    }

    #[test]
    fn reservations_stay_within_the_budget_and_come_back() {
        let b = Budget::new(100);
        let mut r1 = b.reservation();
        let mut r2 = b.reservation();
        assert!(r1.grow_to(60));
        assert!(r1.grow_to(40), "shrinking is a no-op");
        assert_eq!((r1.bytes(), b.used()), (60, 60));
        assert!(!r2.grow_to(41), "over the budget");
        assert_eq!((r2.bytes(), b.used()), (0, 60), "a refusal changes nothing");
        assert!(r2.grow_to(40));
        assert_eq!(b.used(), 100);
        assert!(!r1.grow_to(61));
        drop(r1);
        assert_eq!(b.used(), 40);
        assert!(r2.grow_to(100));
        drop(r2);
        assert_eq!(b.used(), 0);
        assert!(!b.reservation().grow_to(u64::MAX));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_lower_limit_stops_growth_until_reservations_end() {
        let b = Budget::new(100);
        let mut r = b.reservation();
        assert!(r.grow_to(80));
        b.set_limit(50);
        assert_eq!(b.limit(), 50);
        assert!(!r.grow_to(81));
        let mut other = b.reservation();
        assert!(!other.grow_to(1));
        drop(r);
        assert!(other.grow_to(50));
        assert!(!other.grow_to(51));
    }

    #[test]
    fn reservations_from_many_threads_never_exceed_the_limit() {
        let b = Budget::new(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let mut r = b.reservation();
                        if r.grow_to(100 + i % 300) {
                            assert!(b.used() <= 1000);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.used(), 0);
    }
}
