//! Delivery: the dispatcher (schedule, concurrency), the backend client, outcome
//! classification and the retry policy.

pub mod client;
pub mod dispatcher;
pub mod outcome;
pub mod retry;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::health::Health;
use crate::journal::{Journal, Record};
use dispatcher::{Clock, Dispatcher, Shared};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages to the dispatcher.
pub(crate) enum Event {
    /// A message was journaled and awaits delivery.
    New(Box<Record>),
    /// Make every deferred message due now.
    Flush,
    /// An attempt finished; the record carries the new state.
    Done(Box<Record>, Status),
}

/// Where a message stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Still in the journal (deferred or with failed recipients).
    Kept,
    /// Gone from the journal.
    Removed,
}

/// Handle for telling the dispatcher about new messages and admin requests.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Event>,
}

impl Queue {
    /// Announces a message that is durably in the journal.
    pub fn enqueued(&self, record: Record) {
        let _ = self.tx.send(Event::New(Box::new(record)));
    }

    /// Makes every deferred message due now (`breakwater queue flush`).
    pub fn flush(&self) {
        let _ = self.tx.send(Event::Flush);
    }
}

/// Builds the dispatcher for `config` over `journal`, gated by `health`,
/// scheduling the `recovered` records; returns the handle and the dispatcher to run.
pub fn dispatcher(
    config: &Config,
    journal: Journal,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    recovered: Vec<Record>,
) -> (Queue, Dispatcher) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backends = client::Backends::new(
        &config.backend,
        config.delivery.concurrency,
        &config.hostname,
        health.clone(),
    );
    let shared = Shared {
        journal,
        health,
        backends,
        retry: retry::RetryPolicy::new(config.delivery.retry.iter().map(|d| d.0).collect()),
        metrics,
        clock: Clock::new(),
    };
    let d = Dispatcher::new(
        shared,
        rx,
        tx.clone(),
        config.delivery.concurrency,
        recovered,
    );
    (Queue { tx }, d)
}
