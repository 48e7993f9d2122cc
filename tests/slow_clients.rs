//! Proves that with `[smtp] idle_timeout = "1s"` a silent client, and a
//! slowloris dripping one byte every 300 ms of a command line or of a DATA line
//! (bytes keep arriving, the line never ends), each get `421 4.4.2` within a few
//! seconds and are disconnected, and that a normal client is served afterwards.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nidle_timeout = \"1s\"\n";
const WAIT: Duration = Duration::from_secs(10);
const DRIP: Duration = Duration::from_millis(300);
/// Generous: the deadline is 1 s; a slowloris without one would last forever.
const LIMIT: Duration = Duration::from_secs(5);

/// Sends `line` one byte per [`DRIP`] (waiting for a reply in between) until the
/// relay answers; returns the reply, the bytes sent and the time it took.
async fn drip(c: &mut Client, line: &[u8]) -> (Reply, usize, Duration) {
    let start = Instant::now();
    for (i, b) in line.iter().enumerate() {
        if c.try_send_raw(&[*b]).await.is_err() || c.line_within(DRIP).await {
            return (c.read_reply().await, i + 1, start.elapsed());
        }
    }
    panic!(
        "no reply after dripping {} bytes for {:?}",
        line.len(),
        start.elapsed()
    );
}

/// The relay is still healthy: a new client's message is delivered.
async fn normal_client_served(relay: &Relay, backend: &Backend) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("normal.test").await;
    let body = b"Subject: normal\r\n\r\nserved\r\n";
    let r = c
        .send_message("n@client.test", &["n@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(body));
    c.quit().await;
}

async fn assert_dropped(relay: &Relay, c: &mut Client) {
    assert!(c.is_closed().await, "connection left open after 421");
    assert!(wait_metric(relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    let timeouts = "breakwater_smtp_rejections_total{reason=\"timeout\"}";
    assert_eq!(relay.counter(timeouts).await, 1.0);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_disconnected() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    let start = Instant::now();
    assert!(c.line_within(LIMIT).await, "no reply to a silent client");
    let r = c.read_reply().await;
    assert!(r.matches("421 4.4.2"), "{r}");
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
    assert_dropped(&relay, &mut c).await;
    normal_client_served(&relay, &backend).await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_command_line_is_cut_off() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("slow.test").await;
    let line = format!("MAIL FROM:<{}@client.test>", "s".repeat(100));
    let (r, sent, took) = drip(&mut c, line.as_bytes()).await;
    assert!(r.matches("421 4.4.2"), "{r}");
    assert!(
        sent >= 3,
        "cut off after {sent} bytes: the bytes kept coming"
    );
    assert!(took < LIMIT, "took {took:?} ({sent} bytes)");
    assert_dropped(&relay, &mut c).await;
    normal_client_served(&relay, &backend).await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_inside_data_is_cut_off() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("slow.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: slow\r\n\r\n").await;
    let (r, sent, took) = drip(&mut c, "x".repeat(100).as_bytes()).await;
    assert!(r.matches("421 4.4.2"), "{r}");
    assert!(
        sent >= 3,
        "cut off after {sent} bytes: the bytes kept coming"
    );
    assert!(took < LIMIT, "took {took:?} ({sent} bytes)");
    assert_dropped(&relay, &mut c).await;
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    normal_client_served(&relay, &backend).await;
    relay.stop().await;
    backend.stop().await;
}
