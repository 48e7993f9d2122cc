//! Admin holds: a whole-queue hold keeps accepted mail undelivered, survives a
//! restart and is lifted by release; a per-message hold keeps back just that
//! message while the others are delivered; unknown ids get 404.

mod common;
use common::*;
use std::time::{Duration, Instant};

const ACTIVE: &str = "breakwater_quiet_time_active";
/// Longer than one retry step (1 s, +-15 %): long enough to see a wrong delivery.
const LOOK: Duration = Duration::from_millis(1500);

/// Sends one message per subject; returns the queue ids from the 250 replies.
async fn send(relay: &Relay, subjects: &[String]) -> Vec<String> {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut ids = Vec::new();
    for s in subjects {
        let data = format!("Subject: {s}\r\n\r\nbody\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(reply.matches("250 2.0.0 Ok: queued as"), "{s}: {reply}");
        ids.push(
            reply
                .first_line()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    c.quit().await;
    ids
}

/// True if the backend still has exactly `n` messages after `LOOK` (polled).
async fn stays_at(backend: &Backend, n: usize) -> bool {
    !wait_until_async(LOOK, || backend.count() != n).await
}

fn subjects(backend: &Backend) -> Vec<String> {
    backend
        .messages()
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_hold_survives_restart_and_release_delivers_all() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start_in(dir.path(), &[backend.addr()], "").await;
    let (code, body) = relay.http("POST", "/api/queue/hold").await;
    assert_eq!(code, 200, "hold: {body}");

    let names: Vec<String> = (0..5).map(|i| format!("held-{i}")).collect();
    send(&relay, &names).await;
    assert_eq!(
        relay.metric(ACTIVE).await,
        1.0,
        "a hold counts as quiet time"
    );
    assert!(
        stays_at(&backend, 0).await,
        "delivered while the queue is held"
    );

    relay.stop().await;
    let mut relay = Relay::start_in(dir.path(), &[backend.addr()], "").await;
    assert_eq!(relay.metric(ACTIVE).await, 1.0, "hold lost in the restart");
    assert!(
        stays_at(&backend, 0).await,
        "delivered after restart though held"
    );

    let (code, body) = relay.http("POST", "/api/queue/release").await;
    assert_eq!(code, 200, "release: {body}");
    backend.wait_for(5, Duration::from_secs(10)).await;
    let mut got = subjects(&backend);
    got.sort();
    assert_eq!(got, names, "each message exactly once");
    assert_eq!(
        relay.metric(ACTIVE).await,
        0.0,
        "released queue still counts as quiet"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_hold_keeps_back_only_that_message() {
    // Nothing listens here yet: the messages wait in the queue.
    let addr = loopback(free_port());
    let mut relay = Relay::start(&[addr], "").await;
    let names: Vec<String> = (1..=3).map(|i| format!("msg-{i}")).collect();
    let ids = send(&relay, &names).await;

    // The second message may be in an attempt right now (409): ask again.
    let hold = format!("/api/queue/hold/{}", ids[1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answer = (0, String::new());
    for _ in 0..100 {
        answer = relay.http("POST", &hold).await;
        if answer.0 != 409 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer.0, 200, "hold {}: {}", ids[1], answer.1);

    let backend = Backend::start_on(addr).await.expect("start backend");
    backend.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        stays_at(&backend, 2).await,
        "held message delivered: {:?}",
        subjects(&backend)
    );
    let mut got = subjects(&backend);
    got.sort();
    assert_eq!(got, ["msg-1", "msg-3"]);

    let (code, body) = relay
        .http("POST", &format!("/api/queue/release/{}", ids[1]))
        .await;
    assert_eq!(code, 200, "release: {body}");
    backend.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(subjects(&backend)[2], "msg-2");

    // Gone (delivered) or never queued: 404.
    for id in [ids[0].as_str(), "00000000DEADBEEF"] {
        for verb in ["hold", "release"] {
            let (code, body) = relay.http("POST", &format!("/api/queue/{verb}/{id}")).await;
            assert_eq!(code, 404, "{verb} {id}: {body}");
        }
    }
    assert!(stays_at(&backend, 3).await, "a message was delivered twice");
    relay.stop().await;
}
