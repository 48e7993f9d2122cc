//! Inbound SMTP: listener, per-connection I/O loop, the session state machine,
//! message receivers, typed replies, recipient checks, STARTTLS and the
//! `Received:` header.

pub mod address;
pub mod auth;
pub mod connection;
pub mod data;
pub mod dnsbl;
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
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What every session shares.
pub struct Context {
    /// The config in force (swapped by a reload; each session keeps the one
    /// it started with).
    pub config: RwLock<Arc<Config>>,
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
    pub recipients: RwLock<Arc<recipients::Recipients>>,
    /// `[[flow]]`s: told of every accepted message.
    pub flows: Arc<crate::flows::Flows>,
    /// The DNS resolver of `[auth]` and `[[dnsbl]]`, built on first use.
    pub auth: auth::Edge,
}

impl Context {
    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// The recipient checks in force now.
    pub fn recipients(&self) -> Arc<recipients::Recipients> {
        self.recipients.read().expect("recipients lock").clone()
    }
}
