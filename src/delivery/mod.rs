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
pub mod stats;
pub mod tls;
mod transfer;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::health::Health;
use crate::journal::{self, Journal, QueueId, Record};
use crate::schedule::QuietTime;
pub use dispatcher::{Clock, ClockHandle};
use dispatcher::{Dispatcher, Live, Shared};
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
    /// Something the loop's timers depend on changed (an ad-hoc window).
    Wake,
    /// A reloaded config: new delivery settings and drain limits.
    Reconfigure {
        live: Arc<dispatcher::Live>,
        concurrency: usize,
        drain_rate: Option<f64>,
        /// Backends were added, moved or re-prioritised: deferred mail goes now.
        backends_changed: bool,
        /// The gate was open before (if the reload opens it, the backlog goes).
        was_open: bool,
    },
    /// Hold (`held = true`) or release one message; answered once persisted.
    HoldMessage {
        id: QueueId,
        held: bool,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    /// Make one message due now.
    FlushMessage {
        id: QueueId,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    /// Remove one message for good.
    Delete {
        id: QueueId,
        reason: String,
        done: oneshot::Sender<Result<(), QueueError>>,
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

/// Why an admin request on one message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No such message.
    #[error("{0}")]
    NotFound(String),
    /// Not now (being delivered, held ...).
    #[error("{0}")]
    Conflict(String),
    /// Bad input (an unknown backend, a window in the past ...).
    #[error("{0}")]
    Invalid(String),
    /// The journal refused the change.
    #[error("journal: {0}")]
    Storage(String),
}

/// Journal setting that persists the whole-queue hold.
const QUEUE_HELD: &str = "queue_held";

/// Journal documents holding the ad-hoc quiet windows: `quiet/NAME`.
const QUIET_PREFIX: &str = "quiet/";

/// An ad-hoc quiet window as the journal keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AdHocWindow {
    name: String,
    from_ms: i64,
    until_ms: i64,
    #[serde(default)]
    backends: Vec<String>,
}

impl AdHocWindow {
    fn window(&self) -> Option<crate::schedule::Window> {
        let from = chrono::DateTime::from_timestamp_millis(self.from_ms)?;
        let until = chrono::DateTime::from_timestamp_millis(self.until_ms)?;
        Some(crate::schedule::Window::one_off(
            &self.name,
            from,
            until,
            self.backends.clone(),
        ))
    }
}

/// Handle for telling the dispatcher about new messages and admin requests.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Event>,
    journal: Journal,
    gate: Arc<gate::Gate>,
    stats: Arc<stats::QueueStats>,
    canaries: Arc<crate::canary::Tracker>,
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

    /// The canaries outstanding (`[canary]`).
    pub fn canaries(&self) -> &Arc<crate::canary::Tracker> {
        &self.canaries
    }

    /// The delivery gate (which backends may take mail now).
    pub fn gate(&self) -> &Arc<gate::Gate> {
        &self.gate
    }

    /// Holds (`true`) or releases one message, persisted in its journal record.
    pub async fn set_message_held(&self, id: QueueId, held: bool) -> Result<(), QueueError> {
        self.ask(|done| Event::HoldMessage { id, held, done }).await
    }

    /// Makes one message due now and gives down backends another chance.
    pub async fn flush_message(&self, id: QueueId) -> Result<(), QueueError> {
        self.ask(|done| Event::FlushMessage { id, done }).await
    }

    /// Removes one message for good; logged with `reason` and counted.
    pub async fn delete(&self, id: QueueId, reason: String) -> Result<(), QueueError> {
        self.ask(|done| Event::Delete { id, reason, done }).await
    }

    async fn ask(
        &self,
        event: impl FnOnce(oneshot::Sender<Result<(), QueueError>>) -> Event,
    ) -> Result<(), QueueError> {
        let stopped = || QueueError::Conflict("the dispatcher has stopped".into());
        let (done, rx) = oneshot::channel();
        self.tx.send(event(done)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Takes a reloaded config: windows and backend names at the gate now,
    /// delivery settings for the attempts that start from now on.
    pub fn reconfigure(&self, config: &Config, backends_changed: bool) -> Result<(), String> {
        let quiet = QuietTime::from_config(&config.quiet_time).map_err(|ps| {
            ps.iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let was_open = self.gate.is_open();
        self.gate.reconfigure(
            quiet,
            config.backend.iter().map(|b| b.name.clone()).collect(),
        );
        let _ = self.tx.send(Event::Reconfigure {
            live: Arc::new(live(config, &self.gate)),
            concurrency: config.delivery.concurrency,
            drain_rate: config.delivery.drain_rate,
            backends_changed,
            was_open,
        });
        Ok(())
    }

    /// The dispatcher's latest counts.
    pub fn stats(&self) -> stats::Snapshot {
        self.stats.read()
    }

    /// Starts (or replaces) an ad-hoc quiet window `name` from now until
    /// `until`, for `backends` (empty: all). Persisted in the journal before it
    /// takes effect, so it survives restarts and crashes.
    pub async fn quiet_start(
        &self,
        name: &str,
        until: chrono::DateTime<chrono::Utc>,
        backends: Vec<String>,
    ) -> Result<(), QueueError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.contains(['/', '\r', '\n']) {
            return Err(QueueError::Invalid(
                "a window name must be 1 to 200 characters, without '/' or line breaks".into(),
            ));
        }
        let now = self.gate.now();
        if until <= now {
            return Err(QueueError::Invalid(format!(
                "the window would end at {}, which is not in the future",
                until.to_rfc3339()
            )));
        }
        let known = self.gate.backend_names();
        if let Some(b) = backends.iter().find(|b| !known.contains(b)) {
            return Err(QueueError::Invalid(format!(
                "no backend named {b:?} (backends: {})",
                known.join(", ")
            )));
        }
        let w = AdHocWindow {
            name: name.to_owned(),
            from_ms: now.timestamp_millis(),
            until_ms: until.timestamp_millis(),
            backends,
        };
        let window = w
            .window()
            .ok_or_else(|| QueueError::Invalid("time out of range".into()))?;
        let doc = serde_json::to_vec(&w).map_err(|e| QueueError::Storage(e.to_string()))?;
        self.journal
            .set_document(format!("{QUIET_PREFIX}{name}"), Some(doc))
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))?;
        self.gate.set_adhoc(window);
        tracing::info!(
            "quiet window {name:?} started until {} for {}",
            until.to_rfc3339(),
            if w.backends.is_empty() {
                "all backends".to_owned()
            } else {
                w.backends.join(", ")
            }
        );
        let _ = self.tx.send(Event::Wake);
        Ok(())
    }

    /// Ends an ad-hoc quiet window early; the backlog goes now.
    pub async fn quiet_stop(&self, name: &str) -> Result<(), QueueError> {
        if !self.gate.has_adhoc(name) {
            return Err(QueueError::NotFound(format!(
                "no ad-hoc quiet window named {name:?} (windows from the config file end only by editing it)"
            )));
        }
        self.journal
            .set_document(format!("{QUIET_PREFIX}{name}"), None)
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))?;
        self.gate.remove_adhoc(name);
        tracing::info!("quiet window {name:?} stopped");
        let _ = self.tx.send(Event::Reopen("quiet window stopped"));
        Ok(())
    }

    /// Forgets ad-hoc windows that have ended (their documents too).
    pub async fn forget_ended_windows(&self) {
        for name in self.gate.ended_adhoc() {
            if self
                .journal
                .set_document(format!("{QUIET_PREFIX}{name}"), None)
                .await
                .is_ok()
            {
                self.gate.remove_adhoc(&name);
            }
        }
    }
}

/// The delivery settings of `config`.
fn live(config: &Config, gate: &Arc<gate::Gate>) -> Live {
    Live {
        hostname: config.hostname.clone(),
        lifetime_ms: config.delivery.max_queue_lifetime.0.as_millis() as u64,
        warn_after_ms: config
            .delivery
            .delay_warning
            .map(|d| d.0.as_millis() as u64),
        backends: client::Backends::new(config, gate.clone()),
        retry: retry::RetryPolicy::new(config.delivery.retry.iter().map(|d| d.0).collect()),
        retain_ms: config.journal.retain_delivered.0.as_millis() as u64,
        mirrors: config
            .mirror
            .iter()
            .map(|m| (m.name.clone(), m.max_connections))
            .collect(),
    }
}

/// Loads the ad-hoc windows kept in the journal into `gate`.
fn load_adhoc(journal: &Journal, gate: &gate::Gate) -> Result<(), journal::Error> {
    for (key, doc) in journal.documents(QUIET_PREFIX)? {
        match serde_json::from_slice::<AdHocWindow>(&doc)
            .ok()
            .and_then(|w| w.window())
        {
            Some(w) => gate.set_adhoc(w),
            None => tracing::warn!("journal document {key:?} is not a quiet window; ignored"),
        }
    }
    Ok(())
}

/// Builds the dispatcher for `config` over `journal`, gated by `health`, the
/// quiet-time windows and the persisted queue hold, scheduling the `recovered`
/// records; returns the handle and the dispatcher to run.
pub fn dispatcher(
    config: &Config,
    journal: Journal,
    health: Arc<Health>,
    mirror_health: Arc<Health>,
    metrics: Arc<Metrics>,
    recovered: Vec<Record>,
    clock: Clock,
) -> Result<(Queue, Dispatcher), journal::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let quiet = QuietTime::from_config(&config.quiet_time).unwrap_or_default();
    let held = journal.setting(QUEUE_HELD)?.unwrap_or(0) == 1;
    let names = config.backend.iter().map(|b| b.name.clone()).collect();
    let gate = Arc::new(gate::Gate::new(
        health,
        mirror_health,
        quiet,
        held,
        names,
        clock,
        metrics.clone(),
    ));
    load_adhoc(&journal, &gate)?;
    let stats = Arc::new(stats::QueueStats::default());
    let canaries = Arc::new(crate::canary::Tracker::new(metrics.clone()));
    recovered.iter().for_each(|r| canaries.adopt(r));
    let shared = Shared {
        canaries: canaries.clone(),
        journal: journal.clone(),
        gate: gate.clone(),
        metrics,
        clock,
        stats: stats.clone(),
        live: std::sync::RwLock::new(Arc::new(live(config, &gate))),
    };
    let drain = drain::Drain::new(
        config.delivery.concurrency,
        config.delivery.drain_rate,
        tokio::time::Instant::now(),
    );
    let d = Dispatcher::new(shared, rx, tx.clone(), drain, recovered);
    Ok((
        Queue {
            tx,
            journal,
            gate,
            stats,
            canaries,
        },
        d,
    ))
}
