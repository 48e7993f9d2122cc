//! Proves `relay.verify_recipients` against a live backend: an unknown user
//! gets `550 5.1.1` at RCPT, answers are cached (one probe per address, shared
//! by concurrent RCPTs), a slow backend never holds RCPT past `health.timeout`,
//! and while the backend is down cached answers apply and uncached recipients
//! are accepted and queued (continuity beats strictness).

mod common;
use common::*;
use std::time::{Duration, Instant};

/// `config_text` with `relay.verify_recipients` on and a 1 s probe timeout.
fn config(dir: &std::path::Path, backend: std::net::SocketAddr) -> String {
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n";
    config_text(dir, &[backend], health).replace(
        "domains = [\"example.com\"]\n",
        "domains = [\"example.com\"]\nverify_recipients = true\n",
    )
}

fn probes_for(backend: &Backend, who: &str) -> usize {
    let line = format!("RCPT TO:<{who}>");
    backend
        .commands()
        .iter()
        .filter(|l| l.starts_with(&line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_refused_from_the_backends_answer() {
    let mut backend = Backend::start().await;
    backend.set_rcpt_reply("nobody", "550 5.1.1 <nobody@example.com>: user unknown");
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_with_text(tmp.path(), &config(tmp.path(), backend.addr())).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1").await;
    c.cmd("RCPT TO:<alice@example.com>", "250").await;
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1").await; // cached
    assert_eq!(probes_for(&backend, "nobody@example.com"), 1);
    assert_eq!(probes_for(&backend, "alice@example.com"), 1);
    c.cmd("RSET", "250").await;
    assert_eq!(
        relay
            .metric("breakwater_smtp_rejections_total{reason=\"unknown_user\"}")
            .await,
        2.0
    );

    // Concurrent RCPTs for one new address share one (slow) probe.
    backend.set_rcpt_delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = relay.smtp;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            c.ehlo("client.test").await;
            c.cmd("MAIL FROM:<s@client.test>", "250").await;
            c.cmd("RCPT TO:<carol@example.com>", "250").await;
            c.quit().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        probes_for(&backend, "carol@example.com"),
        1,
        "one shared probe"
    );

    // A backend slower than health.timeout: RCPT is answered (accepted) in time.
    backend.set_rcpt_delay(Duration::from_secs(3));
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    let started = Instant::now();
    c.cmd("RCPT TO:<dave@example.com>", "250").await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    c.cmd("RSET", "250").await;
    backend.set_rcpt_delay(Duration::ZERO);

    // Backend down: cached answers apply, new recipients are queued.
    backend.stop().await;
    assert!(
        wait_metric(
            &relay,
            "breakwater_backend_up{backend=\"b0\"}",
            0.0,
            Duration::from_secs(10)
        )
        .await
    );
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1").await;
    c.cmd("RCPT TO:<erin@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: during the outage\r\n\r\nx\r\n.\r\n")
        .await;
    assert!(c.read_reply().await.matches("250"));
    backend.restart().await.unwrap();
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpts, ["erin@example.com"]);
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
