//! Proves the STARTTLS certificate is re-read on SIGHUP by the running binary:
//! the next handshake presents the new certificate, a session encrypted before
//! the reload goes on, a broken file is refused with the old certificate kept,
//! and SIGHUP never stops the relay.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

/// True if a fresh STARTTLS handshake succeeds when trusting only `cert`.
async fn handshake_trusting(relay: std::net::SocketAddr, cert: &TestCert) -> bool {
    let mut c = Client::connect(relay).await;
    c.ehlo("client.test").await;
    c.starttls(&cert.connector(), "relay.test").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_the_next_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let old = TestCert::create(tmp.path(), "relay.test");
    let mut backend = Backend::start().await;
    let mut relay = Daemon::start(tmp.path(), &[backend.addr()], "", &old.config()).await;
    assert!(handshake_trusting(relay.smtp, &old).await);

    // A session under TLS with the old certificate, open across the reload.
    let mut open = Client::connect(relay.smtp).await;
    open.ehlo("client.test").await;
    open.starttls(&old.connector(), "relay.test").await.unwrap();
    open.ehlo("client.test").await;

    let newdir = tempfile::tempdir().unwrap();
    let new = TestCert::create(newdir.path(), "relay.test");
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    relay.hup();
    let mut swapped = false;
    for _ in 0..50 {
        if handshake_trusting(relay.smtp, &new).await {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        swapped,
        "new certificate not used after SIGHUP:\n{}",
        relay.log()
    );
    assert!(!handshake_trusting(relay.smtp, &old).await);

    let r = open
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: across\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.matches("250"), "{r}");
    open.quit().await;

    // A broken certificate file: refused, the current one stays.
    std::fs::write(&old.cert, "garbage").unwrap();
    relay.hup();
    let refused = wait_until_async(Duration::from_secs(5), || {
        relay.log().contains("config reload refused") && relay.log().contains("smtp.tls")
    })
    .await;
    assert!(refused, "{}", relay.log());
    assert!(handshake_trusting(relay.smtp, &new).await);
    assert!(relay.is_running(), "SIGHUP must not stop the relay");
    backend.wait_for(1, Duration::from_secs(10)).await;
    relay.term();
    assert!(relay.wait_exit(Duration::from_secs(15)).await.is_some());
    backend.stop().await;
}
