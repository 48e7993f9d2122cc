//! Delivery: the dispatcher (schedule, concurrency), the backend client, the
//! body encoder and its streaming from the journal, outcome classification and
//! the retry policy.

mod attempt;
pub mod body;
pub mod client;
mod commands;
pub mod dispatcher;
pub mod drain;
pub mod dsn;
pub mod gate;
pub mod lane;
pub mod mx;
mod notices;
pub mod outcome;
pub mod retry;
pub mod tls;
mod transfer;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::health::Health;
use crate::journal::{self, Journal, QueueId, Record};
use crate::schedule::QuietTime;
use dispatcher::{Clock, Dispatcher, Shared};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Messages to the dispatcher.
pub(crate) enum Event {
    /// A message was journaled and awaits delivery.
    New(Box<Record>),
    /// Make every deferred message due now.
    Flush,
    /// Something opened the gate (queue released): the backlog goes now.
    Reopen(&'static str),
    /// Hold (`held = true`) or release one message; answered once persisted.
    HoldMessage {
        id: QueueId,
        held: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// An attempt finished; the report carries the record's new state.
    Done(attempt::Report),
}

/// Where a message stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Still in the journal (deferred or with failed recipients).
    Kept,
    /// Gone from the journal.
    Removed,
    /// Its new state could not be written (storage trouble): the dispatcher
    /// keeps it in memory, starts no delivery until the journal takes writes
    /// again, then writes it, so a recorded delivery is never repeated.
    Unsaved,
}

/// Journal setting that persists the whole-queue hold.
const QUEUE_HELD: &str = "queue_held";

/// Handle for telling the dispatcher about new messages and admin requests.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Event>,
    journal: Journal,
    gate: Arc<gate::Gate>,
}

impl Queue {
    /// Announces a message that is durably in the journal.
    pub fn enqueued(&self, record: Record) {
        let _ = self.tx.send(Event::New(Box::new(record)));
    }

    /// Makes every deferred message due now and gives backends counted as down
    /// another chance (`breakwater queue flush`, like `postqueue -f`).
    pub fn flush(&self) {
        let _ = self.tx.send(Event::Flush);
    }

    /// Holds (`true`) or releases the whole queue. The hold is persisted in the
    /// journal before it takes effect, so it survives restarts; mail is still
    /// accepted while held.
    pub async fn set_queue_held(&self, held: bool) -> Result<(), journal::Error> {
        self.journal.set_setting(QUEUE_HELD, held as u64).await?;
        self.gate.set_held(held);
        tracing::info!("queue {}", if held { "held" } else { "released" });
        if !held {
            let _ = self.tx.send(Event::Reopen("queue released"));
        }
        Ok(())
    }

    /// The delivery gate (which backends may take mail now).
    pub fn gate(&self) -> &Arc<gate::Gate> {
        &self.gate
    }

    /// Holds (`true`) or releases one message, persisted in its journal record.
    pub async fn set_message_held(&self, id: QueueId, held: bool) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Event::HoldMessage { id, held, done })
            .map_err(|_| "dispatcher stopped".to_string())?;
        rx.await.map_err(|_| "dispatcher stopped".to_string())?
    }
}

/// Builds the dispatcher for `config` over `journal`, gated by `health`, the
/// quiet-time windows and the persisted queue hold, scheduling the `recovered`
/// records; returns the handle and the dispatcher to run.
pub fn dispatcher(
    config: &Config,
    journal: Journal,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    recovered: Vec<Record>,
) -> Result<(Queue, Dispatcher), journal::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let clock = Clock::new();
    let quiet = QuietTime::from_config(&config.quiet_time).unwrap_or_default();
    let held = journal.setting(QUEUE_HELD)?.unwrap_or(0) == 1;
    let names = config.backend.iter().map(|b| b.name.clone()).collect();
    let gate = Arc::new(gate::Gate::new(
        health,
        quiet,
        held,
        names,
        clock,
        metrics.clone(),
    ));
    let backends = client::Backends::new(
        &config.backend,
        config.delivery.concurrency,
        &config.hostname,
        config.bounce.relay.clone(),
        gate.clone(),
        config.delivery.line_length_limit,
    );
    let shared = Shared {
        journal: journal.clone(),
        hostname: config.hostname.clone(),
        lifetime_ms: config.delivery.max_queue_lifetime.0.as_millis() as u64,
        warn_after_ms: config
            .delivery
            .delay_warning
            .map(|d| d.0.as_millis() as u64),
        gate: gate.clone(),
        backends,
        retry: retry::RetryPolicy::new(config.delivery.retry.iter().map(|d| d.0).collect()),
        metrics,
        clock,
    };
    let drain = drain::Drain::new(
        config.delivery.concurrency,
        config.delivery.drain_rate,
        tokio::time::Instant::now(),
    );
    let d = Dispatcher::new(shared, rx, tx.clone(), drain, recovered);
    Ok((Queue { tx, journal, gate }, d))
}
