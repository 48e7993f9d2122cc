//! Proves the relay is not an open relay: foreign domains and routing tricks
//! (percent hack, bang path, source route, quoted `@`, address literal) get
//! `550 5.7.1` and never reach the backend, while our domain (any case), bare
//! `<postmaster>` and the null sender are accepted and delivered.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// (path inside `RCPT TO:<...>`, expected reply prefix).
const TABLE: &[(&str, &str)] = &[
    ("a@other.com", "550 5.7.1"),
    ("a@notexample.com", "550 5.7.1"),
    ("a@sub.example.com", "550 5.7.1"),
    ("a%b.com@example.com", "550 5.7.1"),
    ("b.com!a@example.com", "550 5.7.1"),
    ("@hop.net:a@example.com", "550 5.7.1"),
    ("@hop.net,@hop2.net:a@example.com", "550 5.7.1"),
    ("\"a@b.com\"@example.com", "550 5.7.1"),
    ("a@[127.0.0.1]", "550 5.7.1"),
    ("postmaster@example.com", "250 2.1.5"),
    ("postmaster", "250 2.1.5"),
    ("a@EXAMPLE.COM", "250 2.1.5"),
];

/// Substrings that only refused recipients contain.
const REFUSED_MARKS: &[&str] = &[
    "other.com",
    "notexample",
    "sub.example",
    "b.com",
    "hop.net",
    "hop2.net",
    "127.0.0.1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_never_reach_the_backend() {
    let mut backend = Backend::start().await;
    // Every refusal of the table twice in one session: above the default
    // smtp.max_errors (tested on its own in tests/error_limit.rs).
    let mut relay = Relay::start(
        &[backend.addr()],
        "[smtp]
max_errors = 100
",
    )
    .await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;

    // Only refused recipients: the transaction has nobody to deliver to.
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    for (path, want) in TABLE.iter().filter(|(_, w)| w.starts_with('5')) {
        c.cmd(&format!("RCPT TO:<{path}>"), want).await;
    }
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RSET", "250").await;

    // Mixed: every line of the table in one transaction.
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    for (path, want) in TABLE {
        c.cmd(&format!("RCPT TO:<{path}>"), want).await;
    }
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: mixed\r\n\r\nours only\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");

    // Null sender (a bounce) to our postmaster.
    c.cmd("MAIL FROM:<>", "250 2.1.0").await;
    c.cmd("RCPT TO:<a@other.com>", "550 5.7.1").await;
    c.cmd("RCPT TO:<postmaster@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: bounce\r\n\r\nnull sender\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");
    c.quit().await;

    let got = backend.wait_for(2, WAIT).await;
    let mixed = got.iter().find(|m| m.data_str().contains("ours only"));
    let mixed = mixed.expect("mixed message delivered");
    assert_eq!(mixed.mail_from, "s@client.test");
    assert_eq!(
        mixed.rcpts,
        ["postmaster@example.com", "postmaster", "a@EXAMPLE.COM"]
    );
    let bounce = got.iter().find(|m| m.data_str().contains("null sender"));
    let bounce = bounce.expect("null-sender message delivered");
    assert_eq!(bounce.mail_from, "", "reverse path must stay empty");
    assert_eq!(bounce.rcpts, ["postmaster@example.com"]);

    // Both accepted messages are in; nothing else was accepted or sent on.
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        2.0
    );
    assert_eq!(backend.count(), 2);
    for line in backend.commands() {
        assert!(
            !REFUSED_MARKS.iter().any(|m| line.contains(m)),
            "refused recipient reached the backend: {line:?}"
        );
    }
    relay.stop().await;
    backend.stop().await;
}
