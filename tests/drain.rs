//! Controlled drain: a backlog built during an outage reaches the returning
//! backend within `delivery.concurrency` and `delivery.drain_rate`, and 421s
//! during the drain shrink the number of parallel deliveries.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const UP: &str = "breakwater_backend_up{backend=\"b0\"}";

/// A relay whose only backend is down (nothing listens), holding `n` messages,
/// and that has noticed the outage (so delivery resumes from a pause).
async fn backlog(n: usize, delivery: &str) -> (Relay, SocketAddr) {
    let addr = loopback(free_port());
    let relay = Relay::start(&[addr], delivery).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..n {
        let data = format!("Subject: drain-{i}\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "drain-{i}: {reply}"
        );
    }
    c.quit().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.metric(UP).await != 0.0 {
        assert!(Instant::now() < deadline, "the relay never saw b0 down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (relay, addr)
}

/// Most deliveries seen within any span of at most 1 s of the samples.
fn busiest_second(samples: &[(Instant, usize)]) -> usize {
    let (mut j, mut best) = (0, 0);
    for (t, n) in samples {
        while t.duration_since(samples[j].0) > Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(n - samples[j].1);
    }
    best
}

fn data_commands(backend: &Backend) -> usize {
    let is_data = |c: &String| {
        ["DATA", "BDAT"]
            .iter()
            .any(|v| c.to_ascii_uppercase().starts_with(v))
    };
    backend.commands().iter().filter(|c| is_data(c)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_drains_within_concurrency_and_rate() {
    const N: usize = 60;
    let cfg =
        "[delivery]\nretry = [\"1s\"]\nconcurrency = 4\ndrain_rate = 10\nshutdown_grace = \"2s\"\n";
    let (mut relay, addr) = backlog(N, cfg).await;
    let backend = Backend::start_on(addr).await.expect("start backend");
    backend.set_data_delay(Duration::from_millis(20));

    let deadline = Instant::now() + Duration::from_secs(40);
    let mut samples = vec![(Instant::now(), 0)];
    for _ in 0..3000 {
        let n = backend.count();
        samples.push((Instant::now(), n));
        if n >= N || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.count(), N, "not all of the backlog arrived");
    // One extra connection: the health probe (connect, EHLO, QUIT every 200 ms).
    let peak = backend.max_concurrent_connections();
    assert!(
        peak <= 4 + 1,
        "{peak} connections at once, concurrency is 4"
    );
    // 10/s plus the token bucket's initial allowance and latency jitter.
    let busiest = busiest_second(&samples);
    assert!(
        busiest <= 10 + 2,
        "{busiest} deliveries within one second, drain_rate is 10"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_during_drain_reduce_parallelism() {
    const N: usize = 30;
    let cfg = "[delivery]\nretry = [\"1s\"]\nconcurrency = 8\nshutdown_grace = \"2s\"\n";
    let (mut relay, addr) = backlog(N, cfg).await;
    let backend = Backend::start_on(addr).await.expect("start backend");
    // Each reply takes 200 ms, so the window can only grow a step per 200 ms.
    backend.set_data_delay(Duration::from_millis(200));
    backend.set_data_reply("421 4.3.2 slow down");
    let refused = wait_until_async(Duration::from_secs(15), || data_commands(&backend) >= 5).await;
    assert!(
        refused,
        "only {} DATA/BDAT commands",
        data_commands(&backend)
    );
    backend.set_data_reply("250 2.0.0 Ok");

    // Right after the 421s the relay runs far fewer than 8 deliveries at once.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_millis(300);
    for _ in 0..100 {
        peak = peak.max(backend.active_connections());
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        peak < 8,
        "{peak} connections right after the 421s (concurrency 8)"
    );

    backend.wait_for(N, Duration::from_secs(30)).await;
    let attempts = data_commands(&backend);
    assert!(
        attempts > N,
        "421s were not retried: {attempts} DATA/BDAT for {N} messages"
    );
    assert!(
        backend.max_concurrent_connections() <= 8 + 1,
        "above concurrency 8 (+1 probe)"
    );
    relay.stop().await;
}
