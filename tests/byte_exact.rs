//! Proves the relay passes messages through byte for byte (leading dots, 8-bit
//! bytes, SMTPUTF8 envelopes, 998-byte last lines), adding exactly one `Received:`
//! header carrying the queue id, via DATA and BDAT, to backends with and without CHUNKING.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const MAIL: &str = "MAIL FROM:<jörg@client.test> SMTPUTF8 BODY=8BITMIME";
const RCPT: &str = "üser@example.com";

/// Leading dots, UTF-8 text and a raw 0xE9 (Latin-1 é) in an 8BITMIME body.
fn dotty_message() -> Vec<u8> {
    [
        "From: Jörg <jörg@client.test>\r\nTo: <üser@example.com>\r\n".as_bytes(),
        b"Subject: byte exact\r\n\r\n.hidden\r\n..double\r\n.\r\n. \r\n",
        "Grüße aus Köln, ünïcödé ✓\r\n".as_bytes(),
        b"raw caf\xE9 and \xFF\x80 bytes\r\n.\r\n.end\r\n",
    ]
    .concat()
}

/// A message whose last line is as long as RFC 5322 allows (998 bytes, the
/// default `delivery.line_length_limit`: longer ones are folded, see
/// long_lines.rs) and ends the message.
fn long_last_line(crlf: bool) -> Vec<u8> {
    let mut m = b"Subject: long\r\n\r\nshort\r\n".to_vec();
    m.extend(std::iter::repeat_n(b'y', 998));
    if crlf {
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Sends one message (DATA if `chunk` is None, else BDAT in `chunk`-byte parts)
/// with an SMTPUTF8 envelope; returns the queue id from the 250 reply.
async fn submit(c: &mut Client, msg: &[u8], chunk: Option<usize>) -> String {
    c.cmd(MAIL, "250").await;
    c.cmd(&format!("RCPT TO:<{RCPT}>"), "250").await;
    let reply = match chunk {
        None => {
            c.cmd("DATA", "354").await;
            let mut body = dot_stuff(msg);
            body.extend_from_slice(b".\r\n");
            c.send_raw(&body).await;
            c.read_reply().await
        }
        Some(n) => {
            let parts: Vec<&[u8]> = msg.chunks(n).collect();
            for p in &parts[..parts.len() - 1] {
                let mut b = format!("BDAT {}\r\n", p.len()).into_bytes();
                b.extend_from_slice(p);
                c.send_raw(&b).await;
                assert!(c.read_reply().await.matches("250"));
            }
            let p = parts[parts.len() - 1];
            let mut b = format!("BDAT {} LAST\r\n", p.len()).into_bytes();
            b.extend_from_slice(p);
            c.send_raw(&b).await;
            c.read_reply().await
        }
    };
    let line = reply.first_line();
    let id = line.strip_prefix("250 2.0.0 Ok: queued as ");
    let id = id.unwrap_or_else(|| panic!("expected queued reply, got {reply}"));
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    id.to_string()
}

/// Splits off the first header field: its first line and all continuation lines.
fn split_received(data: &[u8]) -> (&[u8], &[u8]) {
    let mut end = 0;
    for _ in 0..64 {
        let eol = data[end..].windows(2).position(|w| w == b"\r\n");
        end += eol.expect("header line ends with CRLF") + 2;
        if !matches!(data.get(end), Some(b' ' | b'\t')) {
            return data.split_at(end);
        }
    }
    panic!("Received header longer than 64 lines");
}

/// Waits for the `n`th delivery and checks it is our `Received:` header (with
/// queue `id`) followed by exactly the bytes of `msg`.
async fn assert_exact(backend: &Backend, n: usize, id: &str, msg: &[u8]) {
    let got = backend.wait_for(n, WAIT).await;
    assert_eq!(got.len(), n, "a message was delivered twice");
    let m = &got[n - 1];
    let (header, rest) = split_received(&m.data);
    assert_eq!(m.data, [header, msg].concat(), "got:\n{}", m.data_str());
    assert!(header.starts_with(b"Received: from "), "{}", m.data_str());
    assert!(!rest.starts_with(b"Received:"), "two Received headers");
    let h = String::from_utf8_lossy(header);
    assert!(h.contains(&format!("with UTF8SMTP id {id}")), "{h}");
    assert!(h.contains(&format!("for <{RCPT}>")), "{h}");
    assert_eq!(m.mail_from, "jörg@client.test");
    assert_eq!(m.rcpts, [RCPT]);
    let p = &m.mail_params;
    assert!(p.contains("SMTPUTF8") && p.contains("BODY=8BITMIME"), "{p}");
}

/// Sends every test message through DATA and BDAT and checks each delivery.
async fn run_all(opts: BackendOptions) -> Backend {
    let chunking = opts.chunking;
    let backend = Backend::start_with(opts).await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut cases: Vec<(Vec<u8>, Option<usize>)> = vec![
        (dotty_message(), None),
        (dotty_message(), Some(7)),
        (long_last_line(true), None),
        (long_last_line(true), Some(1000)),
    ];
    if chunking {
        // BDAT lets a message end without CRLF; relayed by BDAT it stays unchanged.
        cases.push((long_last_line(false), Some(1024)));
    }
    for (i, (msg, chunk)) in cases.iter().enumerate() {
        let id = submit(&mut c, msg, *chunk).await;
        assert_exact(&backend, i + 1, &id, msg).await;
    }
    c.quit().await;
    relay.stop().await;
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_exact_through_a_chunking_backend() {
    let mut backend = run_all(BackendOptions::default()).await;
    let cmds = backend.commands();
    assert!(cmds.iter().any(|c| c.starts_with("BDAT")), "{cmds:?}");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_exact_through_a_backend_without_chunking() {
    let opts = BackendOptions {
        chunking: false,
        ..BackendOptions::default()
    };
    let mut backend = run_all(opts).await;
    let cmds = backend.commands();
    assert!(cmds.iter().any(|c| c == "DATA"), "{cmds:?}");
    assert!(!cmds.iter().any(|c| c.starts_with("BDAT")), "{cmds:?}");
    backend.stop().await;
}
