//! DSN requests (RFC 3461): RET/ENVID/NOTIFY/ORCPT are passed on to a backend
//! that offers DSN (and then no "relayed" notice is sent); NOTIFY=SUCCESS
//! through a backend without DSN yields a "relayed" DSN; NOTIFY=NEVER
//! suppresses the failure DSN.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A relay delivering to `backend`, DSNs to `bounces`.
async fn relay_for(backend: &Backend, bounces: &Backend) -> Relay {
    let extra = format!("[bounce]\nrelay = \"{}\"\n", bounces.addr());
    Relay::start(&[backend.addr()], &extra).await
}

/// Sends one message with raw MAIL and RCPT commands (parameters included).
async fn send(relay: &Relay, mail: &str, rcpts: &[&str]) {
    let mut c = Client::connect(relay.smtp).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(ehlo.has_capability("DSN"), "EHLO offers DSN: {ehlo}");
    c.cmd(mail, "250").await;
    for r in rcpts {
        c.cmd(r, "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: dsn\r\n\r\nbody\r\n.\r\n").await;
    let reply = c.read_reply().await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;
}

/// Waits (bounded) until the queue is empty: every message and DSN settled.
async fn queue_empties(relay: &Relay) {
    assert!(
        wait_metric(relay, "breakwater_queue_depth", 0.0, WAIT).await,
        "queue empties"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_pass_to_a_dsn_backend_and_no_relayed_notice() {
    let opts = BackendOptions {
        dsn: true,
        ..BackendOptions::default()
    };
    let (backend, bounces) = (Backend::start_with(opts).await, Backend::start().await);
    let mut relay = relay_for(&backend, &bounces).await;
    send(
        &relay,
        "MAIL FROM:<s@client.test> RET=HDRS ENVID=abc123",
        &["RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.com"],
    )
    .await;
    let got = backend.wait_for(1, WAIT).await;
    let mail: Vec<&str> = got[0].mail_params.split_whitespace().collect();
    assert!(mail.contains(&"RET=HDRS"), "{mail:?}");
    assert!(mail.contains(&"ENVID=abc123"), "{mail:?}");
    let rcpt: Vec<&str> = got[0].rcpt_params[0].split_whitespace().collect();
    assert!(rcpt.contains(&"NOTIFY=SUCCESS,FAILURE"), "{rcpt:?}");
    assert!(rcpt.contains(&"ORCPT=rfc822;a@example.com"), "{rcpt:?}");
    // Once the message has left the queue, any notice would have been sent.
    queue_empties(&relay).await;
    assert_eq!(
        bounces.count(),
        0,
        "no relayed DSN: {:?}",
        bounces.messages()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_through_a_plain_backend_is_relayed() {
    let (backend, bounces) = (Backend::start().await, Backend::start().await);
    let mut relay = relay_for(&backend, &bounces).await;
    send(
        &relay,
        "MAIL FROM:<s@client.test>",
        &["RCPT TO:<a@example.com> NOTIFY=SUCCESS"],
    )
    .await;
    let got = backend.wait_for(1, WAIT).await;
    assert!(!got[0].rcpt_params[0].contains("NOTIFY"), "{got:?}");
    let dsn = bounces.wait_for(1, WAIT).await;
    assert_eq!(
        (dsn[0].mail_from.as_str(), &dsn[0].rcpts[..]),
        ("", &["s@client.test".to_owned()][..])
    );
    let text = dsn[0].data_str();
    for want in [
        "report-type=delivery-status",
        "Final-Recipient: rfc822; a@example.com",
        "Action: relayed",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("Action: failed"), "{text}");
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 0.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_never_suppresses_the_failure_dsn() {
    let (backend, bounces) = (Backend::start().await, Backend::start().await);
    backend.set_rcpt_reply("c@", "550 5.1.1 no such user");
    let mut relay = relay_for(&backend, &bounces).await;
    send(
        &relay,
        "MAIL FROM:<s@client.test>",
        &["RCPT TO:<c@example.com> NOTIFY=NEVER"],
    )
    .await;
    // Barrier: a failure the sender does want to hear about, queued after.
    send(
        &relay,
        "MAIL FROM:<barrier@client.test>",
        &["RCPT TO:<c@example.com>"],
    )
    .await;
    let dsn = bounces.wait_for(1, WAIT).await;
    assert_eq!(dsn[0].rcpts, ["barrier@client.test"]);
    queue_empties(&relay).await;
    assert_eq!(
        bounces.count(),
        1,
        "no DSN for NOTIFY=NEVER: {:?}",
        bounces.messages()
    );
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 1.0);
    relay.stop().await;
}
