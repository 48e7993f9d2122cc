//! Proves, over a real socket, that no fake end of data (bare CR / bare LF / NUL
//! variants of CR LF . CR LF) smuggles a second message: in DATA (one write, the
//! whole transaction pipelined, or split inside the sequence) and in BDAT (inside
//! a chunk, or across two), each message is refused with `550 5.6.0`, nothing
//! with a bare CR, bare LF or NUL reaches the backend, and the session stays usable.

mod common;
use common::*;
use std::time::Duration;

// Every refusal counts against smtp.max_errors; this session makes many.
const EXTRA: &str = "[smtp]\nmax_errors = 1000\n";
const WAIT: Duration = Duration::from_secs(10);
/// The smuggling sequences the issue names (`\n.\n`, `\r\n.\r\r\n`, ...).
const SEQUENCES: &[&[u8]] = breakwater::smtp::data::SMUGGLING;
const COVER: &[u8] = b"Subject: cover\r\n\r\ncover text";
const SMUGGLED: &[u8] = b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@example.com>\r\n\
    DATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
const ENVELOPE: &[u8] = b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.com>\r\n";
/// Between two writes, so that the relay reads them apart.
const GAP: Duration = Duration::from_millis(20);

/// Sends `pieces` as separate writes and reads the one reply that must follow.
async fn send_pieces(c: &mut Client, pieces: &[&[u8]]) -> Reply {
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(GAP).await;
        }
        c.send_raw(p).await;
    }
    c.read_reply().await
}

/// Reads the two `250`s of a pipelined [`ENVELOPE`].
async fn envelope_ok(c: &mut Client, what: &str) {
    for _ in 0..2 {
        let r = c.read_reply().await;
        assert!(r.matches("250"), "{what}: {r}");
    }
}

/// The reply is the refusal, and no smuggled command was answered after it.
async fn assert_refused(c: &mut Client, r: &Reply, what: &str) {
    assert!(r.matches("550 5.6.0"), "{what}: {r}");
    // A NOOP's 250 must be the very next reply: nothing else was executed.
    c.cmd("NOOP", "250 2.0.0 Ok").await;
}

/// True if every CR is followed by LF, every LF preceded by CR, and no NUL.
fn clean(data: &[u8]) -> bool {
    data.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => data.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && data[i - 1] == b'\r',
        0 => false,
        _ => true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_ends_of_data_never_smuggle_a_message() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut refused = 0.0;
    for seq in SEQUENCES {
        let body = [COVER, seq, SMUGGLED, b"b\r\n.\r\n"].concat();
        // The whole transaction in one write, as a smuggling sender would.
        c.send_raw(&[ENVELOPE, b"DATA\r\n", &body].concat()).await;
        envelope_ok(&mut c, "pipelined").await;
        assert!(c.read_reply().await.matches("354"), "{seq:?} pipelined");
        let r = c.read_reply().await;
        assert_refused(&mut c, &r, &format!("{seq:?} pipelined")).await;
        // The body in one write after 354, then split inside and around the sequence.
        let at = COVER.len();
        let mut splits: Vec<Vec<usize>> = vec![vec![], vec![at, at + seq.len()]];
        splits.extend((1..seq.len()).map(|k| vec![at + k]));
        for cuts in &splits {
            c.send_raw(ENVELOPE).await;
            envelope_ok(&mut c, "DATA").await;
            c.cmd("DATA", "354").await;
            let mut pieces = Vec::new();
            let mut from = 0;
            for &cut in cuts.iter().chain([body.len()].iter()) {
                pieces.push(&body[from..cut]);
                from = cut;
            }
            let r = send_pieces(&mut c, &pieces).await;
            assert_refused(&mut c, &r, &format!("{seq:?} DATA cut at {cuts:?}")).await;
        }
        refused += 1.0 + splits.len() as f64;
        // BDAT: the sequence inside one chunk, then split across two chunks.
        let chunk = [COVER, seq, SMUGGLED, b"b\r\n"].concat();
        let mut one = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
        one.extend_from_slice(&chunk);
        c.send_raw(&[ENVELOPE, &one].concat()).await;
        envelope_ok(&mut c, "BDAT").await;
        let r = c.read_reply().await;
        assert_refused(&mut c, &r, &format!("{seq:?} in one BDAT chunk")).await;
        for k in 1..seq.len() {
            let (a, b) = chunk.split_at(at + k);
            c.send_raw(ENVELOPE).await;
            envelope_ok(&mut c, "BDAT").await;
            let first = [format!("BDAT {}\r\n", a.len()).as_bytes(), a].concat();
            let r = send_pieces(&mut c, &[&first]).await;
            assert!(r.matches("250"), "{seq:?} first chunk: {r}");
            let last = [format!("BDAT {} LAST\r\n", b.len()).as_bytes(), b].concat();
            let r = send_pieces(&mut c, &[&last]).await;
            assert_refused(&mut c, &r, &format!("{seq:?} across chunks at {k}")).await;
        }
        refused += seq.len() as f64;
    }
    let smuggling = "breakwater_smtp_rejections_total{reason=\"smuggling\"}";
    assert_eq!(relay.counter(smuggling).await, refused);

    // A clean message afterwards is delivered, and is the only one (the barrier).
    let good = b"Subject: clean\r\n\r\nthe barrier\r\n";
    let r = c
        .send_message("s@client.test", &["good@example.com"], good)
        .await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "{r}");
    backend.wait_for(1, WAIT).await;
    let got = backend.messages();
    let ok = |m: &Received| m.rcpts == ["good@example.com"] && m.data.ends_with(good);
    assert!(got.len() == 1 && ok(&got[0]), "{got:?}");
    assert!(
        got.iter().all(|m| clean(&m.data)),
        "bare CR/LF or NUL: {got:?}"
    );
    let cmds = backend.commands();
    assert!(
        !cmds
            .iter()
            .any(|l| l.contains("evil") || l.contains("victim")),
        "{cmds:?}"
    );
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
