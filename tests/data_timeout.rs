//! Proves that `[smtp] data_timeout` bounds the whole message: a client that
//! sends a short, finished DATA line every 300 ms (each well within
//! `idle_timeout`) gets `421 4.4.2` after about 2 s and is disconnected, nothing
//! is stored, and a normal client is served afterwards.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nidle_timeout = \"1s\"\ndata_timeout = \"2s\"\n";
const WAIT: Duration = Duration::from_secs(10);
const PACE: Duration = Duration::from_millis(300);
/// Lines sent at most: 12 s worth, far past the 2 s limit.
const MAX_LINES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_but_endless_message_is_cut_off() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("steady.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    let start = Instant::now();
    c.send_raw(b"Subject: endless\r\n\r\n").await;
    let mut lines = 0;
    let mut answered = false;
    while lines < MAX_LINES && !answered {
        if c.try_send_raw(format!("line {lines}\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        lines += 1;
        // Paces the lines, and stops at the relay's answer.
        answered = c.line_within(PACE).await;
    }
    let took = start.elapsed();
    let r = c.read_reply().await;
    assert!(
        r.matches("421 4.4.2"),
        "after {lines} lines in {took:?}: {r}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "cut off after {took:?}, before data_timeout"
    );
    assert!(took < Duration::from_secs(6), "cut off only after {took:?}");
    assert!(lines >= 4, "only {lines} lines were sent");
    assert!(c.is_closed().await, "connection left open after 421");

    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    let timeouts = "breakwater_smtp_rejections_total{reason=\"timeout\"}";
    assert_eq!(relay.counter(timeouts).await, 1.0);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);

    // A message that arrives in time is taken.
    let mut ok = Client::connect(relay.smtp).await;
    ok.ehlo("normal.test").await;
    let body = b"Subject: normal\r\n\r\nin time\r\n";
    let r = ok
        .send_message("n@client.test", &["n@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(backend.count(), 1);
    assert!(got[0].data.ends_with(body));
    ok.quit().await;
    relay.stop().await;
    backend.stop().await;
}
