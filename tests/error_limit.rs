//! Proves `[smtp] max_errors = 5`: after the fifth error reply (bad commands, or
//! recipients refused as relay access) the client gets `421 4.7.0` and is
//! disconnected; `breakwater_smtp_rejections_total` counts it under
//! `reason="errors"` and the refused recipients under `reason="relay_denied"`;
//! good replies do not count, and a new session starts from zero.

mod common;
use common::*;
use std::time::Duration;

const EXTRA: &str = "[smtp]\nmax_errors = 5\n";
const WAIT: Duration = Duration::from_secs(10);
const ERRORS: &str = "breakwater_smtp_rejections_total{reason=\"errors\"}";
const RELAY_DENIED: &str = "breakwater_smtp_rejections_total{reason=\"relay_denied\"}";

/// Sends `line` five times: four plain `want` replies, then `want` + `421 4.7.0`
/// and the connection closes. Successful commands in between do not count.
async fn five_strikes(c: &mut Client, line: &str, want: &str) {
    for _ in 0..4 {
        c.cmd(line, want).await;
        c.cmd("NOOP", "250").await; // still open, and not an error
    }
    c.cmd(line, want).await;
    let r = c.read_reply().await;
    assert!(r.matches("421 4.7.0"), "{r}");
    assert!(c.is_closed().await, "connection left open after 421 4.7.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_end_the_session() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    five_strikes(&mut c, "FROBNICATE now", "500 5.5.2").await;
    assert_eq!(relay.counter(ERRORS).await, 1.0);
    assert_eq!(relay.counter(RELAY_DENIED).await, 0.0);

    // The count is per session: a new one gets its message through.
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for _ in 0..4 {
        c.cmd("FROBNICATE", "500").await;
    }
    let body = b"Subject: fine\r\n\r\nfour strikes only\r\n";
    let r = c
        .send_message("s@client.test", &["a@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    backend.wait_for(1, WAIT).await;
    c.quit().await;
    assert_eq!(relay.counter(ERRORS).await, 1.0);
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_denied_recipients_end_the_session() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    five_strikes(&mut c, "RCPT TO:<victim@elsewhere.test>", "550 5.7.1").await;
    assert_eq!(relay.counter(RELAY_DENIED).await, 5.0);
    assert_eq!(relay.counter(ERRORS).await, 1.0);
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    relay.stop().await;
    backend.stop().await;
}
