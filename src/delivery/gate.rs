//! The delivery gate: may mail go to a backend right now? Yes when the backend is
//! up (health), no quiet-time window covering it is active, and the whole queue
//! is not on hold. The dispatcher starts no attempt while the gate is shut for
//! every backend; the client skips backends it is shut for.

use super::dispatcher::Clock;
use crate::admin::metrics::Metrics;
use crate::health::Health;
use crate::schedule::{QuietTime, Window};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Health + quiet time (configured and ad-hoc windows) + queue hold.
pub struct Gate {
    health: Arc<Health>,
    /// The standbys' circuits: a mirror copy's only gate.
    mirrors: Arc<Health>,
    /// The `[[quiet_time]]` windows of the running config.
    quiet: RwLock<QuietTime>,
    /// Windows declared with `breakwater quiet start` (persisted by the caller).
    adhoc: RwLock<Vec<Window>>,
    held: AtomicBool,
    backends: RwLock<Vec<String>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// A quiet-time window as `quiet list` shows it.
#[derive(Debug, Clone)]
pub struct WindowInfo {
    /// Its name.
    pub name: String,
    /// `config` or `adhoc`.
    pub source: &'static str,
    /// Active now.
    pub active: bool,
    /// Backends it applies to (empty: all).
    pub backends: Vec<String>,
    /// What it covers.
    pub span: String,
    /// When it next starts or ends.
    pub next_change: Option<DateTime<Utc>>,
}

impl Gate {
    /// A gate over `backends` (names), open unless health, `quiet` or `held` say no.
    pub fn new(
        health: Arc<Health>,
        mirrors: Arc<Health>,
        quiet: QuietTime,
        held: bool,
        backends: Vec<String>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Gate {
        let g = Gate {
            health,
            mirrors,
            quiet: RwLock::new(quiet),
            adhoc: RwLock::new(Vec::new()),
            held: AtomicBool::new(held),
            backends: RwLock::new(backends),
            clock,
            metrics,
        };
        g.update_metric();
        g
    }

    /// Now, on the dispatcher's clock.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.clock.now_ms() as i64).unwrap_or_default()
    }

    /// True if an attempt may go to `backend` now.
    pub fn is_open_for(&self, backend: &str) -> bool {
        !self.is_held() && self.health.is_up(backend) && !self.in_window(backend)
    }

    /// [`Gate::is_open_for`], or only "is it up" with `quiet_ok` (a canary
    /// with `canary.during_quiet_time`: windows and holds do not stop it).
    pub fn may_take(&self, backend: &str, quiet_ok: bool) -> bool {
        if quiet_ok {
            self.health.is_up(backend)
        } else {
            self.is_open_for(backend)
        }
    }

    /// True if a quiet-time window (configured or ad-hoc) covers `backend` now.
    /// On the delivery path: allocates nothing.
    pub fn in_window(&self, backend: &str) -> bool {
        self.covering(backend, |_| ())
    }

    /// Names of the windows covering `backend` now.
    pub fn windows_for(&self, backend: &str) -> Vec<String> {
        let mut names = Vec::new();
        self.covering(backend, |w| names.push(w.name().to_owned()));
        names
    }

    /// Calls `f` on each window covering `backend` now; true if there was one.
    fn covering(&self, backend: &str, mut f: impl FnMut(&Window)) -> bool {
        let now = self.now();
        let quiet = self.quiet.read().expect("quiet lock");
        let adhoc = self.adhoc.read().expect("adhoc lock");
        let mut any = false;
        for w in quiet.windows().iter().chain(adhoc.iter()) {
            if w.applies_to(backend) && w.contains(now) {
                f(w);
                any = true;
            }
        }
        any
    }

    /// True if some backend may take mail now.
    pub fn is_open(&self) -> bool {
        let names = self.backends.read().expect("backends lock");
        names.iter().any(|b| self.is_open_for(b))
    }

    /// The backend names, in config order.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.read().expect("backends lock").clone()
    }

    /// Takes the windows and backend names of a reloaded config.
    pub fn reconfigure(&self, quiet: QuietTime, backends: Vec<String>) {
        *self.quiet.write().expect("quiet lock") = quiet;
        *self.backends.write().expect("backends lock") = backends;
        self.update_metric();
    }

    /// Adds or replaces (same name) an ad-hoc window.
    pub fn set_adhoc(&self, w: Window) {
        let mut adhoc = self.adhoc.write().expect("adhoc lock");
        adhoc.retain(|x| x.name() != w.name());
        adhoc.push(w);
        drop(adhoc);
        self.update_metric();
    }

    /// Removes an ad-hoc window; false if there was none of that name.
    pub fn remove_adhoc(&self, name: &str) -> bool {
        let mut adhoc = self.adhoc.write().expect("adhoc lock");
        let before = adhoc.len();
        adhoc.retain(|x| x.name() != name);
        let removed = adhoc.len() != before;
        drop(adhoc);
        self.update_metric();
        removed
    }

    /// True if an ad-hoc window of that name exists.
    pub fn has_adhoc(&self, name: &str) -> bool {
        self.adhoc
            .read()
            .expect("adhoc lock")
            .iter()
            .any(|w| w.name() == name)
    }

    /// Ad-hoc windows that have ended by now (to forget).
    pub fn ended_adhoc(&self) -> Vec<String> {
        let now = self.now();
        self.adhoc
            .read()
            .expect("adhoc lock")
            .iter()
            .filter(|w| w.until().is_some_and(|u| u <= now))
            .map(|w| w.name().to_owned())
            .collect()
    }

    /// Every window, configured first, with its state now.
    pub fn windows(&self) -> Vec<WindowInfo> {
        let now = self.now();
        let info = |w: &Window, source| WindowInfo {
            name: w.name().to_owned(),
            source,
            active: w.contains(now),
            backends: w.backends().to_vec(),
            span: w.describe(),
            next_change: w.next_change(now),
        };
        let quiet = self.quiet.read().expect("quiet lock");
        let adhoc = self.adhoc.read().expect("adhoc lock");
        quiet
            .windows()
            .iter()
            .map(|w| info(w, "config"))
            .chain(adhoc.iter().map(|w| info(w, "adhoc")))
            .collect()
    }

    /// True while the whole queue is held by an admin.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Sets or clears the whole-queue hold (the caller persists it).
    pub fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
        self.update_metric();
    }

    /// The next instant a quiet-time window starts or ends, if any.
    pub fn next_quiet_change(&self) -> Option<DateTime<Utc>> {
        let now = self.now();
        let configured = self.quiet.read().expect("quiet lock").next_change(now);
        let adhoc = self
            .adhoc
            .read()
            .expect("adhoc lock")
            .iter()
            .filter_map(|w| w.next_change(now))
            .min();
        configured.into_iter().chain(adhoc).min()
    }

    /// Refreshes `breakwater_quiet_time_active` (any window or a queue hold).
    pub fn update_metric(&self) {
        let now = self.now();
        let active = self.is_held()
            || self.quiet.read().expect("quiet lock").any_active(now)
            || self
                .adhoc
                .read()
                .expect("adhoc lock")
                .iter()
                .any(|w| w.contains(now));
        self.metrics.quiet_time_active.set(active as i64);
    }

    /// The health view (for change notifications).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The standbys' health.
    pub fn mirrors(&self) -> &Arc<Health> {
        &self.mirrors
    }

    /// True if a copy may go to the standby `mirror` now: it is up. Neither
    /// the backends' quiet time nor their outages nor a queue hold stop it.
    pub fn is_open_for_mirror(&self, mirror: &str) -> bool {
        self.mirrors.is_up(mirror)
    }
}
