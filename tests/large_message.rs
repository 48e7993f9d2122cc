//! A ~8 MB message is delivered byte for byte (plus the relay's `Received:`)
//! to a backend with CHUNKING and to one with DATA only. The relay streams it
//! from the journal: the BDAT backend sees many bounded chunks, never the
//! whole message in one.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const SIZE: usize = 8 * 1024 * 1024;
/// Largest BDAT chunk the relay may send (it reads ~64 KB slices).
const MAX_CHUNK: usize = 256 * 1024;

/// Lines of 0 to 998 octets (none folded), some starting with dots, some with
/// 8-bit bytes, from a fixed seed; about `SIZE` bytes, ending with CRLF.
fn large_message() -> Vec<u8> {
    let mut m = b"Subject: large\r\nMIME-Version: 1.0\r\n\r\n".to_vec();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..1_000_000 {
        if m.len() >= SIZE {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 999) as usize;
        let lead: &[u8] = match seed >> 60 {
            0 => b".",
            1 => b"..",
            _ => b"",
        };
        m.extend_from_slice(lead);
        let fill = [b'a' + (seed >> 32) as u8 % 26, 0xC3, 0xA9, b' '];
        m.extend((0..len.saturating_sub(lead.len())).map(|i| fill[i % fill.len()]));
        m.extend_from_slice(b"\r\n");
    }
    m
}

async fn deliver(opts: BackendOptions, msg: &[u8]) -> Backend {
    let backend = Backend::start_with(opts).await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mail = "MAIL FROM:<sender@client.test> BODY=8BITMIME";
    c.cmd(mail, "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    let mut body = dot_stuff(msg);
    body.extend_from_slice(b".\r\n");
    c.send_raw(&body).await;
    let reply = c.read_reply().await;
    assert!(reply.matches("250"), "{reply}");
    c.quit().await;
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].data.starts_with(b"Received: "));
    assert!(got[0].after_trace() == msg, "not byte-exact");
    relay.stop().await;
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_through_bdat_in_bounded_chunks() {
    let msg = large_message();
    let mut backend = deliver(BackendOptions::default(), &msg).await;
    let chunks: Vec<usize> = backend
        .commands()
        .iter()
        .filter_map(|c| c.strip_prefix("BDAT "))
        .map(|arg| arg.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(chunks.len() >= msg.len() / MAX_CHUNK, "{chunks:?}");
    assert!(chunks.iter().all(|&n| n <= MAX_CHUNK), "{chunks:?}");
    let sent: usize = chunks.iter().sum();
    assert!(sent > msg.len(), "the message and our Received: header");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_through_data() {
    let opts = BackendOptions {
        chunking: false,
        ..BackendOptions::default()
    };
    let msg = large_message();
    let mut backend = deliver(opts, &msg).await;
    let cmds = backend.commands();
    assert!(cmds.iter().any(|c| c == "DATA"), "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.starts_with("BDAT")), "{cmds:?}");
    backend.stop().await;
}
