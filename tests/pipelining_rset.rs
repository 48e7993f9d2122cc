//! Proves pipelined commands get their replies in order and both transactions are
//! delivered, RSET discards an open transaction, and recipients beyond
//! `[smtp] max_recipients` get `452 4.5.3` and are not delivered to.

mod common;
use common::*;
use std::time::Duration;

const EXTRA: &str = "[smtp]\nmax_recipients = 3\n";
const WAIT: Duration = Duration::from_secs(10);

/// Reads one reply per expected prefix, in order.
async fn expect_replies(c: &mut Client, expected: &[&str]) {
    for (i, want) in expected.iter().enumerate() {
        let r = c.read_reply().await;
        assert!(r.matches(want), "reply {i}: expected {want:?}, got {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transactions_are_answered_in_order() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    assert!(c.ehlo("client.test").await.has_capability("PIPELINING"));
    c.send_raw(
        b"MAIL FROM:<s1@client.test>\r\nRCPT TO:<a@example.com>\r\n\
          RCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    .await;
    expect_replies(&mut c, &["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]).await;
    c.send_raw(
        b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<s2@client.test>\r\n\
          RCPT TO:<c@example.com>\r\nDATA\r\n",
    )
    .await;
    let queued = "250 2.0.0 Ok: queued as";
    expect_replies(&mut c, &[queued, "250 2.1.0", "250 2.1.5", "354"]).await;
    c.send_raw(b"Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n")
        .await;
    expect_replies(&mut c, &[queued, "250", "221"]).await;
    let mut got = backend.wait_for(2, WAIT).await;
    got.sort_by(|x, y| x.mail_from.cmp(&y.mail_from));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].mail_from, "s1@client.test");
    assert_eq!(got[0].rcpts, ["a@example.com", "b@example.com"]);
    assert!(got[0].data.ends_with(b"Subject: one\r\n\r\nfirst\r\n"));
    assert_eq!(got[1].mail_from, "s2@client.test");
    assert_eq!(got[1].rcpts, ["c@example.com"]);
    assert!(got[1].data.ends_with(b"Subject: two\r\n\r\nsecond\r\n"));
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rset_discards_the_open_transaction() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<gone@client.test>", "250").await;
    c.cmd("RCPT TO:<x@example.com>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<x2@example.com>", "503 5.5.1").await;
    let msg = b"Subject: kept\r\n\r\nafter rset\r\n";
    let r = c
        .send_message("kept@client.test", &["y@example.com"], msg)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    // The RSET transaction had no body, so nothing else can still be on its way.
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    assert_eq!(backend.count(), 1);
    assert_eq!(got[0].mail_from, "kept@client.test");
    assert_eq!(got[0].rcpts, ["y@example.com"]);
    assert!(got[0].data.ends_with(msg));
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_beyond_the_limit_are_refused() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    for r in ["r1", "r2", "r3"] {
        c.cmd(&format!("RCPT TO:<{r}@example.com>"), "250 2.1.5")
            .await;
    }
    c.cmd("RCPT TO:<r4@example.com>", "452 4.5.3").await;
    c.cmd("RCPT TO:<r5@example.com>", "452 4.5.3").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: limited\r\n\r\nthree only\r\n.\r\n")
        .await;
    assert!(c.read_reply().await.matches("250 2.0.0"));
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].rcpts,
        ["r1@example.com", "r2@example.com", "r3@example.com"]
    );
    let cmds = backend.commands();
    assert!(
        !cmds.iter().any(|l| l.contains("r4@") || l.contains("r5@")),
        "{cmds:?}"
    );
    // The limit is per transaction: the next one may have three again.
    let r = c
        .send_message("s@client.test", &["r4@example.com"], b"x\r\n")
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    assert_eq!(backend.wait_for(2, WAIT).await[1].rcpts, ["r4@example.com"]);
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
