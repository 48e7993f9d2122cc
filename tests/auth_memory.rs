//! `auth.max_memory`: messages held whole for `[auth]` share one memory budget.
//! A message that cannot reserve more gets `452 4.3.1` (nothing stored, the
//! session stays in sync), and every way a message ends gives its bytes back
//! (`breakwater_auth_memory_bytes` returns to 0). Real TCP, loopback DNS.

mod common;

use common::{Backend, Client, Dns, Relay};
use std::time::Duration;

const RCPT: &str = "user@example.com";
const FROM: &str = "sender@pass.test";
const WAIT: Duration = Duration::from_secs(10);
const GAUGE: &str = "breakwater_auth_memory_bytes";
/// `auth.max_memory` in these tests.
const BUDGET: usize = 1 << 20;
/// A body line (78 bytes and CRLF, no leading dot).
const LINE: &[u8] =
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";

async fn setup() -> (Dns, Backend, Relay) {
    let dns = Dns::start().await;
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("helo.test", "v=spf1 ip4:127.0.0.0/8 -all");
    let backend = Backend::start().await;
    let text = format!(
        "[auth]\nenabled = true\nresolver = \"{}\"\ndns_timeout = \"1s\"\nmax_memory = {BUDGET}\n\
         [smtp]\nmax_message_size = {}\n",
        dns.addr,
        4 * BUDGET
    );
    let relay = Relay::start(&[backend.addr()], &text).await;
    (dns, backend, relay)
}

/// A message named `subject` of about `size` bytes, split into a head of about
/// `head` bytes and the rest (both whole lines).
fn message(subject: &str, size: usize, head: usize) -> (Vec<u8>, Vec<u8>) {
    let mut first = format!(
        "From: <{FROM}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@mem.test>\r\n\r\n"
    )
    .into_bytes();
    while first.len() < head {
        first.extend_from_slice(LINE);
    }
    let mut rest = Vec::new();
    while first.len() + rest.len() < size {
        rest.extend_from_slice(LINE);
    }
    (first, rest)
}

/// A session that said EHLO, MAIL and RCPT.
async fn envelope(relay: &Relay) -> Client {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("helo.test").await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    c.cmd(&format!("RCPT TO:<{RCPT}>"), "250").await;
    c
}

/// A session in DATA (after 354).
async fn in_data(relay: &Relay) -> Client {
    let mut c = envelope(relay).await;
    c.cmd("DATA", "354").await;
    c
}

async fn gauge(relay: &Relay) -> usize {
    relay.metric(GAUGE).await as usize
}

/// Waits until the budget in use is at least `min` and has not changed for
/// 300 ms (the relay has read what was sent); the value then.
async fn settled(relay: &Relay, min: usize) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut last, mut since) = (usize::MAX, tokio::time::Instant::now());
    loop {
        let now = gauge(relay).await;
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if now >= min && since.elapsed() >= Duration::from_millis(300) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{GAUGE} did not settle at >= {min} (last {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing of the budget is held.
async fn budget_whole(relay: &Relay) {
    assert!(
        common::relay::wait_metric(relay, GAUGE, 0.0, WAIT).await,
        "{GAUGE} back to 0: {}",
        gauge(relay).await
    );
}

fn subjects(backend: &Backend) -> Vec<String> {
    let mut s: Vec<String> = backend
        .messages()
        .iter()
        .filter_map(|m| m.header("Subject"))
        .map(|s| s.trim().to_owned())
        .collect();
    s.sort();
    s
}

#[tokio::test]
async fn two_big_messages_at_once_one_is_refused_452_and_the_budget_comes_back() {
    let (_dns, backend, relay) = setup().await;
    let size = BUDGET * 7 / 10;
    let (a_head, a_rest) = message("first", size, BUDGET * 6 / 10);
    let (b_head, b_rest) = message("second", size, BUDGET * 6 / 10);

    let mut a = in_data(&relay).await;
    let mut b = in_data(&relay).await;
    a.send_raw(&a_head).await;
    let held = settled(&relay, a_head.len()).await;
    assert!(held <= BUDGET, "{held} held");
    // The second cannot get more than half the budget: refused while reading.
    b.send_raw(&b_head).await;
    b.send_raw(&b_rest).await;
    b.send_raw(b".\r\n").await;
    let r = b.read_reply().await;
    assert!(r.matches("452 4.3.1"), "second message: {r}");
    assert!(r.text().contains("Too much mail in verification"), "{r}");
    // What is held now is the first one's (the second held its header too).
    let now = gauge(&relay).await;
    assert!(
        now >= a_head.len() && now < held,
        "the refused one gave its bytes back: {now} held, {held} before"
    );
    // The session is in sync: the next command is a command.
    b.cmd("NOOP", "250").await;

    a.send_raw(&a_rest).await;
    a.send_raw(b".\r\n").await;
    let r = a.read_reply().await;
    assert!(r.matches("250"), "first message: {r}");
    a.quit().await;
    b.quit().await;
    budget_whole(&relay).await;

    // The budget is whole again: the same size fits.
    let (c_head, c_rest) = message("third", size, 0);
    let mut c = in_data(&relay).await;
    c.send_raw(&c_head).await;
    c.send_raw(&c_rest).await;
    c.send_raw(b".\r\n").await;
    let r = c.read_reply().await;
    assert!(r.matches("250"), "third message: {r}");
    c.quit().await;
    budget_whole(&relay).await;

    let got = backend.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subjects(&backend), ["first", "third"]);
    assert_eq!(
        relay
            .counter("breakwater_smtp_rejections_total{reason=\"memory\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_that_vanishes_mid_data_gives_its_bytes_back() {
    let (_dns, backend, relay) = setup().await;
    let (head, _) = message("vanished", 0, BUDGET * 6 / 10);
    let mut a = in_data(&relay).await;
    a.send_raw(&head).await;
    settled(&relay, head.len()).await;
    drop(a);
    budget_whole(&relay).await;

    // Nearly the whole budget is available to one message again.
    let (head, rest) = message("after", BUDGET * 9 / 10, 0);
    let mut c = in_data(&relay).await;
    c.send_raw(&head).await;
    c.send_raw(&rest).await;
    c.send_raw(b".\r\n").await;
    let r = c.read_reply().await;
    assert!(r.matches("250"), "{r}");
    c.quit().await;
    budget_whole(&relay).await;
    assert_eq!(backend.wait_for(1, WAIT).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subjects(&backend), ["after"]);
}

#[tokio::test]
async fn bdat_chunks_hold_the_budget_until_rset_and_an_overflowing_chunk_gets_452() {
    let (_dns, backend, relay) = setup().await;
    // A chunk kept between BDATs holds its bytes; RSET gives them back.
    let (head, _) = message("reset", 0, BUDGET * 6 / 10);
    let mut a = envelope(&relay).await;
    a.send(&format!("BDAT {}", head.len())).await;
    a.send_raw(&head).await;
    let r = a.read_reply().await;
    assert!(r.matches("250"), "{r}");
    assert!(gauge(&relay).await >= head.len());
    a.cmd("RSET", "250").await;
    budget_whole(&relay).await;

    // Held by a DATA session, the rest of the budget is too small for a
    // BDAT chunk: that chunk gets 452 and the transaction is over.
    let (d_head, d_rest) = message("data", BUDGET * 7 / 10, BUDGET * 6 / 10);
    let mut d = in_data(&relay).await;
    d.send_raw(&d_head).await;
    settled(&relay, d_head.len()).await;
    let (chunk, _) = message("chunked", 0, BUDGET * 6 / 10);
    a.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
    a.cmd(&format!("RCPT TO:<{RCPT}>"), "250").await;
    a.send(&format!("BDAT {}", chunk.len())).await;
    a.send_raw(&chunk).await;
    let r = a.read_reply().await;
    assert!(r.matches("452 4.3.1"), "{r}");
    // In sync, and no transaction left.
    a.send("BDAT 2 LAST").await;
    a.send_raw(b"x\n").await;
    let r = a.read_reply().await;
    assert!(r.matches("503"), "{r}");
    a.cmd("RSET", "250").await;

    d.send_raw(&d_rest).await;
    d.send_raw(b".\r\n").await;
    let r = d.read_reply().await;
    assert!(r.matches("250"), "{r}");
    a.quit().await;
    d.quit().await;
    budget_whole(&relay).await;
    assert_eq!(backend.wait_for(1, WAIT).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subjects(&backend), ["data"]);
}
