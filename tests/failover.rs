//! Failover: when the preferred backend b0 dies under load, delivery moves to b1
//! and no acknowledged message is lost; when b0 returns it takes the mail again.

mod common;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const N: usize = 150;
const CLIENTS: usize = 4;
const CONCURRENCY: usize = 4;
const B0_UP: &str = "breakwater_backend_up{backend=\"b0\"}";
const DEPTH: &str = "breakwater_queue_depth";

/// How often each Message-ID occurs in `msgs`.
fn id_counts(msgs: &[Received]) -> HashMap<String, usize> {
    count_by_header(msgs, "Message-ID")
}

async fn send(smtp: SocketAddr, tag: &'static str, ids: Vec<usize>) {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    for i in ids {
        let data = format!(
            "Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@client.test>\r\n\r\nbody {i}\r\n"
        );
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "{tag} {i}: {reply}"
        );
    }
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_backend_dies_under_load_then_takes_over_again() {
    let mut b0 = Backend::start().await;
    let b1 = Backend::start().await;
    // 40 ms per message, 4 at a time: b0 needs >= 1.5 s for all 150, so the stop lands mid-stream.
    b0.set_data_delay(Duration::from_millis(40));
    let delivery = format!(
        "[delivery]\nretry = [\"1s\"]\nconcurrency = {CONCURRENCY}\nshutdown_grace = \"2s\"\n"
    );
    let mut relay = Relay::start(&[b0.addr(), b1.addr()], &delivery).await;

    let senders: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(send(relay.smtp, "fo", (k..N).step_by(CLIENTS).collect())))
        .collect();
    assert!(
        wait_until_async(Duration::from_secs(20), || b0.count() >= 25).await,
        "b0 never got mail"
    );
    assert_eq!(b1.count(), 0, "b1 got mail while b0 was healthy");
    b0.stop().await;
    let at_stop = b0.count();
    assert!(
        at_stop < N,
        "b0 had all mail before the stop: proves nothing"
    );
    for s in senders {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("senders finish")
            .expect("sender task");
    }
    assert!(
        wait_metric(&relay, B0_UP, 0.0, Duration::from_secs(5)).await,
        "b0 never marked down"
    );

    // Nothing lost: every Message-ID reaches b0 (before the stop) or b1 (after).
    let want: Vec<String> = (0..N).map(|i| format!("<fo-{i}@client.test>")).collect();
    let union = || {
        let mut all = b0.messages();
        all.extend(b1.messages());
        id_counts(&all)
    };
    let complete = wait_until_async(Duration::from_secs(30), || {
        let seen = union();
        want.iter().all(|w| seen.contains_key(w))
    })
    .await;
    let seen = union();
    let missing: Vec<&String> = want.iter().filter(|w| !seen.contains_key(*w)).collect();
    assert!(
        complete,
        "lost after failover ({} on b0 at stop, {} on b1): {missing:?}",
        at_stop,
        b1.count()
    );
    assert!(b1.count() > 0, "b1 never took over");
    // A duplicate needs b0 to have recorded a message whose 250 the stop cut off:
    // only transactions in flight on b0 at that moment, at most `concurrency`.
    let dupes: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        dupes <= CONCURRENCY,
        "{dupes} duplicates (> {CONCURRENCY} in flight): {seen:?}"
    );
    let drained = wait_metric(&relay, DEPTH, 0.0, Duration::from_secs(10)).await;
    assert!(drained, "queue not empty");

    // b0 returns: up within one probe interval + (rise - 1) fast probes + slack.
    b0.reset_script();
    b0.restart().await.expect("restart b0");
    let restarted = Instant::now();
    let up = wait_metric(&relay, B0_UP, 1.0, Duration::from_secs(3)).await;
    assert!(up, "b0 not up {:?} after its restart", restarted.elapsed());
    let (b0_before, b1_before) = (b0.count(), b1.count());
    send(relay.smtp, "back", (0..20).collect()).await;
    let back = wait_until_async(Duration::from_secs(10), || b0.count() >= b0_before + 20).await;
    assert!(back, "b0 got {} of 20 new messages", b0.count() - b0_before);
    let fresh = id_counts(&b0.messages()[b0_before..]);
    assert!(
        (0..20).all(|i| fresh.get(&format!("<back-{i}@client.test>")) == Some(&1)),
        "{fresh:?}"
    );
    assert_eq!(b1.count(), b1_before, "new mail went to b1 while b0 is up");
    let drained = wait_metric(&relay, DEPTH, 0.0, Duration::from_secs(10)).await;
    assert!(drained, "queue not empty");
    relay.stop().await;
}
