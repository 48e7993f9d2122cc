//! Proves that a MAIL `SIZE=` too large for 64 bits is refused as too big
//! (`552 5.3.4`) whatever its digits, not as a syntax error: RFC 1870 allows up to
//! 20 digits, so `SIZE=18446744073709551616` is well-formed and just too large.

mod common;
use common::*;

const EXTRA: &str = "[smtp]\nmax_errors = 100\n";

/// Values at and past `u64::MAX` (2^64 - 1). The parser saturates some of them to
/// exactly `usize::MAX` and reports "invalid value" for those; others it wraps
/// around (the 23-digit one reads as 999), which `smtp::params` catches.
const TOO_BIG: &[&str] = &[
    "99999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "184467440737095516160",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_oversized_size_gets_552() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut wrong = Vec::new();
    for size in TOO_BIG {
        c.send(&format!("MAIL FROM:<a@b.test> SIZE={size}")).await;
        let r = c.read_reply().await;
        if !r.matches("552 5.3.4") {
            wrong.push(format!("SIZE={size}: {r}"));
        }
        c.cmd("RSET", "250").await;
    }
    assert!(
        wrong.is_empty(),
        "expected 552 5.3.4 for:\n{}",
        wrong.join("\n")
    );
    // The largest value that fits is refused the same way (it is over the limit).
    c.cmd(
        "MAIL FROM:<a@b.test> SIZE=18446744073709551614",
        "552 5.3.4",
    )
    .await;
    c.cmd("MAIL FROM:<a@b.test> SIZE=1000", "250 2.1.0").await;
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
