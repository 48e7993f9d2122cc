//! Graceful shutdown: idle sessions get `421 4.3.0` and are closed, the journal
//! keeps what was acknowledged, and SIGTERM ends the binary with exit code 0.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

const MSG: &[u8] = b"Subject: before stop\r\nMessage-ID: <stop-1@client.test>\r\n\r\nkept\r\n";

async fn send_one(smtp: std::net::SocketAddr) {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message("s@client.test", &["a@example.com"], MSG)
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_idle_sessions_and_keeps_the_journal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backend_addr = loopback(free_port()); // down during the first run
    let mut relay = Relay::start_in(tmp.path(), &[backend_addr], "").await;
    send_one(relay.smtp).await;

    let mut idle = Client::connect(relay.smtp).await;
    idle.ehlo("idle.test").await;
    relay.stop().await;
    let reply = idle.read_reply().await;
    assert!(reply.matches("421 4.3.0"), "idle session got: {reply}");
    assert!(idle.is_closed().await, "connection closed after 421");
    assert!(
        Client::try_connect(relay.smtp).await.is_err(),
        "no longer listening after stop"
    );

    let backend = Backend::start_on(backend_addr)
        .await
        .expect("start backend");
    let mut relay = Relay::start_in(tmp.path(), &[backend_addr], "").await;
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].data.ends_with(MSG), "{}", got[0].data_str());
    relay.stop().await;
    assert_eq!(backend.count(), 1, "delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_restart_delivers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backend_addr = loopback(free_port()); // down during the first run
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", "").await;
    send_one(relay.smtp).await;
    let mut idle = Client::connect(relay.smtp).await;
    idle.ehlo("idle.test").await;

    relay.term();
    let status = relay.wait_exit(Duration::from_secs(5)).await;
    let log = relay.log();
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "SIGTERM: {status:?}\n{log}"
    );
    assert!(log.contains("journal closed"), "clean close logged:\n{log}");
    let reply = idle.read_reply().await;
    assert!(reply.matches("421 4.3.0"), "idle session got: {reply}");
    assert!(idle.is_closed().await);

    let backend = Backend::start_on(backend_addr)
        .await
        .expect("start backend");
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", "").await;
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].data.ends_with(MSG), "{}", got[0].data_str());
    // The restarted relay is fully usable, and stops cleanly again.
    send_one(relay.smtp).await;
    backend.wait_for(2, Duration::from_secs(10)).await;
    relay.term();
    let status = relay.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "second SIGTERM: {status:?}\n{}",
        relay.log()
    );
    assert_eq!(backend.count(), 2, "each message delivered exactly once");
}
