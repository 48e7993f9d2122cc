//! Proves every error reply of an inbound SMTP session carries the right code and
//! enhanced status, leaves the session usable, and lets nothing refused (too big,
//! smuggled with bare LF/CR) reach the backend.

mod common;
use common::*;
use std::time::Duration;

// Many errors in one session on purpose: above the default smtp.max_errors.
const EXTRA: &str = "[smtp]\nmax_message_size = 100000\nmax_errors = 100\n";
const WAIT: Duration = Duration::from_secs(10);

/// Asserts a 5xx reply whose text starts with an enhanced code `5.x.y`.
fn assert_enhanced_5xx(r: &Reply) {
    let esc = r.lines[0].split(' ').next().unwrap_or("");
    let parts: Vec<&str> = esc.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        (500..600).contains(&r.code) && parts.len() == 3 && parts[0] == "5" && numeric,
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_errors_leave_the_session_usable() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.cmd("MAIL FROM:<s@client.test>", "503 5.5.1").await;
    let ehlo = c.ehlo("client.test").await;
    for cap in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.has_capability(cap), "EHLO lacks {cap}:\n{ehlo}");
    }
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 100000"), "{ehlo}");
    c.cmd("RCPT TO:<a@example.com>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<s@client.test>", "250 2.1.0").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<t@client.test>", "503 5.5.1").await;
    c.cmd("RSET", "250").await;
    c.cmd("FROBNICATE now", "500 5.5.2").await;
    c.cmd("MAIL FROM:bad", "501 5.").await;
    let r = c.cmd("MAIL FROM:<a@b.test> FOO=BAR", "5").await;
    assert!(r.code == 555 || r.code == 501, "{r}");
    assert_enhanced_5xx(&r);
    c.cmd(&"X".repeat(5000), "500 5.5.6").await;
    c.cmd("NOOP", "250").await;
    c.cmd("VRFY a@example.com", "252").await;
    c.cmd("HELP", "214").await;
    c.cmd("EXPN staff", "502 5.5.1").await;
    c.cmd("MAIL FROM:<s@client.test> SIZE=999999999", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<jörg@client.test>", "553 5.6.7").await;
    c.cmd("MAIL FROM:<s@client.test> SIZE=1000", "250").await;
    c.cmd("RCPT TO:<üser@example.com>", "553 5.6.7").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: survived\r\n\r\nstill here\r\n.\r\n")
        .await;
    assert!(c.read_reply().await.matches("250 2.0.0 Ok: queued as"));
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["a@example.com"]);
    assert!(
        got[0]
            .data
            .ends_with(b"Subject: survived\r\n\r\nstill here\r\n")
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_smuggled_bodies_are_refused() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..1500 {
        big.extend_from_slice(&[b'z'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    let r = c
        .send_message("s@client.test", &["big@example.com"], &big)
        .await;
    assert!(r.matches("552 5.3.4"), "{r}");
    let r = c
        .send_bdat("s@client.test", &["big@example.com"], &big, 70_000)
        .await;
    assert!(r.matches("552 5.3.4"), "{r}");
    // SMTP smuggling: a fake end of data hides a second transaction.
    let smuggled = b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@example.com>\r\n\
                     DATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
    for fake_end in [
        &b"\n.\n"[..],
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        c.cmd("MAIL FROM:<s@client.test>", "250").await;
        c.cmd("RCPT TO:<a@example.com>", "250").await;
        c.cmd("DATA", "354").await;
        let body = [
            &b"Subject: cover\r\n\r\na"[..],
            fake_end,
            smuggled,
            b"b\r\n.\r\n",
        ]
        .concat();
        c.send_raw(&body).await;
        let r = c.read_reply().await;
        assert!(r.matches("550 5.6.0"), "fake end {fake_end:?}: {r}");
    }
    c.cmd("NOOP", "250").await;
    let good = b"Subject: good\r\n\r\nthe barrier\r\n";
    let r = c
        .send_message("s@client.test", &["good@example.com"], good)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    assert_eq!(backend.count(), 1, "a refused message was delivered");
    assert_eq!(got[0].rcpts, ["good@example.com"]);
    assert!(got[0].data.ends_with(good));
    let cmds = backend.commands();
    assert!(
        !cmds
            .iter()
            .any(|l| l.contains("evil") || l.contains("victim") || l.contains("big@")),
        "{cmds:?}"
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
