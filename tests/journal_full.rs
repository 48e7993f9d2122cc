//! A full journal answers `452 4.3.1` (never 250, never 5xx) and accepts mail
//! again once delivery has made room.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;

const MAX_BYTES: usize = 20_000;
const MSG_SIZE: usize = 4096;

/// `config_text` with `journal.max_bytes` (which it cannot take through `extra`).
fn config(dir: &Path, backend: SocketAddr) -> breakwater::config::Config {
    let text = format!(
        "hostname = \"relay.test\"\n[journal]\npath = {:?}\nmax_bytes = {MAX_BYTES}\n\
         [relay]\ndomains = [\"example.com\"]\n\
         [[backend]]\nname = \"b0\"\naddress = \"{backend}\"\npriority = 10\nconnect_timeout = \"2s\"\n\
         [delivery]\nretry = [\"1s\"]\nshutdown_grace = \"2s\"\n",
        dir.display().to_string()
    );
    breakwater::config::Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A 4 KiB message numbered `i`.
fn message(i: usize) -> Vec<u8> {
    let mut m = format!("Subject: full {i}\r\n\r\n").into_bytes();
    while m.len() < MSG_SIZE {
        m.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_journal_defers_with_452_and_recovers_after_delivery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backend_addr = loopback(free_port()); // down until the journal is full
    let smtp = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let (smtp_addr, admin_addr) = (smtp.local_addr().unwrap(), admin.local_addr().unwrap());
    let listeners = breakwater::Listeners {
        smtp: vec![smtp],
        admin: Some(admin),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(breakwater::run(
        config(tmp.path(), backend_addr),
        listeners,
        async {
            let _ = stopped.await;
        },
    ));

    let mut c = Client::connect(smtp_addr).await;
    c.ehlo("client.test").await;
    let mut accepted = 0;
    let mut refused = 0;
    // 20000 / ~4.3 KiB (message + Received header): at most 4 fit; try 8.
    for i in 0..8 {
        let reply = c
            .send_message("s@client.test", &["a@example.com"], &message(i))
            .await;
        if reply.code == 250 {
            assert_eq!(refused, 0, "250 after the journal was full: {reply}");
            accepted += 1;
        } else {
            assert!(reply.matches("452 4.3.1"), "message {i}: {reply}");
            refused += 1;
        }
    }
    assert!(
        accepted >= 1 && accepted * MSG_SIZE <= MAX_BYTES,
        "{accepted} accepted"
    );
    assert!(refused >= 1, "journal of {MAX_BYTES} bytes never filled up");
    // The session survives the refusal: the client may simply try again later.
    c.cmd("NOOP", "250").await;

    let backend = Backend::start_on(backend_addr)
        .await
        .expect("start backend");
    backend.wait_for(accepted, Duration::from_secs(20)).await;
    let drained = wait_until_async(Duration::from_secs(10), || {
        let (_, body) = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(http(admin_addr, "GET", "/metrics"))
        });
        metric_value(&body, "breakwater_queue_depth") == Some(0.0)
    })
    .await;
    assert!(drained, "queue never drained");

    for i in 100..100 + accepted {
        let reply = c
            .send_message("s@client.test", &["a@example.com"], &message(i))
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "after drain, message {i}: {reply}"
        );
    }
    c.quit().await;
    let got = backend
        .wait_for(2 * accepted, Duration::from_secs(20))
        .await;
    let mut subjects: Vec<String> = got.iter().filter_map(|m| m.header("Subject")).collect();
    subjects.sort();
    let mut want: Vec<String> = (0..accepted)
        .chain(100..100 + accepted)
        .map(|i| format!("full {i}"))
        .collect();
    want.sort();
    assert_eq!(
        subjects, want,
        "the accepted messages, each once, and none of the refused"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("relay stops")
        .expect("relay task")
        .expect("relay run ok");
}
