//! Proves inbound STARTTLS with a rustls client: offered only when configured
//! and not again inside TLS, the session starts over at EHLO, the message
//! reaches the backend with an `ESMTPS` `Received:` header naming the TLS
//! version and cipher, the session is counted by version, and clear text stays
//! allowed (RFC 3207: a public MX must not require TLS).

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_delivers_with_esmtps_and_clear_text_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::create(tmp.path(), "relay.test");
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], &cert.config()).await;

    let mut c = Client::connect(relay.smtp).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(ehlo.has_capability("STARTTLS"), "{ehlo}");
    c.cmd("STARTTLS now", "501 5.5.4").await; // RFC 3207: no parameters
    c.starttls(&cert.connector(), "relay.test").await.unwrap();
    c.cmd("MAIL FROM:<s@client.test>", "503 5.5.1").await; // EHLO again first
    let ehlo = c.ehlo("client.test").await;
    assert!(
        !ehlo.has_capability("STARTTLS"),
        "offered again inside TLS:\n{ehlo}"
    );
    c.cmd("STARTTLS", "503 5.5.1").await;
    let r = c
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: tls\r\n\r\nsecret\r\n",
        )
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    c.quit().await;

    let got = backend.wait_for(1, WAIT).await;
    let text = got[0].data_str();
    assert!(
        text.contains("\r\n\t(using TLSv1.3 with cipher TLS13_"),
        "{text}"
    );
    assert!(text.contains("(breakwater) with ESMTPS id"), "{text}");
    assert!(text.ends_with("Subject: tls\r\n\r\nsecret\r\n"), "{text}");
    assert_eq!(
        relay
            .metric("breakwater_tls_sessions_total{version=\"TLSv1.3\"}")
            .await,
        1.0
    );

    // Clear text is still accepted on the same listener.
    let mut plain = Client::connect(relay.smtp).await;
    plain.ehlo("client.test").await;
    let r = plain
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: plain\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(2, WAIT).await;
    assert!(got[1].data_str().contains("(breakwater) with ESMTP id"));
    plain.quit().await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_starttls_is_not_offered() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(!ehlo.has_capability("STARTTLS"), "{ehlo}");
    c.cmd("STARTTLS", "502 5.5.1").await;
    c.cmd("NOOP", "250").await;
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
