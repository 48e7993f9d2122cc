//! A bounce is never bounced: a failed message from the null sender is dropped
//! without a DSN, and a DSN the sender's server refuses creates no DSN-of-a-DSN;
//! both leave the queue.

mod common;
use common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const DEPTH: &str = "breakwater_queue_depth";

/// Polls `metric` (bounded in time and count) until it equals `want`; returns the last value.
async fn metric_settles(relay: &Relay, metric: &str, want: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    let mut v = relay.metric(metric).await;
    for _ in 0..10_000 {
        if v == want || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        v = relay.metric(metric).await;
    }
    v
}

/// A backend refusing c@, a bounce backend, and a relay sending DSNs to it.
async fn setup() -> (Backend, Backend, Relay) {
    let backend = Backend::start().await;
    backend.set_rcpt_reply("c@", "550 5.1.1 no such user");
    let bounces = Backend::start().await;
    let extra = format!("[bounce]\nrelay = \"{}\"\n", bounces.addr());
    let relay = Relay::start(&[backend.addr()], &extra).await;
    (backend, bounces, relay)
}

async fn send(relay: &Relay, from: &str, rcpt: &str) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message(from, &[rcpt], b"Subject: t\r\n\r\nbody\r\n")
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_sender_failure_is_dropped_without_dsn() {
    let (backend, bounces, mut relay) = setup().await;
    send(&relay, "", "c@example.com").await;
    // Barrier: a normal sender's failure, queued after the null-sender one.
    send(&relay, "barrier@client.test", "c@example.com").await;

    let dsn = bounces.wait_for(1, WAIT).await;
    assert_eq!(dsn[0].rcpts, ["barrier@client.test"]);
    // Depth 0 means both originals were settled and every DSN they queued was
    // delivered: a DSN for the null-sender message would have arrived by now.
    assert_eq!(metric_settles(&relay, DEPTH, 0.0).await, 0.0);
    let got = bounces.messages();
    assert_eq!(got.len(), 1, "only the barrier's DSN: {got:?}");
    assert!(
        bounces.commands().iter().all(|l| !l.contains("RCPT TO:<>")),
        "{:?}",
        bounces.commands()
    );
    assert!(
        backend
            .commands()
            .iter()
            .any(|l| l.starts_with("MAIL FROM:<>")),
        "the null-sender message was attempted: {:?}",
        backend.commands()
    );
    assert_eq!(backend.count(), 0, "c@ never accepted");
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 1.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_dsn_is_not_bounced_again() {
    let (_backend, bounces, mut relay) = setup().await;
    bounces.set_rcpt_reply("sender@", "550 5.1.1 gone");
    send(&relay, "sender@client.test", "c@example.com").await;

    // The DSN is offered once and refused at RCPT.
    let offered = wait_until_async(WAIT, || {
        bounces
            .commands()
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("RCPT TO:<SENDER@"))
    })
    .await;
    assert!(offered, "DSN offered: {:?}", bounces.commands());
    // Depth 0: the refused DSN is settled and queued nothing further.
    assert_eq!(metric_settles(&relay, DEPTH, 0.0).await, 0.0);
    let mails: Vec<String> = bounces
        .commands()
        .into_iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("MAIL FROM:"))
        .collect();
    assert_eq!(
        mails.len(),
        1,
        "one DSN attempt, no DSN-of-a-DSN: {mails:?}"
    );
    assert!(mails[0].to_ascii_uppercase().starts_with("MAIL FROM:<>"));
    assert_eq!(bounces.count(), 0, "nothing accepted by the bounce backend");
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 1.0);
    relay.stop().await;
}
