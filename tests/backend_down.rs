//! While the backend is down every message still gets 250; once it comes up,
//! each one is delivered exactly once and the queue drains to zero.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

const N: usize = 20;

/// Sum of every series of `name` whose labels contain `label` (now, blocking
/// this worker only: `block_in_place` hands its other tasks to another thread).
fn metric_sum(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(http(admin, "GET", "/metrics"))
    });
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_while_backend_down_are_delivered_once_it_is_up() {
    // Nothing listens here yet: every delivery attempt is refused and deferred.
    let backend_addr = loopback(free_port());
    // retry = 1h: the messages deferred during the outage can only arrive within
    // this test's bounds because the relay makes them all due the moment the
    // health probes see the backend up again (no flush, no retry timer).
    let mut relay = Relay::start(&[backend_addr], "[delivery]\nretry = [\"1h\"]\n").await;
    let admin = relay.admin;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..N {
        let data =
            format!("Subject: down-{i}\r\nMessage-ID: <down-{i}@client.test>\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "message {i}: {reply}"
        );
    }
    c.quit().await;

    let queued = wait_until_async(Duration::from_secs(5), || {
        metric_sum(admin, "breakwater_queue_depth", "") == N as f64
    })
    .await;
    assert!(queued, "queue depth never reached {N}");
    // The relay has tried (and failed) before the backend exists.
    let tried = wait_until_async(Duration::from_secs(5), || {
        metric_sum(
            admin,
            "breakwater_delivery_attempts_total",
            "result=\"deferred\"",
        ) >= 1.0
    })
    .await;
    assert!(tried, "no deferred attempt while the backend was down");
    assert_eq!(
        relay.metric("breakwater_messages_delivered_total").await,
        0.0
    );

    let backend = Backend::start_on(backend_addr)
        .await
        .expect("start backend");
    let got = backend.wait_for(N, Duration::from_secs(20)).await;

    let seen = count_by_header(&got, "Subject");
    for i in 0..N {
        assert_eq!(
            seen.get(&format!("down-{i}")),
            Some(&1),
            "down-{i}: {seen:?}"
        );
    }

    let drained = wait_until_async(Duration::from_secs(10), || {
        metric_sum(admin, "breakwater_queue_depth", "") == 0.0
    })
    .await;
    assert!(drained, "queue depth did not return to 0");
    assert_eq!(
        relay.metric("breakwater_messages_delivered_total").await,
        N as f64
    );
    // Delivered and removed: nothing is left to arrive a second time.
    assert_eq!(backend.count(), N, "a message was delivered twice");
    relay.stop().await;
}
