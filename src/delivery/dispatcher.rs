//! The dispatcher: one actor loop that owns the schedule. It takes due messages
//! oldest first while the [`Gate`] is open, runs as many attempts at once as the
//! [`Drain`] allows (slow start up to `delivery.concurrency`, at most
//! `delivery.drain_rate` starts per second), and files each message again (retry
//! time), parks it (held, or only failed recipients left) or forgets it (removed
//! from the journal) when its attempt reports back.

use super::attempt::{Report, attempt, persist};
use super::client::Backends;
use super::drain::Drain;
use super::gate::Gate;
use super::lane::Lane;
use super::retry::RetryPolicy;
use super::stats::{QueueStats, Snapshot};
use super::{Event, QueueError, Status};
use crate::admin::metrics::Metrics;
use crate::journal::Purpose;
use crate::journal::{Journal, QueueId, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wall-clock milliseconds that follow tokio's clock, so tests that pause and
/// advance tokio time move the schedule too. A [`Clock::controlled`] clock can
/// also be moved forward by hand (tests of hours-long silences on a live relay).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: Instant,
    skew: Option<&'static AtomicU64>,
}

/// Moves a [`Clock::controlled`] clock forward.
#[derive(Debug, Clone, Copy)]
pub struct ClockHandle(&'static AtomicU64);

impl ClockHandle {
    /// Moves the clock (and every copy of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock {
    /// A clock reading the system time now.
    pub fn new() -> Clock {
        Clock {
            base_ms: crate::journal::now_ms(),
            base: Instant::now(),
            skew: None,
        }
    }

    /// A clock reading the system time, plus whatever its handle added. Each
    /// call leaks eight bytes (the shared offset); meant for tests.
    pub fn controlled() -> (Clock, ClockHandle) {
        let skew: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        (
            Clock {
                skew: Some(skew),
                ..Clock::new()
            },
            ClockHandle(skew),
        )
    }

    fn skew_ms(&self) -> u64 {
        self.skew.map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64 + self.skew_ms()
    }

    /// The tokio instant at which `ms` (epoch milliseconds) is reached.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms.saturating_sub(self.base_ms + self.skew_ms()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What delivery tasks share.
pub(crate) struct Shared {
    pub journal: Journal,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub stats: Arc<QueueStats>,
    /// Canaries outstanding: told when one is done.
    pub canaries: Arc<crate::canary::Tracker>,
    /// The settings a reload changes; an attempt keeps the ones it started with.
    pub live: std::sync::RwLock<Arc<Live>>,
}

/// Delivery settings from the config in force.
pub(crate) struct Live {
    pub hostname: String,
    pub lifetime_ms: u64,
    pub warn_after_ms: Option<u64>,
    pub backends: Backends,
    pub retry: RetryPolicy,
    /// `journal.retain_delivered` in milliseconds (0: nothing retained).
    pub retain_ms: u64,
    /// The `[[mirror]]` names and connection limits.
    pub mirrors: Vec<(String, usize)>,
}

impl Shared {
    /// The delivery settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().expect("live lock").clone()
    }
}

/// The scheduling actor.
pub struct Dispatcher {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
    drain: Drain,
    /// The gate was shut at the last look: the next opening restarts the drain.
    paused: bool,
    /// Every record not in flight, by id.
    records: HashMap<QueueId, Record>,
    /// Mail for the backends.
    mail: Lane,
    /// DSNs: they go to senders' servers, so backend gates don't hold them.
    bounces: Lane,
    /// Canaries: each gated by its own backend (see [`Dispatcher::launch_canaries`]).
    canaries: Lane,
    /// Copies for each standby: gated by its health only, with their own
    /// attempts in flight, so a dead standby never holds up the backends.
    mirrors: BTreeMap<String, Lane>,
    /// Mirror attempts in flight, per standby (not in `in_flight`).
    mirror_flight: HashMap<String, usize>,
    /// When each message's delay warning is due (`delivery.delay_warning`).
    warnings: BTreeSet<(u64, QueueId)>,
    /// Every job in the journal but mirror copies (ids sort by arrival: the
    /// first is the oldest), for the oldest age: a dead standby does not age
    /// the queue (its copies have `breakwater_mirror_queue_depth`).
    all: BTreeSet<QueueId>,
    /// Mirror copies and canaries in the journal.
    copies: BTreeSet<QueueId>,
    /// Outcomes the journal could not record. While there are any, no delivery
    /// starts: its outcome could not be recorded either.
    unsaved: HashMap<QueueId, Record>,
    /// When to try writing `unsaved` again.
    persist_at: Instant,
    in_flight: usize,
}

/// How often unrecorded outcomes are written again while the journal refuses.
const PERSIST_RETRY: Duration = Duration::from_secs(1);

impl Dispatcher {
    pub(super) fn new(
        shared: Shared,
        rx: mpsc::UnboundedReceiver<Event>,
        tx: mpsc::UnboundedSender<Event>,
        drain: Drain,
        recovered: Vec<Record>,
    ) -> Dispatcher {
        let mut d = Dispatcher {
            shared: Arc::new(shared),
            rx,
            tx,
            drain,
            paused: false,
            records: HashMap::new(),
            mail: Lane::default(),
            bounces: Lane::default(),
            canaries: Lane::default(),
            mirrors: BTreeMap::new(),
            mirror_flight: HashMap::new(),
            warnings: BTreeSet::new(),
            all: BTreeSet::new(),
            copies: BTreeSet::new(),
            unsaved: HashMap::new(),
            persist_at: Instant::now(),
            in_flight: 0,
        };
        if !recovered.is_empty() {
            tracing::info!("recovered {} messages from the journal", recovered.len());
        }
        for r in recovered {
            d.track(&r);
            d.file(r);
        }
        d
    }

    /// Runs until `shutdown`, then lets in-flight attempts finish within `grace`.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let mut health = self.shared.gate.health().subscribe();
        let mut mirror_health = self.shared.gate.mirrors().subscribe();
        let mut journal = self.shared.journal.watch_health();
        loop {
            self.promote_due();
            self.shared
                .journal
                .expire_retained(self.shared.clock.now_ms());
            self.persist_unsaved();
            if self.may_deliver() {
                self.send_warnings();
                self.launch();
            }
            self.publish_stats();
            let wake = self.next_wake();
            let quiet_change = self.next_quiet_change();
            let was_open = self.shared.gate.is_open();
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => break,
                },
                _ = sleep_until(wake) => {}
                _ = sleep_until(quiet_change) => {
                    self.shared.gate.update_metric();
                    self.reopen_if_opened(was_open, "quiet time ended");
                }
                Ok(()) = health.changed() => {
                    if self.shared.gate.health().take_recovered() && self.shared.gate.is_open() {
                        // A backend came back (or answered again after failures):
                        // what it deferred goes now, not at each retry time.
                        self.make_all_due("a backend is up");
                    }
                }
                Ok(()) = mirror_health.changed() => {
                    if self.shared.gate.mirrors().take_recovered() {
                        // A standby came back: its copies go now.
                        let n: usize = self.mirrors.values_mut().map(Lane::all_due).sum();
                        if n > 0 {
                            tracing::info!("a standby is up: {n} deferred copies due now");
                        }
                    }
                }
                Ok(()) = journal.changed() => {
                    if *journal.borrow_and_update() {
                        self.persist_at = Instant::now();
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        self.finish_in_flight(grace).await;
        if !self.unsaved.is_empty() {
            tracing::warn!(
                "shutdown: {} delivery outcome(s) could not be written to the journal; those messages will be attempted again after restart",
                self.unsaved.len()
            );
        }
        self.shared.live().backends.close_idle().await;
    }

    /// Puts a record where it belongs: ready, waiting for its time, or parked
    /// (held). A record whose failures are not reported yet (the DSN could not be
    /// queued) is ready too: its attempt only queues the DSN.
    fn file(&mut self, r: Record) {
        let id = r.id;
        let unreported = r
            .rcpts
            .iter()
            .any(|x| !x.state.is_open() && !x.is_settled());
        if (r.has_open_recipients() || unreported) && !r.held {
            let due = if unreported { 0 } else { r.next_attempt_ms };
            let now = self.shared.clock.now_ms();
            self.lane(&r.purpose).file(id, due, now);
        }
        if let Some(after) = self.shared.live().warn_after_ms
            && !r.delay_warned
            && r.purpose.notifies_sender()
            && r.has_open_recipients()
        {
            self.warnings.insert((r.envelope.arrived_ms + after, id));
        }
        self.records.insert(id, r);
    }

    /// Starts the delay warnings that are due, for messages not in flight (one
    /// in flight is filed again when its attempt ends, and comes back here).
    fn send_warnings(&mut self) {
        let now = self.shared.clock.now_ms();
        while let Some(&(due, id)) = self.warnings.first() {
            if due > now {
                return;
            }
            self.warnings.pop_first();
            let Some(r) = self.records.get(&id) else {
                continue;
            };
            if r.delay_warned || !r.has_open_recipients() {
                continue;
            }
            let (purpose, next) = (r.purpose.clone(), r.next_attempt_ms);
            self.lane(&purpose).remove(id, next);
            let Some(record) = self.records.remove(&id) else {
                continue;
            };
            self.in_flight += 1;
            let (shared, tx) = (self.shared.clone(), self.tx.clone());
            tokio::spawn(async move {
                let report = super::notices::warn(&shared, record).await;
                let _ = tx.send(Event::Done(report));
            });
        }
    }

    /// The lane of a job's purpose.
    fn lane(&mut self, purpose: &Purpose) -> &mut Lane {
        match purpose {
            Purpose::Notice | Purpose::Alert => &mut self.bounces,
            Purpose::Mirror { mirror } => self.mirrors.entry(mirror.clone()).or_default(),
            Purpose::Primary | Purpose::Replay { .. } => &mut self.mail,
            Purpose::Canary { .. } => &mut self.canaries,
        }
    }

    /// Remembers a job that is in the journal.
    fn track(&mut self, r: &Record) {
        match r.purpose.counts_in_queue() {
            false => self.copies.insert(r.id),
            true => self.all.insert(r.id),
        };
    }

    /// Forgets a job gone from the journal.
    fn untrack(&mut self, r: &Record) {
        self.all.remove(&r.id);
        self.copies.remove(&r.id);
    }

    /// Counts an attempt starting on a job of `purpose`.
    fn took_off(&mut self, purpose: &Purpose) {
        match purpose.mirror() {
            Some(m) => *self.mirror_flight.entry(m.to_owned()).or_default() += 1,
            None => self.in_flight += 1,
        }
    }

    /// Counts an attempt on a job of `purpose` ending.
    fn landed(&mut self, purpose: &Purpose) {
        match purpose.mirror() {
            Some(m) => {
                if let Some(n) = self.mirror_flight.get_mut(m) {
                    *n = n.saturating_sub(1);
                }
            }
            None => self.in_flight = self.in_flight.saturating_sub(1),
        }
    }

    /// Attempts in flight of every kind.
    fn all_in_flight(&self) -> usize {
        self.in_flight + self.mirror_flight.values().sum::<usize>()
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::New(r) => {
                self.track(&r);
                self.file(*r);
            }
            Event::Flush => {
                self.shared.gate.health().reset_all_up();
                self.shared.gate.mirrors().reset_all_up();
                for lane in self.mirrors.values_mut() {
                    lane.all_due();
                }
                self.make_all_due("flush");
            }
            Event::Reopen(why) => self.reopen_if_opened(false, why),
            Event::Wake => {}
            Event::Reconfigure {
                live,
                concurrency,
                drain_rate,
                backends_changed,
                was_open,
            } => {
                let old =
                    std::mem::replace(&mut *self.shared.live.write().expect("live lock"), live);
                self.drain.reconfigure(concurrency, drain_rate);
                // Idle connections to the old backends go; attempts in flight
                // finish on the connections they have.
                tokio::spawn(async move { old.backends.close_idle().await });
                if backends_changed {
                    // New or moved backends: what waits for a retry tries them now.
                    // A reload that leaves them alone keeps the retry schedule.
                    self.make_all_due("backends changed by a reload");
                } else {
                    // A window removed by the reload: the backlog goes now.
                    self.reopen_if_opened(was_open, "a reload opened the gate");
                }
            }
            Event::HoldMessage { id, held, done } => {
                let result = match self.hold_message(id, held) {
                    // Saved here, before any attempt can start on it, so a stale
                    // copy can never overwrite newer recipient states.
                    Ok(r) => self
                        .shared
                        .journal
                        .save(&r)
                        .await
                        .map_err(|e| QueueError::Storage(e.to_string())),
                    Err(e) => Err(e),
                };
                let _ = done.send(result);
            }
            Event::FlushMessage { id, done } => {
                let result = self.flush_message(id);
                if result.is_ok() {
                    self.shared.gate.health().reset_all_up();
                }
                let _ = done.send(result);
            }
            Event::Delete { id, reason, done } => {
                let _ = done.send(self.delete(id, &reason).await);
            }
            Event::Done(report) => self.finished(report),
        }
    }

    /// True while attempts may start: the journal takes writes and holds every
    /// outcome so far (storage trouble stops delivery, never repeats one).
    fn may_deliver(&self) -> bool {
        self.unsaved.is_empty() && self.shared.journal.is_healthy()
    }

    /// Writes the outcomes the journal refused before, at most every
    /// [`PERSIST_RETRY`], once it is open again.
    fn persist_unsaved(&mut self) {
        let now = Instant::now();
        if self.unsaved.is_empty() || !self.shared.journal.is_healthy() || now < self.persist_at {
            return;
        }
        self.persist_at = now + PERSIST_RETRY;
        tracing::info!(
            "writing {} delivery outcome(s) the journal refused before",
            self.unsaved.len()
        );
        for (_, record) in std::mem::take(&mut self.unsaved) {
            self.took_off(&record.purpose);
            let (shared, tx) = (self.shared.clone(), self.tx.clone());
            tokio::spawn(async move {
                let report = persist(&shared, record).await;
                let _ = tx.send(Event::Done(report));
            });
        }
    }

    fn finished(&mut self, report: Report) {
        self.landed(&report.record.purpose);
        if report.record.purpose.mirror().is_none() {
            self.drain.record(report.signal, report.took);
        }
        if let Some(notice) = report.notice {
            self.track(&notice);
            self.file(*notice);
        }
        match report.status {
            Status::Removed => {
                self.untrack(&report.record);
            }
            Status::Kept => self.file(*report.record),
            Status::Unsaved => {
                self.persist_at = self.persist_at.max(Instant::now() + PERSIST_RETRY);
                let r = *report.record;
                self.unsaved.insert(r.id, r);
            }
        }
    }

    /// Why a message that is not among the idle records cannot be changed.
    fn not_idle(&self, id: QueueId) -> QueueError {
        if self.all.contains(&id) || self.copies.contains(&id) {
            QueueError::Conflict(format!("{id} is being delivered right now; try again"))
        } else {
            QueueError::NotFound(format!("{id} is not in the queue"))
        }
    }

    /// Makes one message due now (`breakwater queue flush ID`).
    fn flush_message(&mut self, id: QueueId) -> Result<(), QueueError> {
        let now = self.shared.clock.now_ms();
        let Some(r) = self.records.get_mut(&id) else {
            return Err(self.not_idle(id));
        };
        if r.held {
            return Err(QueueError::Conflict(format!(
                "{id} is held; release it to deliver it"
            )));
        }
        let (purpose, due) = (r.purpose.clone(), r.next_attempt_ms);
        r.next_attempt_ms = 0;
        let lane = self.lane(&purpose);
        lane.remove(id, due);
        lane.file(id, 0, now);
        tracing::info!("{id} flushed: due now");
        Ok(())
    }

    /// Removes one message for good (`breakwater queue delete ID`).
    async fn delete(&mut self, id: QueueId, reason: &str) -> Result<(), QueueError> {
        let Some(r) = self.records.remove(&id) else {
            return Err(self.not_idle(id));
        };
        self.lane(&r.purpose).remove(id, r.next_attempt_ms);
        let now = self.shared.clock.now_ms();
        match self.shared.journal.remove(&r, now, 0).await {
            Ok(()) if r.purpose.is_canary() => {
                self.untrack(&r); // given up: the canary task logs it
                Ok(())
            }
            Ok(()) => {
                self.untrack(&r);
                self.shared.metrics.messages_deleted.inc();
                let open = r.rcpts.iter().filter(|x| x.state.is_open()).count();
                tracing::warn!(
                    "{id} deleted by admin: from=<{}> recipients={} undelivered={open} reason=\"{}\"",
                    r.envelope.mail_from,
                    r.rcpts.len(),
                    reason.replace(['\r', '\n', '"'], " ")
                );
                Ok(())
            }
            Err(e) => {
                self.file(r);
                Err(QueueError::Storage(e.to_string()))
            }
        }
    }

    /// Holds or releases one message. Returns the record to persist, or why not.
    fn hold_message(&mut self, id: QueueId, held: bool) -> Result<Record, QueueError> {
        let Some(mut r) = self.records.remove(&id) else {
            return Err(self.not_idle(id));
        };
        self.lane(&r.purpose).remove(id, r.next_attempt_ms);
        r.held = held;
        if !held {
            r.next_attempt_ms = 0;
        }
        let copy = r.clone();
        self.file(r);
        Ok(copy)
    }

    /// After a pause (outage, quiet time, hold) the backlog goes now, not at
    /// each message's retry time. Only on the transition from shut to open: a
    /// change while mail was flowing anyway (one of two backends going down)
    /// leaves the retry schedule alone.
    fn reopen_if_opened(&mut self, was_open: bool, why: &str) {
        if !was_open && self.shared.gate.is_open() {
            self.make_all_due(why);
        }
    }

    fn make_all_due(&mut self, why: &str) {
        let n = self.mail.all_due() + self.bounces.all_due();
        if n > 0 {
            tracing::info!("{why}: {n} deferred messages due now");
        }
    }

    fn promote_due(&mut self) {
        let now = self.shared.clock.now_ms();
        self.mail.promote(now);
        self.bounces.promote(now);
        self.canaries.promote(now);
        for lane in self.mirrors.values_mut() {
            lane.promote(now);
        }
    }

    fn launch(&mut self) {
        while self.in_flight < self.drain.limit() {
            let Some(id) = self.bounces.pop_ready() else {
                break;
            };
            self.start(id);
        }
        self.launch_mirrors();
        self.launch_canaries();
        if !self.shared.gate.is_open() {
            self.paused = true;
            return;
        }
        if self.paused && self.mail.ready_len() > 0 {
            self.paused = false;
            self.drain.restart(Instant::now());
            tracing::info!(
                "delivery resumes: {} messages ready, slow start",
                self.mail.ready_len()
            );
        }
        while self.in_flight < self.drain.limit() && self.mail.ready_len() > 0 {
            if !self.drain.try_start(Instant::now()) {
                return;
            }
            let Some(id) = self.mail.pop_ready() else {
                return;
            };
            self.start(id);
        }
    }

    /// Starts the copies due for each standby that is up, up to its
    /// connection limit; independent of the backends' drain.
    fn launch_mirrors(&mut self) {
        let live = self.shared.live();
        let names: Vec<String> = self.mirrors.keys().cloned().collect();
        for name in names {
            // A standby removed by a reload: its copies fail at once (the client
            // finds no such mirror) rather than waiting forever.
            let limit = live
                .mirrors
                .iter()
                .find(|(m, _)| *m == name)
                .map_or(1, |&(_, n)| n);
            let known = live.mirrors.iter().any(|(m, _)| *m == name);
            if known && !self.shared.gate.is_open_for_mirror(&name) {
                continue;
            }
            loop {
                let flying = self.mirror_flight.get(&name).copied().unwrap_or(0);
                if flying >= limit {
                    break;
                }
                let Some(id) = self.mirrors.get_mut(&name).and_then(Lane::pop_ready) else {
                    break;
                };
                self.start(id);
            }
        }
    }

    /// Starts the canaries due whose backend may take them now (up, and not
    /// in quiet time or held unless `during_quiet_time`); the others look
    /// again in a second (they are given up by the canary task, not here).
    fn launch_canaries(&mut self) {
        let now = self.shared.clock.now_ms();
        while let Some(id) = self.canaries.pop_ready() {
            let Some(r) = self.records.get_mut(&id) else {
                continue;
            };
            let go = match &r.purpose {
                Purpose::Canary {
                    backend,
                    during_quiet_time,
                    ..
                } => self.shared.gate.may_take(backend, *during_quiet_time),
                _ => true,
            };
            if go {
                self.start(id);
            } else {
                r.next_attempt_ms = now + 1_000;
                self.canaries.file(id, r.next_attempt_ms, now);
            }
        }
    }

    /// Starts an attempt on a ready record.
    fn start(&mut self, id: QueueId) {
        let Some(record) = self.records.remove(&id) else {
            return;
        };
        self.took_off(&record.purpose);
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let report = attempt(&shared, record).await;
            let _ = tx.send(Event::Done(report));
        });
    }

    /// When the loop must look again without an event: the next delay warning,
    /// the next start the rate allows, or the next retry time (only DSNs' while
    /// the gate is shut).
    fn next_wake(&self) -> Option<Instant> {
        if !self.unsaved.is_empty() {
            // While the journal is closed, its reopening wakes the loop.
            return self.shared.journal.is_healthy().then_some(self.persist_at);
        }
        if !self.may_deliver() {
            return None; // the journal's reopening wakes the loop
        }
        let clock = self.shared.clock;
        let warning = self.warnings.first().map(|&(due, _)| clock.instant_at(due));
        let expiry = self
            .shared
            .journal
            .next_expiry_ms()
            .map(|ms| clock.instant_at(ms));
        [
            warning,
            expiry,
            self.next_delivery_wake(),
            self.next_mirror_wake(),
            self.canaries.next_due().map(|ms| clock.instant_at(ms)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn next_delivery_wake(&self) -> Option<Instant> {
        if self.in_flight >= self.drain.limit() {
            return None;
        }
        let bounce = self.bounces.next_due();
        let mail = if !self.shared.gate.is_open() {
            // Nothing starts, but the counts of due and deferred messages
            // change when a retry time passes.
            self.mail.next_due()
        } else if self.mail.ready_len() > 0 {
            return self.drain.next_start();
        } else {
            self.mail.next_due()
        };
        let due = match (mail, bounce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        due.map(|ms| self.shared.clock.instant_at(ms))
    }

    /// The next retry time of a copy to a standby that is up.
    fn next_mirror_wake(&self) -> Option<Instant> {
        self.mirrors
            .iter()
            .filter(|(name, _)| self.shared.gate.is_open_for_mirror(name))
            .filter_map(|(_, lane)| lane.next_due())
            .min()
            .map(|ms| self.shared.clock.instant_at(ms))
    }

    fn next_quiet_change(&self) -> Option<Instant> {
        let t = self.shared.gate.next_quiet_change()?;
        Some(
            self.shared
                .clock
                .instant_at(t.timestamp_millis().max(0) as u64),
        )
    }

    /// Publishes the queue's counts; `/metrics` turns them into gauges (and
    /// the oldest arrival into an age) when it is scraped, not here on every
    /// turn of the loop.
    fn publish_stats(&self) {
        let due = (self.mail.ready_len() + self.bounces.ready_len()) as u64;
        let deferred = (self.mail.waiting_len() + self.bounces.waiting_len()) as u64;
        let mut copies = (self.canaries.ready_len() + self.canaries.waiting_len()) as u64;
        for (name, lane) in &self.mirrors {
            let idle = (lane.ready_len() + lane.waiting_len()) as u64;
            copies += idle;
            let flying = self.mirror_flight.get(name).copied().unwrap_or(0) as u64;
            self.shared
                .metrics
                .mirror_queue_depth
                .with_label_values(&[name])
                .set((idle + flying) as i64);
        }
        let snapshot = Snapshot {
            depth: self.all.len() as u64,
            oldest: self.all.first().copied(),
            due,
            deferred,
            held: (self.records.len() as u64).saturating_sub(due + deferred + copies),
            in_flight: self.in_flight as u64,
        };
        self.shared.stats.publish(snapshot);
    }

    async fn finish_in_flight(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut report = Instant::now();
        let mut flying = self.all_in_flight();
        while flying > 0 {
            if Instant::now() >= report {
                tracing::info!("shutdown: waiting for {flying} deliveries in flight");
                report = Instant::now() + Duration::from_secs(2);
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Done(..)) => flying -= 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("shutdown: {flying} deliveries still in flight after the grace period; they will be retried after restart");
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
