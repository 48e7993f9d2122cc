//! The dispatcher: one actor loop that owns the schedule. It takes due messages
//! oldest first, runs at most `delivery.concurrency` attempts at once, and files
//! each message again (retry time), parks it (only failed recipients left) or
//! forgets it (removed from the journal) when its attempt reports back.

use super::client::Backends;
use super::outcome::Outcome;
use super::retry::RetryPolicy;
use super::{Event, Status};
use crate::admin::metrics::Metrics;
use crate::health::Health;
use crate::journal::{Journal, QueueId, RcptState, Record};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wall-clock milliseconds that follow tokio's clock, so tests that pause and
/// advance tokio time move the schedule too.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    /// A clock reading the system time now.
    pub fn new() -> Clock {
        Clock {
            base_ms: crate::journal::now_ms(),
            base: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    /// The tokio instant at which `ms` (epoch milliseconds) is reached.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What delivery tasks share.
pub(super) struct Shared {
    pub journal: Journal,
    pub health: Arc<Health>,
    pub backends: Backends,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
}

/// The scheduling actor.
pub struct Dispatcher {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
    concurrency: usize,
    /// Every record not in flight, by id.
    records: HashMap<QueueId, Record>,
    /// Due now, oldest first.
    ready: BTreeSet<QueueId>,
    /// Waiting for their retry time.
    waiting: BTreeSet<(u64, QueueId)>,
    /// Every id in the journal (ids sort by arrival: the first is the oldest).
    all: BTreeSet<QueueId>,
    in_flight: usize,
}

impl Dispatcher {
    pub(super) fn new(
        shared: Shared,
        rx: mpsc::UnboundedReceiver<Event>,
        tx: mpsc::UnboundedSender<Event>,
        concurrency: usize,
        recovered: Vec<Record>,
    ) -> Dispatcher {
        let mut d = Dispatcher {
            shared: Arc::new(shared),
            rx,
            tx,
            concurrency,
            records: HashMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            all: BTreeSet::new(),
            in_flight: 0,
        };
        if !recovered.is_empty() {
            tracing::info!("recovered {} messages from the journal", recovered.len());
        }
        for r in recovered {
            d.all.insert(r.id);
            d.file(r);
        }
        d
    }

    /// Runs until `shutdown`, then lets in-flight attempts finish within `grace`.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let mut health = self.shared.health.subscribe();
        loop {
            self.promote_due();
            self.launch();
            self.update_gauges();
            let wake = self.next_wake();
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = sleep_until(wake) => {}
                Ok(()) = health.changed() => {
                    if self.shared.health.any_up() {
                        // A backend is back: the backlog goes now, not at each
                        // message's retry time.
                        self.make_all_due("a backend is up");
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        self.finish_in_flight(grace).await;
        self.shared.backends.close_idle().await;
    }

    /// Puts a record where it belongs: ready, waiting for its time, or parked.
    fn file(&mut self, r: Record) {
        let id = r.id;
        if r.has_open_recipients() && !r.held {
            if r.next_attempt_ms <= self.shared.clock.now_ms() {
                self.ready.insert(id);
            } else {
                self.waiting.insert((r.next_attempt_ms, id));
            }
        }
        self.records.insert(id, r);
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::New(r) => {
                self.all.insert(r.id);
                self.file(*r);
            }
            Event::Flush => self.make_all_due("flush"),
            Event::Done(r, status) => {
                self.in_flight -= 1;
                match status {
                    Status::Removed => {
                        self.all.remove(&r.id);
                    }
                    Status::Kept => self.file(*r),
                }
            }
        }
    }

    fn make_all_due(&mut self, why: &str) {
        let n = self.waiting.len();
        for (_, id) in std::mem::take(&mut self.waiting) {
            self.ready.insert(id);
        }
        if n > 0 {
            tracing::info!("{why}: {n} deferred messages due now");
        }
    }

    /// True while deliveries may start: some backend is up.
    fn may_deliver(&self) -> bool {
        self.shared.health.any_up()
    }

    fn promote_due(&mut self) {
        let now = self.shared.clock.now_ms();
        while let Some(&(due, id)) = self.waiting.first() {
            if due > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(id);
        }
    }

    fn launch(&mut self) {
        if !self.may_deliver() {
            return;
        }
        while self.in_flight < self.concurrency {
            let Some(id) = self.ready.pop_first() else {
                return;
            };
            let Some(record) = self.records.remove(&id) else {
                continue;
            };
            self.in_flight += 1;
            let shared = self.shared.clone();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let (record, status) = attempt(&shared, record).await;
                let _ = tx.send(Event::Done(Box::new(record), status));
            });
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.in_flight >= self.concurrency || !self.ready.is_empty() || !self.may_deliver() {
            return None;
        }
        self.waiting
            .first()
            .map(|&(due, _)| self.shared.clock.instant_at(due))
    }

    fn update_gauges(&self) {
        let m = &self.shared.metrics;
        m.queue_depth.set(self.all.len() as i64);
        let age = self.all.first().map_or(0, |id| {
            let arrived_ms = id.0 / 1000;
            self.shared.clock.now_ms().saturating_sub(arrived_ms) / 1000
        });
        m.queue_oldest_age_seconds.set(age as i64);
    }

    async fn finish_in_flight(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut report = Instant::now();
        while self.in_flight > 0 {
            if Instant::now() >= report {
                tracing::info!(
                    "shutdown: waiting for {} deliveries in flight",
                    self.in_flight
                );
                report = Instant::now() + Duration::from_secs(2);
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Done(..)) => self.in_flight -= 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("shutdown: {} deliveries still in flight after the grace period; they will be retried after restart", self.in_flight);
                    break;
                }
            }
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One delivery attempt: load the bytes, deliver, record every recipient's
/// outcome, and commit the new state before reporting back.
async fn attempt(shared: &Shared, mut record: Record) -> (Record, Status) {
    let body = match shared.journal.body(record.id) {
        Ok(Some(b)) => b,
        Ok(None) => {
            tracing::warn!(
                "{} vanished from the journal; nothing to deliver",
                record.id
            );
            return (record, Status::Removed);
        }
        Err(e) => {
            tracing::error!("{} cannot read message from journal: {e}", record.id);
            record.next_attempt_ms =
                shared.clock.now_ms() + shared.retry.delay(1).as_millis() as u64;
            return (record, Status::Kept);
        }
    };
    let result = shared.backends.deliver(&record, &body).await;
    drop(body);
    record.attempts += 1;
    let backend = result.backend.as_deref().unwrap_or("none");
    let next_ms = shared.clock.now_ms() + shared.retry.delay(record.attempts).as_millis() as u64;
    for (i, outcome) in result.outcomes {
        shared.metrics.attempt(backend, outcome.label());
        let rcpt = &mut record.rcpts[i];
        log_outcome(record.id, &rcpt.address, backend, &outcome, next_ms);
        rcpt.state = match outcome {
            Outcome::Delivered(reply) => RcptState::Delivered {
                backend: backend.to_owned(),
                reply,
            },
            Outcome::Deferred(reply) => RcptState::Deferred {
                reply,
                attempts: record.attempts,
            },
            Outcome::Failed(reply) => RcptState::Failed { reply },
        };
    }
    record.next_attempt_ms = next_ms;
    commit_state(shared, record).await
}

/// Saves the state after an attempt: a fully delivered message is removed, any
/// other is saved (deferred recipients wait; failed ones stay on record).
async fn commit_state(shared: &Shared, record: Record) -> (Record, Status) {
    let all_delivered = record
        .rcpts
        .iter()
        .all(|r| matches!(r.state, RcptState::Delivered { .. }));
    if all_delivered {
        match shared.journal.remove(&record).await {
            Ok(()) => {
                shared.metrics.messages_delivered.inc();
                tracing::info!("{} removed: delivered to all recipients", record.id);
                return (record, Status::Removed);
            }
            Err(e) => tracing::error!(
                "{} delivered but not removed from journal (will be re-sent after a restart): {e}",
                record.id
            ),
        }
        return (record, Status::Kept);
    }
    if let Err(e) = shared.journal.save(&record).await {
        tracing::error!(
            "{} state not saved (a restart repeats this attempt): {e}",
            record.id
        );
    }
    (record, Status::Kept)
}

fn log_outcome(id: QueueId, rcpt: &str, backend: &str, outcome: &Outcome, next_ms: u64) {
    match outcome {
        Outcome::Delivered(reply) => {
            tracing::info!("{id} delivered to=<{rcpt}> backend={backend} reply=\"{reply}\"")
        }
        Outcome::Deferred(reply) => {
            let next = chrono::DateTime::from_timestamp_millis(next_ms as i64)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            tracing::info!(
                "{id} deferred to=<{rcpt}> backend={backend} reason=\"{reply}\" next_attempt={next}"
            )
        }
        Outcome::Failed(reply) => {
            tracing::warn!("{id} failed to=<{rcpt}> backend={backend} reply=\"{reply}\"")
        }
    }
}
