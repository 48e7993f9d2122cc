//! Support for the fuzzer in `fuzz/` (cargo feature `fuzzing`, off by default):
//! a [`smtp::Context`] wired the way [`crate::run`] wires it (real journal,
//! metrics, health monitor and dispatcher, STARTTLS), without listeners, so a
//! fuzz target can drive [`smtp::connection::serve`] over an in-memory stream.

use crate::{Error, config, smtp};
use std::path::Path;
use std::sync::Arc;

/// The fuzzer's configuration: journal in `journal_dir`, relay for
/// `example.com`, one backend at `127.0.0.1:1` (nothing listens there, so
/// deliveries fail fast and stay queued), short timeouts, small limits so that
/// the size, recipient and loop refusals are reachable, no greet pause, and
/// STARTTLS with the PEM files `cert` and `key`.
pub fn config(
    journal_dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<config::Config, config::Error> {
    let text = format!(
        r#"
hostname = "relay.test"
[smtp]
listen = ["127.0.0.1:2525"]
idle_timeout = "1s"
data_timeout = "2s"
greet_pause = "0s"
max_message_size = 4096
max_recipients = 5
max_errors = 20
max_received_headers = 3
[smtp.tls]
cert = {cert:?}
key = {key:?}
[journal]
path = {journal_dir:?}
max_bytes = 1073741824
min_free_bytes = 0
[relay]
domains = ["example.com"]
[[backend]]
name = "refuses"
address = "127.0.0.1:1"
connect_timeout = "1s"
command_timeout = "1s"
[delivery]
retry = ["1h"]
shutdown_grace = "1s"
[health]
interval = "1s"
timeout = "1s"
"#
    );
    config::Config::parse(&text)
}

/// Builds the context every session shares, exactly as [`crate::run`] does
/// ([`crate::wire`]): opens the journal, starts the health monitor and the
/// dispatcher on the current tokio runtime (so call it inside one that
/// outlives the context), loads the TLS certificate.
pub fn context(config: config::Config) -> Result<Arc<smtp::Context>, Error> {
    // Nothing ever cancels the shutdown token: the context serves until exit.
    Ok(crate::wire(config, crate::delivery::Clock::new())?.ctx)
}
