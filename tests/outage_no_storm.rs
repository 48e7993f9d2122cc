//! While the only backend is down the relay only probes it (no connection storm
//! from the backlog); when it returns, the backlog drains by itself within one
//! probe interval plus the rise time, without a flush.

mod common;
use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const N: usize = 30;
const B0_UP: &str = "breakwater_backend_up{backend=\"b0\"}";
/// `[health] interval` from the test config, and health::FAST_INTERVAL (the
/// re-probe spacing is at most this: the monitor uses min(FAST_INTERVAL, interval)).
const INTERVAL_MS: u128 = 200;
const FAST_MS: u128 = 500;
const RISE: u128 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_backend_gets_probes_not_a_storm_and_backlog_drains_when_it_returns() {
    // Reachable but refusing service: every connection (probe or delivery) is
    // counted at accept, answered 421 and closed.
    let backend = Backend::start().await;
    backend.set_greeting("421 4.3.2 down for maintenance");
    // Test defaults: [health] interval 200ms, fall = rise = 2; retry every 1s,
    // so a relay without a gate would try each of the 30 messages every second.
    let mut relay = Relay::start(&[backend.addr()], "").await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..N {
        let data = format!(
            "Subject: storm {i}\r\nMessage-ID: <storm-{i}@client.test>\r\n\r\nbody {i}\r\n"
        );
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "message {i}: {reply}"
        );
    }
    c.quit().await;
    assert!(
        wait_metric(&relay, B0_UP, 0.0, Duration::from_secs(5)).await,
        "backend never marked down"
    );

    // Observation window: count every connection the relay makes in ~2 s.
    let (before, started) = (backend.connections(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (made, window) = (
        backend.connections() - before,
        started.elapsed().as_millis(),
    );
    let probes = (window / INTERVAL_MS) as usize + 2;
    assert!(
        made <= probes,
        "{made} connections in {window} ms while down: more than {probes} probes explain"
    );
    assert!(
        made >= 2,
        "only {made} connections in {window} ms: the backend is not being probed"
    );
    assert_eq!(backend.count(), 0);
    assert_eq!(relay.metric("breakwater_queue_depth").await, N as f64);

    // The backend returns: up after one interval + (rise - 1) fast probes; the
    // backlog goes at once, not at each message's retry time, and with no flush.
    backend.set_greeting("220 backend.test ESMTP");
    let restored = Instant::now();
    let bound = Duration::from_millis((INTERVAL_MS + FAST_MS * (RISE - 1) + 1500) as u64);
    let first = wait_until_async(Duration::from_secs(10), || backend.count() >= 1).await;
    let took = restored.elapsed();
    assert!(
        first,
        "nothing delivered within 10 s of the backend's return"
    );
    assert!(
        took <= bound,
        "first message {took:?} after the backend returned (bound {bound:?})"
    );
    let got = backend.wait_for(N, Duration::from_secs(15)).await;
    let ids: HashSet<String> = got.iter().filter_map(|m| m.header("Message-ID")).collect();
    assert!(
        (0..N).all(|i| ids.contains(&format!("<storm-{i}@client.test>"))),
        "{ids:?}"
    );
    assert_eq!(got.len(), N, "a message was delivered twice");
    assert!(
        wait_metric(&relay, B0_UP, 1.0, Duration::from_secs(5)).await,
        "backend not marked up again"
    );
    let drained = wait_metric(
        &relay,
        "breakwater_queue_depth",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(drained, "queue not empty");
    relay.stop().await;
}
