//! `delivery.delay_warning`: a message still queued after it gets one
//! "delayed" DSN (RFC 3464 `Action: delayed`) even while no backend can take
//! mail, stays queued, and is delivered when the backend returns, with no
//! failure notice after it. NOTIFY without DELAY gets no warning.

mod common;
use common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_gets_one_delay_warning_then_is_delivered() {
    let backend_addr = loopback(free_port()); // nothing listens: an outage
    let bounces = Backend::start().await;
    let extra = format!(
        "[delivery]\nretry = [\"1h\"]\ndelay_warning = \"1s\"\nshutdown_grace = \"2s\"\n\
         [bounce]\nrelay = \"{}\"\n",
        bounces.addr()
    );
    let mut relay = Relay::start(&[backend_addr], &extra).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let accepted = Instant::now();
    let reply = c
        .send_message(
            "sender@client.test",
            &["a@example.com"],
            b"Subject: late\r\n\r\nx\r\n",
        )
        .await;
    assert!(reply.matches("250"), "{reply}");
    // The same during the outage, but the sender only wants to hear of failure.
    c.cmd("MAIL FROM:<quiet@client.test>", "250").await;
    c.cmd("RCPT TO:<b@example.com> NOTIFY=FAILURE", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: hush\r\n\r\nx\r\n.\r\n").await;
    assert!(c.read_reply().await.matches("250"));
    c.quit().await;

    let dsn = bounces.wait_for(1, WAIT).await;
    assert!(
        accepted.elapsed() >= Duration::from_secs(1),
        "warned before delay_warning"
    );
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, ["sender@client.test"]);
    let text = dsn[0].data_str();
    for want in [
        "Action: delayed",
        "Final-Recipient: rfc822; a@example.com",
        "Subject: late",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 0.0);
    // The warning itself leaves the journal just after its delivery.
    assert!(
        wait_metric(&relay, "breakwater_queue_depth", 2.0, WAIT).await,
        "both still queued"
    );

    // The backend returns: both are delivered; nothing more reaches the sender.
    let backend = Backend::start_on(backend_addr)
        .await
        .expect("backend on its port");
    let got = backend.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert!(wait_metric(&relay, "breakwater_queue_depth", 0.0, WAIT).await);
    assert_eq!(
        bounces.count(),
        1,
        "one warning, no other notice: {:?}",
        bounces.messages().len()
    );
    assert!(
        !bounces
            .messages()
            .iter()
            .any(|m| m.rcpts == ["quiet@client.test"])
    );
    relay.stop().await;
}
