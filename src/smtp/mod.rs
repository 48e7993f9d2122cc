//! Inbound SMTP: listener, per-connection I/O loop, the session state machine,
//! message receivers, typed replies, recipient checks, STARTTLS and the
//! `Received:` header.

pub mod address;
pub mod connection;
pub mod data;
pub mod incoming;
pub mod listener;
pub mod params;
pub mod received;
pub mod recipients;
pub mod reply;
pub mod session;
pub mod tls;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::delivery::Queue;
use crate::journal::Journal;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every session shares.
pub struct Context {
    /// Our host name.
    pub hostname: String,
    /// Largest message, bytes.
    pub max_message_size: u64,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Idle timeout per command / data read.
    pub idle_timeout: Duration,
    /// The whole config (relay domains).
    pub config: Arc<Config>,
    /// Where messages go before `250`.
    pub journal: Journal,
    /// Where accepted messages are announced for delivery.
    pub queue: Queue,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Inbound STARTTLS, when `[smtp.tls]` is set.
    pub tls: Option<Arc<tls::Tls>>,
    /// Which recipients exist (static list, backend verification).
    pub recipients: recipients::Recipients,
}

impl Context {
    /// True if we accept mail for `domain`.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        self.config.is_relay_domain(domain)
    }
}
