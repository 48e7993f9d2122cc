//! Shared support for breakwater's integration tests.
//!
//! * [`Backend`]: a real (fake) SMTP server playing the organisation's mail
//!   server, recording every accepted message.
//! * [`Client`]: a line-oriented SMTP client for driving the relay by hand.
//! * Polling helpers: [`wait_until`], [`wait_until_async`], [`free_port`].
//!
//! Everything binds to 127.0.0.1 only. Each test file uses a subset of this
//! module, hence the blanket `dead_code` / `unused_imports` allowance.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod backend;
pub mod cli;
pub mod client;
pub mod dns;
pub mod dovecot;
pub mod relay;
pub mod tls;

pub use backend::{Backend, BackendOptions, Received, count_by_header};
pub use cli::{Run, cli, raw_http};
pub use client::{Client, Reply, dot_stuff, send_each};
pub use dns::Dns;
pub use relay::{Relay, config_text, http, metric_value, wait_metric, wait_metric_at};
pub use tls::TestCert;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Interval between two polls in [`wait_until`] / [`wait_until_async`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Upper bound on polls, derived from the timeout (plus a little slack).
fn max_polls(timeout: Duration) -> u128 {
    timeout.as_millis() / POLL_INTERVAL.as_millis() + 2
}

/// Polls `f` every 10 ms until it returns true (→ `true`) or `timeout`
/// elapses (→ `false`). Blocks the thread: in an async test prefer
/// [`wait_until_async`], which lets tasks on the same runtime make progress.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..max_polls(timeout) {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
    f()
}

/// Async version of [`wait_until`]: polls `f` every 10 ms until it returns
/// true (→ `true`) or `timeout` elapses (→ `false`).
pub async fn wait_until_async(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..max_polls(timeout) {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
    f()
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read the port, drop).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free_port: cannot bind 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
