//! `kill -9` after 250 loses nothing: every acknowledged message is delivered
//! after the binary restarts on the same journal.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 50;

/// The queue id in "250 2.0.0 Ok: queued as <id>".
fn queue_id(reply: &Reply) -> String {
    let line = reply.first_line();
    let id = line.rsplit(' ').next().unwrap_or_default().to_owned();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "no queue id in {line:?}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Backend down: nothing listens on its address during the first run.
    let backend_addr = loopback(free_port());
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", "").await;

    // Message-ID -> queue id from the 250 reply.
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..N {
        let mid = format!("<crash-{i}@client.test>");
        let data = format!("Subject: crash {i}\r\nMessage-ID: {mid}\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "message {i}: {reply}"
        );
        acked.insert(mid, queue_id(&reply));
    }
    assert_eq!(acked.len(), N);

    // No goodbye: the process dies mid-session, with the client still connected.
    relay.kill9();
    assert!(c.is_closed().await, "the killed relay's socket is closed");

    let backend = Backend::start_on(backend_addr)
        .await
        .expect("start backend");
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", "").await;
    let got = backend.wait_for(N, Duration::from_secs(20)).await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &got {
        let data = m.data_str();
        let mid = m
            .header("Message-ID")
            .unwrap_or_else(|| panic!("no Message-ID in {data}"));
        let id = acked
            .get(&mid)
            .unwrap_or_else(|| panic!("unexpected message {mid}"));
        assert!(
            data.contains(&format!(" id {id}")),
            "{mid} relayed under another queue id than {id}:\n{data}"
        );
        *seen.entry(mid.to_owned()).or_default() += 1;
    }
    let missing: Vec<&String> = acked.keys().filter(|m| !seen.contains_key(*m)).collect();
    assert!(missing.is_empty(), "lost after kill -9: {missing:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "nothing was in flight (backend down), so nothing is duplicated: {seen:?}"
    );

    relay.term();
    let status = relay.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        relay.log()
    );
}
