//! `log.format = "json"`: one JSON object per line, and every line about a
//! message carries its queue id (at the start of the message, as in text).

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_queue_id() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(
        tmp.path(),
        &[backend.addr()],
        "",
        "[log]\nformat = \"json\"\n",
    )
    .await;
    let id = send_each(d.smtp, &["a@example.com"]).await.remove(0);
    backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(wait_until_async(Duration::from_secs(5), || d.log().contains("removed")).await);
    let log = d.log();
    let mut about = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let msg = v["fields"]["message"].as_str().unwrap_or_default();
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if msg.contains(&id) {
            assert!(msg.starts_with(&id), "the id leads: {msg}");
            about += 1;
        }
    }
    assert!(
        about >= 3,
        "received, delivered, removed lines expected:\n{log}"
    );
}
