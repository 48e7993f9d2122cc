//! A backend that flaps (down/up every 500 ms, 8 cycles) while 5 clients send 200
//! messages: once it stays up, every acknowledged message is delivered, none lost.

mod common;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

const N: usize = 200;
const CLIENTS: usize = 5;
const CYCLES: usize = 8;
const CONCURRENCY: usize = 4;
const PHASE: Duration = Duration::from_millis(500);

/// Sends messages `k, k + CLIENTS, ...`; returns the Message-IDs acknowledged with 250.
async fn send(smtp: SocketAddr, k: usize) -> Vec<String> {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    let mut acked = Vec::new();
    for i in (k..N).step_by(CLIENTS) {
        let id = format!("<flap-{i}@client.test>");
        let data = format!("Subject: flap {i}\r\nMessage-ID: {id}\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "message {i}: {reply}"
        );
        acked.push(id);
    }
    c.quit().await;
    acked
}

/// How often each Message-ID reached the backend.
fn id_counts(backend: &Backend) -> HashMap<String, usize> {
    count_by_header(&backend.messages(), "Message-ID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_backend_loses_nothing() {
    let mut backend = Backend::start().await;
    // 30 ms per message, 4 at a time: at most ~133/s, so delivery spans several flaps.
    backend.set_data_delay(Duration::from_millis(30));
    // 100 ms probes (fast probes too): the circuit can follow a 500 ms flap.
    let extra = format!(
        "[delivery]\nretry = [\"1s\"]\nconcurrency = {CONCURRENCY}\nshutdown_grace = \"2s\"\n\
         [health]\ninterval = \"100ms\"\ntimeout = \"2s\"\n"
    );
    let mut relay = Relay::start(&[backend.addr()], &extra).await;
    let senders: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(send(relay.smtp, k)))
        .collect();

    // The flapping: a fault schedule, not a synchronisation.
    let mut tick = tokio::time::interval(PHASE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut at_first_stop = None;
    for _ in 0..CYCLES {
        tick.tick().await;
        backend.stop().await;
        at_first_stop.get_or_insert(backend.count());
        tick.tick().await;
        backend.restart().await.expect("restart backend");
    }
    let at_first_stop = at_first_stop.expect("flapped");
    assert!(
        at_first_stop < N,
        "all delivered before the first flap: the test proves nothing"
    );

    let mut acked = Vec::new();
    for s in senders {
        let ids = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("senders finish");
        acked.extend(ids.expect("sender task"));
    }
    assert_eq!(acked.len(), N, "every message acknowledged");

    // Backend left up: every acknowledged message arrives at least once.
    let complete = wait_until_async(Duration::from_secs(30), || {
        let seen = id_counts(&backend);
        acked.iter().all(|id| seen.contains_key(id))
    })
    .await;
    let seen = id_counts(&backend);
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        complete,
        "{} lost after flapping: {missing:?}",
        missing.len()
    );
    // A duplicate needs a stop between the backend recording a message and the
    // relay reading its 250: at most `concurrency` transactions per stop.
    let dupes: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        dupes <= CYCLES * CONCURRENCY,
        "{dupes} duplicates: {seen:?}"
    );
    let drained = wait_metric(
        &relay,
        "breakwater_queue_depth",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(drained, "queue not empty after everything arrived");
    let up = wait_metric(
        &relay,
        "breakwater_backend_up{backend=\"b0\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(up, "backend left up but not marked up");
    relay.stop().await;
}
