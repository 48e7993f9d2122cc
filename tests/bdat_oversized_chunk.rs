//! Proves that a BDAT chunk announced larger than `smtp.max_message_size`
//! (including a size past u64) is answered `552 5.3.4` at once, without waiting
//! for its bytes, and the connection is closed; inside a transaction nothing is
//! stored, and the relay serves the next client.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nmax_message_size = 100000\n";
const WAIT: Duration = Duration::from_secs(10);
/// "At once": far below any timeout the relay could be waiting on.
const PROMPT: Duration = Duration::from_secs(3);

/// Sends `line` (no chunk bytes follow) and expects `552 5.3.4` promptly, then EOF.
async fn refused_at_once(c: &mut Client, line: &str) {
    let start = Instant::now();
    c.send(line).await;
    assert!(c.line_within(PROMPT).await, "{line:?}: no prompt reply");
    let r = c.read_reply().await;
    assert!(r.matches("552 5.3.4"), "{line:?}: {r}");
    assert!(c.is_closed().await, "{line:?}: connection left open");
    assert!(
        start.elapsed() < PROMPT * 2,
        "{line:?}: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunk_is_refused_without_waiting() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    // Inside a transaction, and outside one.
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    refused_at_once(&mut c, "BDAT 99999999999999999999999 LAST").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    refused_at_once(&mut c, "BDAT 99999999999999999999999 LAST").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    refused_at_once(&mut c, "BDAT 100001").await;

    let size = "breakwater_smtp_rejections_total{reason=\"size\"}";
    assert_eq!(relay.counter(size).await, 3.0);
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );

    // A chunk of exactly the limit's size is still taken.
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut body = b"Subject: exact\r\n\r\n".to_vec();
    while body.len() < 100_000 {
        body.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
    }
    body.truncate(100_000 - 2);
    body.extend_from_slice(b"\r\n");
    let r = c
        .send_bdat("s@client.test", &["a@example.com"], &body, body.len())
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(&body));
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
