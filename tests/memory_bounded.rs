//! Proves that message bodies are streamed to the journal, not held in memory:
//! the built binary, with 20 sessions each ~20 MiB into an unfinished DATA, stays
//! under 200 MiB resident (it was 787 MiB for 20 x 40 MB before); then one of the
//! messages is finished and delivered byte for byte, and the rest, dropped, are not.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::{Duration, Instant};

const SESSIONS: usize = 20;
const BODY_BYTES: usize = 20 << 20;
const MAX_RSS_KIB: u64 = 200 << 10;
const SMTP_KEYS: &str = "max_message_size = 104857600\nmax_connections_per_ip = 50\n";
const ACTIVE: &str = "breakwater_smtp_sessions_active";
const WAIT: Duration = Duration::from_secs(60);
/// Time allowed for all 400 MiB to go in (a debug build on two cores).
const SEND_LIMIT: Duration = Duration::from_secs(300);

/// Message `k` in writes of about 256 KiB: a header, then numbered lines.
fn message_pieces(k: usize) -> impl Iterator<Item = Vec<u8>> {
    let line =
        move |i: usize| format!("{k:02} {i:08} the quick brown fox jumps over the lazy dog\r\n");
    let per_piece = (256 << 10) / line(0).len();
    let lines = BODY_BYTES / line(0).len();
    let head = format!("Subject: big {k}\r\n\r\n").into_bytes();
    std::iter::once(head).chain((0..lines.div_ceil(per_piece)).map(move |p| {
        let range = p * per_piece..((p + 1) * per_piece).min(lines);
        range.flat_map(|i| line(i).into_bytes()).collect()
    }))
}

/// Bytes sent to `port` on loopback not yet read by the listener's process:
/// its sockets' receive queues plus what the senders' sockets still hold.
fn in_flight(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = format!(":{port:04X}");
    let queued = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (tx, rx) = f.get(4)?.split_once(':')?;
        let side = if f[1].ends_with(&port) { rx } else { tx };
        (f[1].ends_with(&port) || f[2].ends_with(&port))
            .then(|| u64::from_str_radix(side, 16).ok())?
    };
    table.lines().skip(1).filter_map(queued).sum()
}

/// Polls the daemon's metric `name` until it equals `want` (bounded by [`WAIT`]).
async fn metric_reaches(d: &Daemon, name: &str, want: f64) -> bool {
    let deadline = Instant::now() + WAIT;
    for _ in 0..10_000 {
        let (_, body) = http(d.admin, "GET", "/metrics").await;
        if metric_value(&body, name) == Some(want) || Instant::now() > deadline {
            return metric_value(&body, name) == Some(want);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_big_unfinished_messages_stay_small() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let mut relay = Daemon::start(tmp.path(), &[backend.addr()], SMTP_KEYS, "").await;
    let before = relay.status_kib("VmRSS");
    let mut senders = Vec::new();
    for k in 0..SESSIONS {
        let mut c = Client::connect(relay.smtp).await;
        c.ehlo("big.test").await;
        c.cmd("MAIL FROM:<big@client.test>", "250").await;
        c.cmd(&format!("RCPT TO:<big{k}@example.com>"), "250").await;
        c.cmd("DATA", "354").await;
        senders.push(tokio::spawn(async move {
            // Twenty sessions share the relay's reads and journal: one may
            // wait longer than a single write's usual 10 s; the whole send
            // is bounded by SEND_LIMIT.
            for piece in message_pieces(k) {
                if let Err(e) = c.try_send_raw_within(&piece, SEND_LIMIT).await {
                    panic!("message {k}: {e}");
                }
            }
            c
        }));
    }
    let start = Instant::now();
    let mut peak = before;
    // Samples the resident size until the relay has read every byte sent.
    let sample = Duration::from_millis(100);
    let port = relay.smtp.port();
    let all_in = |s: &[tokio::task::JoinHandle<Client>]| {
        s.iter().all(|s| s.is_finished()) && in_flight(port) == 0
    };
    for _ in 0..SEND_LIMIT.as_millis() / sample.as_millis() {
        if all_in(&senders) {
            break;
        }
        peak = peak.max(relay.status_kib("VmRSS"));
        tokio::time::sleep(sample).await;
    }
    assert!(all_in(&senders), "bodies not in after {SEND_LIMIT:?}");
    let mut clients = Vec::new();
    for s in senders {
        clients.push(s.await.expect("sender"));
    }
    assert!(metric_reaches(&relay, ACTIVE, 20.0).await);
    // VmHWM is the kernel's own peak, between our samples too.
    let peak = peak.max(relay.status_kib("VmHWM"));
    eprintln!(
        "relay RSS: {} MiB at start, peak {} MiB with {SESSIONS} x {} MiB mid-DATA (sent in {:?})",
        before >> 10,
        peak >> 10,
        BODY_BYTES >> 20,
        start.elapsed()
    );
    assert!(peak < MAX_RSS_KIB, "peak RSS {} MiB", peak >> 10);

    // Finish one: it arrives whole and byte-exact behind our Received: header.
    let mut one = clients.remove(7);
    one.send_raw(b".\r\n").await;
    let r = one.read_reply().await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");
    let got = backend.wait_for(1, WAIT).await;
    let want: Vec<u8> = message_pieces(7).flatten().collect();
    let data = &got[0].data;
    assert!(data.len() > want.len() && data.starts_with(b"Received: "));
    let header = data.len() - want.len();
    assert!(header < 1024, "{header} bytes more than sent");
    assert!(data[header..] == want[..], "message 7 changed on the way");
    assert_eq!(got[0].rcpts, ["big7@example.com"]);

    // The others vanish: none is delivered (a small message is the barrier).
    drop(clients);
    assert!(
        metric_reaches(&relay, ACTIVE, 1.0).await,
        "dropped sessions linger"
    );
    one.cmd("MAIL FROM:<s@b.test>", "250").await;
    one.cmd("RCPT TO:<small@example.com>", "250").await;
    one.cmd("DATA", "354").await;
    one.send_raw(b"Subject: small\r\n\r\nx\r\n.\r\n").await;
    // Its commit queues behind the discarding of 380 MiB of staged parts (about
    // 0.7 s in a release build, 25 s in a debug one): more than Client's 10 s.
    assert!(one.line_within(WAIT).await, "no reply to the small message");
    let r = one.read_reply().await;
    assert!(r.matches("250 2.0.0"), "{r}");
    let got = backend.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "an unfinished message was delivered");
    assert_eq!(got[1].rcpts, ["small@example.com"]);
    assert!(metric_reaches(&relay, "breakwater_messages_received_total", 2.0).await);
    assert!(metric_reaches(&relay, "breakwater_queue_depth", 0.0).await);
    one.quit().await;
    relay.term();
    let status = relay.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        relay.log()
    );
}
