//! Proves the pregreet test with `[smtp] greet_pause = "300ms"`: a client that
//! sends `EHLO` at once on connect, before the greeting, gets the greeting and
//! then `554 5.5.0` and is disconnected, counted under
//! `breakwater_smtp_rejections_total{reason="pregreet"}`; a client that waits
//! for the greeting, with the same config, is served.

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EXTRA: &str = "[smtp]\ngreet_pause = \"300ms\"\n";
const WAIT: Duration = Duration::from_secs(10);
const PREGREET: &str = "breakwater_smtp_rejections_total{reason=\"pregreet\"}";

/// Everything the relay sends until it closes (bounded in time and size).
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&all).into_owned(),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {WAIT:?}; got {all:?}"),
        }
    }
    panic!("no end of stream; got {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_before_the_greeting_is_refused() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;

    let mut s = TcpStream::connect(relay.smtp).await.expect("connect");
    s.write_all(b"EHLO eager.test\r\nMAIL FROM:<s@client.test>\r\n")
        .await
        .expect("write");
    let text = read_until_closed(&mut s).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(lines[0].starts_with("220 relay.test"), "{text:?}");
    assert!(lines[1].starts_with("554 5.5.0"), "{text:?}");
    assert_eq!(relay.counter(PREGREET).await, 1.0);
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);

    // A polite client (Client::connect reads the greeting first) is served.
    let mut c = Client::connect(relay.smtp).await;
    assert!(c.greeting().matches("220 relay.test"), "{}", c.greeting());
    c.ehlo("polite.test").await;
    let body = b"Subject: polite\r\n\r\nwaited my turn\r\n";
    let r = c
        .send_message("p@client.test", &["p@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(body));
    c.quit().await;
    assert_eq!(relay.counter(PREGREET).await, 1.0);
    relay.stop().await;
    backend.stop().await;
}
