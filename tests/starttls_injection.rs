//! Proves that commands pipelined behind STARTTLS in clear text are thrown
//! away, never executed inside TLS (RFC 3207 4.2; CVE-2011-0411 class), and
//! that a failed handshake leaves the relay healthy.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_injected_before_the_handshake_are_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::create(tmp.path(), "relay.test");
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], &cert.config()).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    // A man in the middle appends a transaction to the client's STARTTLS.
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n")
        .await;
    let r = c.read_reply().await;
    assert!(r.matches("220"), "{r}");
    c.handshake(&cert.connector(), "relay.test").await.unwrap();
    // The first reply inside TLS answers our EHLO, not the injected MAIL.
    let ehlo = c.ehlo("client.test").await;
    assert!(ehlo.lines[0].contains("greets client.test"), "{ehlo}");
    c.cmd("RCPT TO:<a@example.com>", "503 5.5.1").await; // no MAIL was executed
    c.cmd("DATA", "503 5.5.1").await;
    c.quit().await;

    // A client that says STARTTLS and then talks nonsense instead of TLS.
    let mut bad = Client::connect(relay.smtp).await;
    bad.ehlo("client.test").await;
    bad.cmd("STARTTLS", "220").await;
    bad.send_raw(b"this is not a ClientHello\r\n\r\n").await;
    assert!(
        bad.is_closed().await,
        "a failed handshake closes the connection"
    );
    assert_eq!(
        relay
            .metric("breakwater_smtp_rejections_total{reason=\"tls\"}")
            .await,
        1.0
    );

    let mut ok = Client::connect(relay.smtp).await;
    ok.ehlo("client.test").await;
    ok.starttls(&cert.connector(), "relay.test").await.unwrap();
    ok.ehlo("client.test").await;
    let r = ok
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: after\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.matches("250"), "{r}");
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert!(!backend.commands().iter().any(|l| l.contains("attacker")));
    ok.quit().await;
    relay.stop().await;
    backend.stop().await;
}
