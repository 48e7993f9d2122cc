//! Knowing when mail stops: `[[flow]]` declares mail that must keep arriving
//! (audit alerts, order confirmations). Every accepted message is matched
//! against the flows; a flow that has seen nothing for longer than its
//! `max_silence` (counted only while its `active` windows are on), or fewer
//! than `min_count` messages in its `period`, is *silent*: the gauge turns 1
//! and one alert goes out (see [`alert`]), and one more when mail resumes.
//!
//! Each flow's state (watched since, last seen, the newest arrivals, whether an
//! alert is out) is a journal document `flow/NAME`, written within a second of
//! a change, so a restart neither invents a silence nor hides one.

pub mod alert;
pub mod monitor;

use crate::config::{self, Config};
use crate::schedule::{QuietTime, Window};
use chrono::DateTime;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Journal document prefix of the flows' states.
pub const STATE_PREFIX: &str = "flow/";

/// Longest regular expression program accepted for `flow.header.regex`.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Window changes walked when measuring active time; beyond it the rest of the
/// span counts as active (a silence is over- rather than under-reported).
const MAX_WALK: usize = 10_000;

/// One `[[flow]]`, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `flow.name`.
    pub name: String,
    from: Vec<String>,
    to: Vec<String>,
    header: Option<(String, Regex)>,
    /// `max_silence` in milliseconds.
    pub max_silence_ms: u64,
    /// `min_count` (1 when not set).
    pub min_count: u32,
    /// `period` in milliseconds (`max_silence` when not set).
    pub period_ms: u64,
    active: QuietTime,
}

impl Rule {
    /// Compiles a flow; problems are `(key relative to the entry, message)`.
    pub fn from_config(f: &config::Flow) -> Result<Rule, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let name = f.name.trim();
        if name.is_empty() {
            problems.push(("name".into(), "must not be empty".into()));
        } else if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push((
                "name".into(),
                "must be at most 64 letters, digits, '-', '_' or '.' (it is a metric label)".into(),
            ));
        }
        if f.from.is_empty() && f.to.is_empty() && f.header.is_none() {
            problems.push((
                "from".into(),
                "a flow needs at least one of from, to, header (else every message counts)".into(),
            ));
        }
        for (key, list) in [("from", &f.from), ("to", &f.to)] {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = check_pattern(p) {
                    problems.push((format!("{key}[{i}]"), e));
                }
            }
        }
        let header = match &f.header {
            None => None,
            Some(h) => {
                if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    problems.push((
                        "header.name".into(),
                        format!("{:?} is not a header field name", h.name),
                    ));
                }
                match RegexBuilder::new(&h.regex)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(r) => Some((h.name.clone(), r)),
                    Err(e) => {
                        problems.push(("header.regex".into(), format!("invalid: {e}")));
                        None
                    }
                }
            }
        };
        if f.max_silence.0.as_millis() < 1000 {
            problems.push(("max_silence".into(), "must be at least 1s".into()));
        }
        if f.min_count == Some(0) {
            problems.push(("min_count".into(), "must be at least 1".into()));
        }
        if let Some(p) = f.period {
            if f.min_count.is_none() {
                problems.push((
                    "period".into(),
                    "only counts with min_count (set min_count, or drop period)".into(),
                ));
            }
            if p.0.as_millis() < 1000 {
                problems.push(("period".into(), "must be at least 1s".into()));
            }
        }
        let mut windows = Vec::new();
        for (j, w) in f.active.iter().enumerate() {
            match Window::from_config(&w.as_quiet_time(name)) {
                Ok(w) => windows.push(w),
                Err(ps) => problems.extend(
                    ps.into_iter()
                        .filter(|p| p.key != "name")
                        .map(|p| (format!("active[{j}].{}", p.key), p.message)),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let max_silence_ms = f.max_silence.0.as_millis() as u64;
        Ok(Rule {
            name: name.to_owned(),
            from: f.from.clone(),
            to: f.to.clone(),
            header,
            max_silence_ms,
            min_count: f.min_count.unwrap_or(1),
            period_ms: f.period.map_or(max_silence_ms, |p| p.0.as_millis() as u64),
            active: QuietTime::new(windows),
        })
    }

    /// True if matching needs the message's header section.
    pub fn needs_headers(&self) -> bool {
        self.header.is_some()
    }

    /// True if a message from `mail_from` to `rcpts` with header section
    /// `headers` belongs to the flow: every matcher given matches.
    pub fn matches(&self, mail_from: &str, rcpts: &[&str], headers: &[u8]) -> bool {
        if !self.from.is_empty()
            && !self
                .from
                .iter()
                .any(|p| config::address_matches(p, mail_from))
        {
            return false;
        }
        if !self.to.is_empty()
            && !rcpts
                .iter()
                .any(|r| self.to.iter().any(|p| config::address_matches(p, r)))
        {
            return false;
        }
        match &self.header {
            None => true,
            Some((name, re)) => header_values(headers, name)
                .any(|v| re.is_match(&v) || decoded(&v).is_some_and(|d| re.is_match(&d))),
        }
    }

    /// True if the flow is expected at `ms` (no `active` windows: always).
    pub fn is_active(&self, ms: u64) -> bool {
        self.active.is_empty() || self.active.any_active(instant(ms))
    }

    /// Milliseconds between `from` and `to` during which the flow was expected.
    pub fn active_ms(&self, from: u64, to: u64) -> u64 {
        if to <= from {
            return 0;
        }
        if self.active.is_empty() {
            return to - from;
        }
        let mut t = from;
        let mut total = 0;
        for _ in 0..MAX_WALK {
            if t >= to {
                return total;
            }
            let next = self.active.next_change(instant(t)).map_or(to, |c| {
                (c.timestamp_millis().max(0) as u64).clamp(t + 1, to)
            });
            if self.is_active(t) {
                total += next - t;
            }
            t = next;
        }
        total + to.saturating_sub(t)
    }
}

/// `user@example.com`, `*@example.com` or `*`.
fn check_pattern(p: &str) -> Result<(), String> {
    let p = p.trim();
    if p == "*" {
        return Ok(());
    }
    match p.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !p.contains(char::is_whitespace)
                && (local == "*" || !local.contains('*'))
                && !domain.contains('*') =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{p:?} is not an address pattern (user@example.com, *@example.com or *)"
        )),
    }
}

fn instant(ms: u64) -> DateTime<chrono::Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// The values of every `name:` field in a header section, unfolded (CR LF
/// before white space removed) and trimmed. Tolerates anything: no CR LF, a
/// section cut short, non-UTF-8 bytes (replaced).
pub fn header_values<'a>(headers: &'a [u8], name: &'a str) -> impl Iterator<Item = String> + 'a {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < headers.len() {
        if headers[i] == b'\n' {
            let next = headers.get(i + 1).copied();
            if matches!(next, Some(b' ' | b'\t')) {
                i += 1;
                continue;
            }
            fields.push(&headers[start..=i]);
            start = i + 1;
            if matches!(next, Some(b'\r' | b'\n')) {
                break; // the empty line ends the section
            }
        }
        i += 1;
    }
    if start < headers.len() && i >= headers.len() {
        fields.push(&headers[start..]);
    }
    fields.into_iter().filter_map(move |f| {
        let colon = f.iter().position(|&b| b == b':')?;
        let (n, v) = f.split_at(colon);
        if !n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            return None;
        }
        let unfolded: Vec<u8> = v[1..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        Some(String::from_utf8_lossy(unfolded.trim_ascii()).into_owned())
    })
}

/// `value` with RFC 2047 encoded words decoded, if it has any.
fn decoded(value: &str) -> Option<String> {
    if !value.contains("=?") {
        return None;
    }
    let raw = format!("Subject: {value}\r\n\r\n");
    let msg = mail_parser::MessageParser::new().parse_headers(raw.as_bytes())?;
    msg.subject().map(str::to_owned)
}

/// What a flow has seen, journaled as `flow/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// When the flow was first watched (silence before any message counts from here).
    pub since_ms: u64,
    /// The newest matching message.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// Arrival times of the newest `min_count` messages, oldest first.
    #[serde(default)]
    pub recent: VecDeque<u64>,
    /// Matching messages ever seen.
    #[serde(default)]
    pub count: u64,
    /// Set while a silence alert is out (when it was raised); cleared with
    /// the recovery alert.
    #[serde(default)]
    pub alerted_ms: Option<u64>,
}

impl State {
    /// A flow first watched at `now`.
    pub fn new(now: u64) -> State {
        State {
            since_ms: now,
            ..State::default()
        }
    }

    /// Brings times later than `now` back to `now` (the system clock was set
    /// back): a silence then counts from the jump, not from a last-seen time
    /// that `now` will only reach hours later. True if anything changed.
    pub fn clamp(&mut self, now: u64) -> bool {
        let mut changed = false;
        let mut back = |t: &mut u64| {
            if *t > now {
                *t = now;
                changed = true;
            }
        };
        back(&mut self.since_ms);
        if let Some(t) = self.last_seen_ms.as_mut() {
            back(t);
        }
        self.recent.iter_mut().for_each(&mut back);
        changed
    }

    /// A matching message at `now`.
    pub fn saw(&mut self, rule: &Rule, now: u64) {
        self.count += 1;
        self.last_seen_ms = Some(self.last_seen_ms.map_or(now, |l| l.max(now)));
        self.recent.push_back(now);
        while self.recent.len() > rule.min_count.max(1) as usize {
            self.recent.pop_front();
        }
    }
}

/// Why a flow is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Nothing for longer than `max_silence`; nothing since `since_ms`
    /// (the last message, or when watching began).
    Silent { since_ms: u64, ever_seen: bool },
    /// Fewer than `min_count` in the last `period`: `seen` of them.
    TooFew { seen: usize },
}

/// Whether `rule`'s flow is short of mail at `now`, given `state`.
pub fn verdict(rule: &Rule, state: &State, now: u64) -> Option<Shortfall> {
    let since_ms = state.last_seen_ms.unwrap_or(state.since_ms);
    if rule.active_ms(since_ms, now) > rule.max_silence_ms {
        return Some(Shortfall::Silent {
            since_ms,
            ever_seen: state.last_seen_ms.is_some(),
        });
    }
    let n = rule.min_count as usize;
    if n > 1 {
        // Fewer than n in the period <=> the n-th newest arrival (or, with
        // fewer than n ever, the start of watching) is older than the period.
        let reference = if state.recent.len() >= n {
            state.recent[state.recent.len() - n]
        } else {
            state.since_ms
        };
        if rule.active_ms(reference, now) > rule.period_ms {
            let cutoff = now.saturating_sub(rule.period_ms);
            let seen = state.recent.iter().filter(|&&t| t > cutoff).count();
            return Some(Shortfall::TooFew { seen });
        }
    }
    None
}

/// One flow in `GET /api/status` (and `breakwater status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// `flow.name`.
    pub name: String,
    /// Short of mail now (what `breakwater_flow_silent` says).
    pub silent: bool,
    /// Inside its `active` windows now (always, without any).
    pub active: bool,
    /// The newest matching message, RFC 3339; `None`: never.
    pub last_seen: Option<String>,
    /// Seconds since then.
    pub last_seen_age_seconds: Option<u64>,
    /// Matching messages ever seen.
    pub messages: u64,
    /// `max_silence` in seconds.
    pub max_silence_seconds: u64,
}

fn rfc3339(ms: u64) -> String {
    instant(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What an evaluation found for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Newly short of mail: raise an alert.
    WentSilent { rule: String, why: Shortfall },
    /// Mail again after an alert: say so.
    Resumed {
        rule: String,
        since_alert_ms: u64,
        last_seen_ms: u64,
    },
}

/// The `breakwater_flow_*` metrics, labelled by configured flows only.
struct FlowMetrics {
    messages: IntCounterVec,
    last_seen: GaugeVec,
    silent: IntGaugeVec,
}

/// A rule and what it has seen.
struct Watched {
    rule: Rule,
    state: Mutex<State>,
}

/// The flows in force and their states, shared by sessions (which report
/// matching messages) and the monitor (which evaluates and journals them).
pub struct Flows {
    watched: RwLock<Arc<Vec<Watched>>>,
    clock: crate::delivery::Clock,
    metrics: FlowMetrics,
    /// Some state changed since the last [`Flows::take_dirty`].
    dirty: AtomicBool,
    needs_headers: AtomicBool,
}

impl Flows {
    /// The flows of `config`, their states from `saved` (journal documents by
    /// flow name), metrics registered in `registry`.
    pub fn new(
        config: &Config,
        saved: &[(String, State)],
        registry: &Registry,
        clock: crate::delivery::Clock,
    ) -> Flows {
        let now = clock.now_ms();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let messages = IntCounterVec::new(
            Opts::new(
                "breakwater_flow_messages_total",
                "Accepted messages that matched each [[flow]]",
            ),
            &["flow"],
        )
        .expect("valid metric");
        let last_seen = GaugeVec::new(
            Opts::new(
                "breakwater_flow_last_seen_timestamp_seconds",
                "When the newest message of each [[flow]] arrived (0: never)",
            ),
            &["flow"],
        )
        .expect("valid metric");
        let silent = IntGaugeVec::new(
            Opts::new(
                "breakwater_flow_silent",
                "1 while a [[flow]] has been silent longer than allowed",
            ),
            &["flow"],
        )
        .expect("valid metric");
        reg(Box::new(messages.clone()));
        reg(Box::new(last_seen.clone()));
        reg(Box::new(silent.clone()));
        let flows = Flows {
            watched: RwLock::new(Arc::new(Vec::new())),
            clock,
            metrics: FlowMetrics {
                messages,
                last_seen,
                silent,
            },
            dirty: AtomicBool::new(false),
            needs_headers: AtomicBool::new(false),
        };
        flows.install(
            config,
            |name| {
                saved
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| s.clone())
            },
            now,
        );
        flows
    }

    /// Applies a reloaded config: flows kept by name keep their state, new
    /// ones start watching at `now`, removed ones lose their metric labels.
    pub fn reconfigure(&self, config: &Config, now: u64) {
        let old = self.watched.read().expect("flows lock").clone();
        self.install(
            config,
            |name| {
                old.iter()
                    .find(|w| w.rule.name == name)
                    .map(|w| w.state.lock().expect("flow state").clone())
            },
            now,
        );
        let kept = self.watched.read().expect("flows lock").clone();
        for w in old.iter() {
            if !kept.iter().any(|k| k.rule.name == w.rule.name) {
                let _ = self.metrics.messages.remove_label_values(&[&w.rule.name]);
                let _ = self.metrics.last_seen.remove_label_values(&[&w.rule.name]);
                let _ = self.metrics.silent.remove_label_values(&[&w.rule.name]);
            }
        }
    }

    fn install(&self, config: &Config, saved: impl Fn(&str) -> Option<State>, now: u64) {
        let watched: Vec<Watched> = config
            .flow
            .iter()
            .filter_map(|f| Rule::from_config(f).ok())
            .map(|rule| {
                let state = saved(&rule.name).unwrap_or_else(|| {
                    self.dirty.store(true, Ordering::Relaxed);
                    State::new(now)
                });
                let name = rule.name.as_str();
                let c = self.metrics.messages.with_label_values(&[name]);
                if c.get() < state.count {
                    c.inc_by(state.count - c.get());
                }
                self.metrics
                    .last_seen
                    .with_label_values(&[name])
                    .set(state.last_seen_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
                self.metrics
                    .silent
                    .with_label_values(&[name])
                    .set(i64::from(state.alerted_ms.is_some()));
                Watched {
                    rule,
                    state: Mutex::new(state),
                }
            })
            .collect();
        self.needs_headers.store(
            watched.iter().any(|w| w.rule.needs_headers()),
            Ordering::Relaxed,
        );
        *self.watched.write().expect("flows lock") = Arc::new(watched);
    }

    /// True if no flow is configured.
    pub fn is_empty(&self) -> bool {
        self.watched.read().expect("flows lock").is_empty()
    }

    /// Reports an accepted message (after its `250`), now on the relay's clock.
    pub fn observe(&self, mail_from: &str, rcpts: &[&str], headers: &[u8]) {
        let now = self.clock.now_ms();
        let watched = self.watched.read().expect("flows lock").clone();
        for w in watched.iter() {
            if !w.rule.matches(mail_from, rcpts, headers) {
                continue;
            }
            w.state.lock().expect("flow state").saw(&w.rule, now);
            let name = w.rule.name.as_str();
            self.metrics.messages.with_label_values(&[name]).inc();
            self.metrics
                .last_seen
                .with_label_values(&[name])
                .set(now as f64 / 1000.0);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Evaluates every flow at `now`: sets `breakwater_flow_silent` and
    /// returns the episodes that begin or end (marking them in the state, so
    /// each is reported once).
    pub fn evaluate(&self, now: u64) -> Vec<Change> {
        let watched = self.watched.read().expect("flows lock").clone();
        let mut changes = Vec::new();
        for w in watched.iter() {
            let mut state = w.state.lock().expect("flow state");
            if state.clamp(now) {
                tracing::warn!(
                    "flow {}: times after now in its state; the system clock went back? silence counts from now",
                    w.rule.name
                );
                if let Some(t) = state.last_seen_ms {
                    self.metrics
                        .last_seen
                        .with_label_values(&[&w.rule.name])
                        .set(t as f64 / 1000.0);
                }
                self.dirty.store(true, Ordering::Relaxed);
            }
            let why = verdict(&w.rule, &state, now);
            match (why, state.alerted_ms) {
                (Some(why), None) => {
                    state.alerted_ms = Some(now);
                    changes.push(Change::WentSilent {
                        rule: w.rule.name.clone(),
                        why,
                    });
                    self.dirty.store(true, Ordering::Relaxed);
                }
                (None, Some(at)) => {
                    state.alerted_ms = None;
                    changes.push(Change::Resumed {
                        rule: w.rule.name.clone(),
                        since_alert_ms: at,
                        last_seen_ms: state.last_seen_ms.unwrap_or(now),
                    });
                    self.dirty.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            self.metrics
                .silent
                .with_label_values(&[&w.rule.name])
                .set(i64::from(why.is_some()));
        }
        changes
    }

    /// The rule named `name`, if configured.
    pub fn rule(&self, name: &str) -> Option<Rule> {
        let watched = self.watched.read().expect("flows lock").clone();
        watched
            .iter()
            .find(|w| w.rule.name == name)
            .map(|w| w.rule.clone())
    }

    /// Every flow's state, if any changed since the last call (for the journal).
    pub fn take_dirty(&self) -> Option<Vec<(String, State)>> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let watched = self.watched.read().expect("flows lock").clone();
        Some(
            watched
                .iter()
                .map(|w| {
                    (
                        w.rule.name.clone(),
                        w.state.lock().expect("flow state").clone(),
                    )
                })
                .collect(),
        )
    }

    /// Marks the states as not yet journaled (a write failed).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// What `breakwater status` shows of each flow at `now`.
    pub fn views(&self, now: u64) -> Vec<FlowView> {
        let watched = self.watched.read().expect("flows lock").clone();
        watched
            .iter()
            .map(|w| {
                let state = w.state.lock().expect("flow state");
                FlowView {
                    name: w.rule.name.clone(),
                    silent: verdict(&w.rule, &state, now).is_some(),
                    active: w.rule.is_active(now),
                    last_seen: state.last_seen_ms.map(rfc3339),
                    last_seen_age_seconds: state.last_seen_ms.map(|l| now.saturating_sub(l) / 1000),
                    messages: state.count,
                    max_silence_seconds: w.rule.max_silence_ms / 1000,
                }
            })
            .collect()
    }

    /// True if some flow matches on a header.
    pub fn needs_headers(&self) -> bool {
        self.needs_headers.load(Ordering::Relaxed)
    }
}

/// Problems in `[[flow]]` and `[alert]`, each with its key path.
pub fn validate(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, f) in config.flow.iter().enumerate() {
        if let Err(ps) = Rule::from_config(f) {
            problems.extend(ps.into_iter().map(|(k, m)| (format!("flow[{i}].{k}"), m)));
        }
        if config.flow[..i]
            .iter()
            .any(|o| o.name.trim() == f.name.trim())
        {
            problems.push((
                format!("flow[{i}].name"),
                format!("{:?} is used twice", f.name),
            ));
        }
    }
    problems.extend(alert::validate(&config.alert));
    problems
}

#[cfg(test)]
mod tests;
