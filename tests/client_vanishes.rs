//! Proves that a client vanishing mid-DATA or mid-BDAT leaves nothing stored or
//! delivered, that a silent client gets `421 4.4.2` after `[smtp] idle_timeout`
//! and is disconnected, and that a connection over `[smtp] max_connections`
//! gets `421 4.3.2` and is closed.

mod common;
use common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Polls the relay's metric `name` until it equals `want` (bounded by [`WAIT`]).
async fn wait_metric(relay: &Relay, name: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    for _ in 0..2_000 {
        let v = relay.metric(name).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v}, expected {want}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{name} never reached {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_messages_are_dropped() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut a = Client::connect(relay.smtp).await;
    a.ehlo("a.test").await;
    a.cmd("MAIL FROM:<a@client.test>", "250").await;
    a.cmd("RCPT TO:<x@example.com>", "250").await;
    a.cmd("DATA", "354").await;
    a.send_raw(b"Subject: half\r\n\r\nthe first half\r\n").await;
    let mut b = Client::connect(relay.smtp).await;
    b.ehlo("b.test").await;
    b.cmd("MAIL FROM:<b@client.test>", "250").await;
    b.cmd("RCPT TO:<y@example.com>", "250").await;
    b.send_raw(b"BDAT 100 LAST\r\nSubject: half\r\n\r\nonly part")
        .await;
    wait_metric(&relay, "breakwater_smtp_sessions_active", 2.0).await;
    drop(a);
    drop(b);
    wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0).await;
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);

    // A good message from another client is the barrier for the backend.
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("c.test").await;
    let good = b"Subject: whole\r\n\r\ncomplete\r\n";
    let r = c
        .send_message("c@client.test", &["z@example.com"], good)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(good));
    assert_eq!(got[0].rcpts, ["z@example.com"]);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    wait_metric(&relay, "breakwater_queue_depth", 0.0).await;
    assert_eq!(backend.count(), 1, "a half-sent message was delivered");
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_disconnected() {
    let mut backend = Backend::start().await;
    let extra = "[smtp]\nidle_timeout = \"1s\"\n";
    let mut relay = Relay::start(&[backend.addr()], extra).await;
    let mut quiet = Client::connect(relay.smtp).await;
    quiet.ehlo("quiet.test").await;
    let mut stalled = Client::connect(relay.smtp).await;
    stalled.ehlo("stalled.test").await;
    stalled.cmd("MAIL FROM:<s@client.test>", "250").await;
    stalled.cmd("RCPT TO:<x@example.com>", "250").await;
    stalled.cmd("DATA", "354").await;
    stalled.send_raw(b"Subject: stalled\r\n\r\nand then").await;
    let start = Instant::now();
    for c in [&mut quiet, &mut stalled] {
        let r = c.read_reply().await; // bounded by the client's 10 s I/O timeout
        assert!(r.matches("421 4.4.2"), "{r}");
        assert!(c.is_closed().await, "connection left open after 421");
    }
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "idle timeout took {waited:?}"
    );
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0).await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let mut backend = Backend::start().await;
    let extra = "[smtp]\nmax_connections = 2\n";
    let mut relay = Relay::start(&[backend.addr()], extra).await;
    let mut c1 = Client::connect(relay.smtp).await;
    let mut c2 = Client::connect(relay.smtp).await;
    assert!(c1.greeting().matches("220") && c2.greeting().matches("220"));
    let mut c3 = Client::connect(relay.smtp).await;
    assert!(c3.greeting().matches("421 4.3.2"), "{}", c3.greeting());
    assert!(c3.is_closed().await, "refused connection left open");
    c1.cmd("NOOP", "250").await;
    c2.cmd("NOOP", "250").await;
    c1.quit().await;
    wait_metric(&relay, "breakwater_smtp_sessions_active", 1.0).await;
    // The slot is free again (the permit is released right after the gauge).
    let deadline = Instant::now() + WAIT;
    let mut c4 = Client::connect(relay.smtp).await;
    for _ in 0..100 {
        if c4.greeting().matches("220") || Instant::now() > deadline {
            break;
        }
        c4 = Client::connect(relay.smtp).await;
    }
    assert!(c4.greeting().matches("220"), "{}", c4.greeting());
    c4.quit().await;
    c2.quit().await;
    relay.stop().await;
    backend.stop().await;
}
