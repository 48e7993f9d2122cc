//! Proves that `[smtp] data_timeout` bounds a BDAT message too ("the whole
//! message: from 354 to the final dot, or all BDAT chunks"): a client that sends
//! a small complete chunk (`BDAT n` and its bytes in one write) every 300 ms,
//! never `LAST`, gets `421 4.4.2` after about 2 s and is disconnected.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nidle_timeout = \"1s\"\ndata_timeout = \"2s\"\n";
const WAIT: Duration = Duration::from_secs(10);
const PACE: Duration = Duration::from_millis(300);
/// Chunks sent at most: 12 s worth, far past the 2 s limit.
const MAX_CHUNKS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_but_endless_bdat_message_is_cut_off() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("steady.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    let start = Instant::now();
    let mut replies = Vec::new();
    for i in 0..MAX_CHUNKS {
        let chunk = if i == 0 {
            "Subject: endless\r\n\r\n".to_string()
        } else {
            format!("line {i}\r\n")
        };
        let cmd = format!("BDAT {}\r\n{chunk}", chunk.len());
        if c.try_send_raw(cmd.as_bytes()).await.is_err() {
            break;
        }
        // Each chunk is answered at once.
        if !c.line_within(WAIT).await {
            break;
        }
        replies.push(c.read_reply().await);
        if !replies.last().is_some_and(|r| r.matches("250")) {
            break;
        }
        // Paces the chunks; an unprompted reply (the timeout) ends the loop.
        if c.line_within(PACE).await {
            replies.push(c.read_reply().await);
            break;
        }
    }
    let took = start.elapsed();
    let last = replies.last().expect("at least one reply");
    assert!(
        last.matches("421 4.4.2"),
        "{} chunks accepted over {took:?} and still going; last reply {last}",
        replies.len()
    );
    assert!(took < Duration::from_secs(6), "cut off only after {took:?}");
    assert!(c.is_closed().await, "connection left open after 421");
    assert!(wait_metric(&relay, "breakwater_smtp_sessions_active", 0.0, WAIT).await);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    relay.stop().await;
    backend.stop().await;
}
