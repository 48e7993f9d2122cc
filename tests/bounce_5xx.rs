//! A recipient refused with 5xx is bounced: the others are delivered in one
//! transaction, and an RFC 3464 multipart/report reaches the sender from `<>`
//! through `[bounce] relay`; the message then leaves the queue.

mod common;
use common::*;
use mail_parser::{MessageParser, MimeHeaders};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_is_reported_to_the_sender() {
    let backend = Backend::start().await;
    backend.set_rcpt_reply("c@", "550 5.1.1 no such user");
    let bounces = Backend::start().await;
    let extra = format!("[bounce]\nrelay = \"{}\"\n", bounces.addr());
    let mut relay = Relay::start(&[backend.addr()], &extra).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message(
            "sender@client.test",
            &["a@example.com", "b@example.com", "c@example.com"],
            b"Subject: order 42\r\nFrom: sender@client.test\r\n\r\nsecret body\r\n",
        )
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;

    // a and b: one transaction with both recipients; c never accepted.
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["a@example.com", "b@example.com"]);

    // The DSN: from the null sender to the envelope sender.
    let dsn = bounces.wait_for(1, WAIT).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, ["sender@client.test"]);
    let msg = MessageParser::default()
        .parse(&dsn[0].data)
        .expect("DSN parses as a message");
    let ct = msg.content_type().expect("DSN has a Content-Type");
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("report")),
        "{}",
        dsn[0].data_str()
    );
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let part_text = |ctype: &str, subtype: &str| {
        msg.parts
            .iter()
            .find(|p| {
                p.content_type()
                    .is_some_and(|t| t.ctype() == ctype && t.subtype() == Some(subtype))
            })
            .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
            .unwrap_or_else(|| panic!("no {ctype}/{subtype} part in\n{}", dsn[0].data_str()))
    };
    let status = part_text("message", "delivery-status");
    for want in [
        "Final-Recipient: rfc822; c@example.com",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
    ] {
        assert!(status.contains(want), "missing {want:?} in\n{status}");
    }
    for delivered in ["a@example.com", "b@example.com"] {
        assert!(
            !status.contains(delivered),
            "{delivered} reported\n{status}"
        );
    }
    let returned = part_text("text", "rfc822-headers");
    assert!(returned.contains("Subject: order 42"), "{returned}");
    assert!(!dsn[0].data_str().contains("secret body"), "headers only");

    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 1.0);
    let depth = queue_depth_settles(&relay, WAIT).await;
    assert_eq!(depth, 0.0, "message and DSN leave the queue");
    assert_eq!(bounces.count(), 1, "exactly one DSN");
    assert_eq!(backend.count(), 1);
    relay.stop().await;
}

/// Polls the queue depth (bounded in time and count) until it is 0; returns the last value.
async fn queue_depth_settles(relay: &Relay, timeout: Duration) -> f64 {
    let deadline = std::time::Instant::now() + timeout;
    for _ in 0..10_000 {
        let depth = relay.metric("breakwater_queue_depth").await;
        if depth == 0.0 || std::time::Instant::now() >= deadline {
            return depth;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    relay.metric("breakwater_queue_depth").await
}
