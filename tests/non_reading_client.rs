//! Proves that a client which pipelines megabytes of `NOOP` and never reads a
//! reply loses its connection within a bounded time (the relay's write deadline,
//! `idle_timeout`), that `breakwater_smtp_sessions_active` returns to 0, and that
//! a normal client is served afterwards.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EXTRA: &str = "[smtp]\nidle_timeout = \"1s\"\n";
const WAIT: Duration = Duration::from_secs(10);
/// The connection must be gone by then (the write deadline is 1 s).
const BOUND: Duration = Duration::from_secs(20);
/// 64 KiB of pipelined NOOPs per write, at most 64 MiB in all.
const BLOCK_NOOPS: usize = 64 * 1024 / 6;
const MAX_BLOCKS: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_client_that_never_reads_is_dropped() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut s = TcpStream::connect(relay.smtp).await.expect("connect");
    // Reads the greeting (talking first would be a pregreet), then never again.
    let mut greeting = [0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut greeting)).await;
    let n = n.expect("greeting in time").expect("greeting");
    assert!(greeting[..n].starts_with(b"220 "), "{:?}", &greeting[..n]);
    s.write_all(b"EHLO greedy.test\r\n").await.expect("EHLO");
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 1.0, WAIT).await);
    let block = "NOOP\r\n".repeat(BLOCK_NOOPS).into_bytes();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut failed = None;
    for _ in 0..MAX_BLOCKS {
        let left = BOUND.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.write_all(&block)).await {
            Ok(Ok(())) => sent += block.len(),
            Ok(Err(e)) => {
                failed = Some(e);
                break;
            }
            Err(_) => break, // BOUND passed with the write still blocked
        }
    }
    let took = start.elapsed();
    eprintln!("wrote {} KiB of NOOPs in {took:?}: {failed:?}", sent / 1024);
    assert!(
        sent >= 1 << 20,
        "only {sent} bytes written: not a pipelining flood"
    );
    assert!(
        failed.is_some(),
        "after {took:?} and {} MiB the relay still had not dropped the connection",
        sent >> 20
    );
    assert!(took < BOUND, "dropped only after {took:?}");
    drop(s);
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    let timeouts = "breakwater_smtp_rejections_total{reason=\"timeout\"}";
    assert_eq!(relay.counter(timeouts).await, 1.0);

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("normal.test").await;
    let body = b"Subject: normal\r\n\r\nserved\r\n";
    let r = c
        .send_message("n@client.test", &["n@example.com"], body)
        .await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    assert!(got[0].data.ends_with(body));
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
