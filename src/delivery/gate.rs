//! The delivery gate: may mail go to a backend right now? Yes when the backend is
//! up (health), no quiet-time window covering it is active, and the whole queue
//! is not on hold. The dispatcher starts no attempt while the gate is shut for
//! every backend; the client skips backends it is shut for.

use super::dispatcher::Clock;
use crate::admin::metrics::Metrics;
use crate::health::Health;
use crate::schedule::QuietTime;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Health + quiet time + queue hold.
pub struct Gate {
    health: Arc<Health>,
    quiet: QuietTime,
    held: AtomicBool,
    backends: Vec<String>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate over `backends` (names), open unless health, `quiet` or `held` say no.
    pub fn new(
        health: Arc<Health>,
        quiet: QuietTime,
        held: bool,
        backends: Vec<String>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Gate {
        let g = Gate {
            health,
            quiet,
            held: AtomicBool::new(held),
            backends,
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
        !self.is_held()
            && self.health.is_up(backend)
            && self.quiet.active_for(backend, self.now()).is_empty()
    }

    /// True if some backend may take mail now.
    pub fn is_open(&self) -> bool {
        self.backends.iter().any(|b| self.is_open_for(b))
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
        self.quiet.next_change(self.now())
    }

    /// Refreshes `breakwater_quiet_time_active` (any window or a queue hold).
    pub fn update_metric(&self) {
        let active = self.is_held() || self.quiet.any_active(self.now());
        self.metrics.quiet_time_active.set(active as i64);
    }

    /// The health view (for change notifications).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
}
