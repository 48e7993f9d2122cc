//! Proves `[smtp] max_connections_per_ip = 3`: a fourth concurrent connection
//! from 127.0.0.1 gets `421 4.7.0` as its greeting and is closed, counted under
//! `breakwater_smtp_rejections_total{reason="rate"}`, the three sessions go on
//! undisturbed, and once one of them ends a new connection is served.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nmax_connections_per_ip = 3\n";
const WAIT: Duration = Duration::from_secs(10);
const RATE: &str = "breakwater_smtp_rejections_total{reason=\"rate\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_connection_from_one_address_is_refused() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let c = Client::connect(relay.smtp).await;
        assert!(c.greeting().matches("220"), "{}", c.greeting());
        open.push(c);
    }
    let mut fourth = Client::connect(relay.smtp).await;
    assert!(
        fourth.greeting().matches("421 4.7.0"),
        "{}",
        fourth.greeting()
    );
    assert!(fourth.is_closed().await, "refused connection left open");
    assert_eq!(relay.counter(RATE).await, 1.0);
    assert_eq!(relay.metric("breakwater_smtp_sessions_active").await, 3.0);

    // A fifth try while all three are still open is refused the same way.
    let mut fifth = Client::connect(relay.smtp).await;
    assert!(
        fifth.greeting().matches("421 4.7.0"),
        "{}",
        fifth.greeting()
    );
    assert!(fifth.is_closed().await);
    assert_eq!(relay.counter(RATE).await, 2.0);

    // The three are undisturbed.
    for c in &mut open {
        c.ehlo("client.test").await;
        c.cmd("NOOP", "250").await;
    }
    let mut first = open.remove(0);
    first.quit().await;
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 2.0, WAIT).await);

    // The slot is given back right after the session ends: retry, bounded.
    let deadline = Instant::now() + WAIT;
    let mut next = Client::connect(relay.smtp).await;
    for _ in 0..100 {
        if next.greeting().matches("220") || Instant::now() > deadline {
            break;
        }
        next = Client::connect(relay.smtp).await;
    }
    assert!(next.greeting().matches("220"), "{}", next.greeting());
    next.ehlo("client.test").await;
    let body = b"Subject: slot\r\n\r\nserved again\r\n";
    let r = next
        .send_message("s@client.test", &["a@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(body));
    next.quit().await;
    for mut c in open {
        c.quit().await;
    }
    relay.stop().await;
    backend.stop().await;
}
