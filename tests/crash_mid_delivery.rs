//! `kill -9` while deliveries are in flight: after a restart every acknowledged
//! message arrives, and at most the in-flight ones (<= delivery.concurrency)
//! arrive twice.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 200;
const CLIENTS: usize = 8;
const CONCURRENCY: usize = 4;

async fn send_batch(smtp: std::net::SocketAddr, client: usize) -> usize {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    let mut acked = 0;
    for i in (client..N).step_by(CLIENTS) {
        let data =
            format!("Subject: mid {i}\r\nMessage-ID: <mid-{i}@client.test>\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "message {i}: {reply}"
        );
        acked += 1;
    }
    c.quit().await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_resends_at_most_the_in_flight_messages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    // Slow backend: 50 ms per message and 4 at a time, so 200 take >= 2.5 s.
    backend.set_data_delay(Duration::from_millis(50));
    let delivery = format!(
        "[delivery]\nretry = [\"1s\"]\nconcurrency = {CONCURRENCY}\nshutdown_grace = \"2s\"\n"
    );
    let mut relay = Daemon::start(tmp.path(), &[backend.addr()], "", &delivery).await;

    let senders: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(send_batch(relay.smtp, k)))
        .collect();
    let mut acked = 0;
    for s in senders {
        acked += s.await.expect("sender task");
    }
    assert_eq!(acked, N, "every message acknowledged before the crash");

    let under_way = wait_until_async(Duration::from_secs(20), || backend.count() >= 20).await;
    assert!(under_way, "delivery never got going: {}", relay.log());
    relay.kill9();
    let at_kill = backend.count();
    assert!(
        at_kill < N,
        "delivery finished before the kill ({at_kill}); slow the backend down"
    );

    let _relay = Daemon::start(tmp.path(), &[backend.addr()], "", &delivery).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    let complete = wait_until_async(Duration::from_secs(30), || {
        copies = count_by_header(&backend.messages(), "Message-ID");
        copies.len() == N
    })
    .await;
    let missing: Vec<usize> = (0..N)
        .filter(|i| !copies.contains_key(&format!("<mid-{i}@client.test>")))
        .collect();
    assert!(
        complete && missing.is_empty(),
        "lost after kill -9: {missing:?}"
    );

    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    println!("kill at {at_kill} delivered of {N}: {duplicates} duplicate(s) after restart");
    // A message is re-sent after a restart only if the backend took it but its
    // removal from the journal was not yet committed, i.e. its attempt was still
    // in flight at the kill. The dispatcher never runs more than `concurrency`
    // attempts, each for one message, so that bounds the duplicates. No extra
    // margin is needed: the backend records a message before it replies, and
    // one killed attempt cannot deliver the same message twice.
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates > concurrency {CONCURRENCY}: {copies:?}"
    );
}
