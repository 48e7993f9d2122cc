//! Lines longer than a strict backend takes (998 octets, like Postfix's
//! `smtp_line_length_limit`): the relay folds them with CRLF SPACE on the way
//! out, through DATA and BDAT, so the backend accepts the message; with
//! `[delivery] line_length_limit = 0` they go out whole, the backend refuses
//! them, and the sender gets a bounce.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const LIMIT: usize = 998;

/// A 1,500-octet header line and a 2,000-octet body line (starting with a dot,
/// so DATA stuffs it too).
fn message() -> Vec<u8> {
    let mut m = b"Subject: long lines\r\nX-Long: ".to_vec();
    m.extend(std::iter::repeat_n(b'h', 1500 - 8));
    m.extend_from_slice(b"\r\n\r\nshort line\r\n.");
    m.extend(std::iter::repeat_n(b'b', 1999));
    m.extend_from_slice(b"\r\nend\r\n");
    m
}

/// `msg` with CRLF SPACE inserted so no line passes `limit` (the space counts).
fn folded(msg: &[u8], limit: usize) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    let mut out = String::new();
    for line in text.split_terminator("\r\n") {
        let (first, mut rest) = line.split_at(line.len().min(limit));
        out.push_str(first);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rest.len().min(limit - 1));
            out.push_str("\r\n ");
            out.push_str(piece);
            rest = tail;
        }
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn strict(chunking: bool) -> BackendOptions {
    BackendOptions {
        chunking,
        max_line: Some(LIMIT),
        ..BackendOptions::default()
    }
}

async fn submit(relay: &Relay) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message("sender@client.test", &["a@example.com"], &message())
        .await;
    assert!(reply.matches("250"), "{reply}");
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_folded_for_a_strict_backend() {
    for chunking in [true, false] {
        let mut backend = Backend::start_with(strict(chunking)).await;
        let mut relay = Relay::start(&[backend.addr()], "").await;
        submit(&relay).await;
        let got = backend.wait_for(1, WAIT).await;
        for line in got[0].data.split(|&b| b == b'\n') {
            assert!(line.len() <= LIMIT + 1, "a {}-octet line", line.len());
        }
        let want = folded(&message(), LIMIT);
        assert_eq!(got[0].after_trace(), want, "chunking {chunking}");
        let verb = if chunking { "BDAT" } else { "DATA" };
        assert!(backend.commands().iter().any(|c| c.starts_with(verb)));
        relay.stop().await;
        backend.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_folding_the_strict_backend_refuses_and_the_sender_hears() {
    for chunking in [true, false] {
        let mut backend = Backend::start_with(strict(chunking)).await;
        let mut bounces = Backend::start().await;
        let extra = format!(
            "[delivery]\nretry = [\"1s\"]\nline_length_limit = 0\n[bounce]\nrelay = \"{}\"\n",
            bounces.addr()
        );
        let mut relay = Relay::start(&[backend.addr()], &extra).await;
        submit(&relay).await;
        let dsn = bounces.wait_for(1, WAIT).await;
        assert_eq!(dsn[0].rcpts, ["sender@client.test"]);
        let text = dsn[0].data_str();
        assert!(text.contains("Action: failed"), "{text}");
        assert!(text.contains("500 5.5.0 Line too long"), "{text}");
        assert_eq!(backend.count(), 0, "the strict backend took nothing");
        relay.stop().await;
        backend.stop().await;
        bounces.stop().await;
    }
}
