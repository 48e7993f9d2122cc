//! A recipient still deferred after `delivery.max_queue_lifetime` is failed
//! at its next attempt with 4.4.7 and bounced to the sender; the backend that
//! kept answering 451 never received the message.

mod common;
use common::*;
use mail_parser::{MessageParser, MimeHeaders};
use std::time::{Duration, Instant};

const LIFETIME: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_recipient_expires_and_is_bounced() {
    let backend = Backend::start().await;
    backend.set_rcpt_reply("slow@", "451 4.2.0 try later");
    let bounces = Backend::start().await;
    let extra = format!(
        "[delivery]\nretry = [\"300ms\"]\nmax_queue_lifetime = \"2s\"\nshutdown_grace = \"2s\"\n\
         [bounce]\nrelay = \"{}\"\n",
        bounces.addr()
    );
    let mut relay = Relay::start(&[backend.addr()], &extra).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let accepted = Instant::now();
    let reply = c
        .send_message(
            "sender@client.test",
            &["slow@example.com"],
            b"Subject: patience\r\n\r\nbody\r\n",
        )
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;

    // Several deferrals happen first: the recipient is retried, not failed.
    let retried = wait_until_async(WAIT, || {
        backend
            .commands()
            .iter()
            .filter(|l| l.to_ascii_uppercase().starts_with("RCPT TO:<SLOW@"))
            .count()
            >= 2
    })
    .await;
    assert!(retried, "retried: {:?}", backend.commands());

    let dsn = bounces.wait_for(1, WAIT).await;
    let took = accepted.elapsed();
    assert!(
        took >= LIFETIME,
        "bounced after {took:?}, before the lifetime"
    );
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, ["sender@client.test"]);

    let msg = MessageParser::default()
        .parse(&dsn[0].data)
        .expect("DSN parses as a message");
    let ct = msg.content_type().expect("DSN has a Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|t| t.ctype() == "message" && t.subtype() == Some("delivery-status"))
        })
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .unwrap_or_else(|| panic!("no delivery-status part in\n{}", dsn[0].data_str()));
    for want in [
        "Final-Recipient: rfc822; slow@example.com",
        "Action: failed",
        "Status: 4.4.7",
        "Diagnostic-Code: smtp; 451 4.4.7 message expired",
    ] {
        assert!(status.contains(want), "missing {want:?} in\n{status}");
    }

    assert_eq!(backend.count(), 0, "the backend never got the message");
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 1.0);
    assert!(
        wait_metric(&relay, "breakwater_queue_depth", 0.0, WAIT).await,
        "expired message and its DSN leave the queue"
    );
    assert_eq!(bounces.count(), 1, "exactly one DSN");
    relay.stop().await;
}
