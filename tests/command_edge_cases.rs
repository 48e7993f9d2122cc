//! Proves that MAIL/RCPT lines the parser alone gets wrong (duplicate or
//! unoffered parameters, a SIZE past u64, addresses with an empty domain) get
//! their exact refusals, that a HELO name with control bytes is accepted and its
//! message delivered, and that the session stays usable throughout.

mod common;
use common::*;
use std::time::Duration;

// More refusals in one session than the default smtp.max_errors allows.
const EXTRA: &str = "[smtp]\nmax_errors = 100\n";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_and_address_edge_cases_get_exact_replies() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for (line, want) in [
        ("MAIL FROM:<a@b.test> SIZE=1 SIZE=2", "501 5.5.4"),
        ("MAIL FROM:<a@b.test> size=1 SIZE=1", "501 5.5.4"),
        ("MAIL FROM:<a@b.test> BODY=BINARYMIME", "555 5.5.4"),
        (
            "MAIL FROM:<a@b.test> SIZE=99999999999999999999999",
            "552 5.3.4",
        ),
        ("MAIL FROM:<a@>", "553 5.1.7"),
        ("MAIL FROM:<@b.test>", "501 5.1.7"),
    ] {
        c.cmd(line, want).await;
        // Nothing was opened: a clean MAIL is not "nested".
        c.cmd("MAIL FROM:<a@b.test>", "250 2.1.0").await;
        c.cmd("RSET", "250").await;
    }
    c.cmd("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME", "250 2.1.0")
        .await;
    c.cmd("RCPT TO:<a@>", "553 5.1.3").await;
    c.cmd(
        "RCPT TO:<x@example.com> NOTIFY=NEVER NOTIFY=NEVER",
        "501 5.5.4",
    )
    .await;
    c.cmd("RCPT TO:<ok@example.com>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: edge\r\n\r\nafter the refusals\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["ok@example.com"]);
    assert_eq!(got[0].mail_from, "a@b.test");
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helo_with_control_bytes_is_accepted_and_delivered() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.send_raw(b"HELO a\x1b[2Jb\r\n").await;
    let r = c.read_reply().await;
    assert!(r.matches("250"), "{r}");
    let body = b"Subject: escape\r\n\r\nterminal games\r\n";
    let r = c
        .send_message("s@client.test", &["esc@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["esc@example.com"]);
    assert!(got[0].data.ends_with(body), "{}", got[0].data_str());
    let received = got[0].header("Received").expect("a Received header");
    assert!(
        !received.bytes().any(|b| b.is_ascii_control()),
        "control bytes of the HELO name reached the header: {received:?}"
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
