//! Retention and replay: with `journal.retain_delivered` on, delivered mail
//! stays in the journal; after the backend "was restored from a backup" (its
//! store wiped), `breakwater replay --since T` delivers every message again,
//! exactly once, byte for byte behind one `Received:` and an
//! `X-Breakwater-Replay:` header. The same replay given again sends nothing;
//! `--dry-run` sends nothing.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 100;

/// Splits a replayed copy into (replay id, the original bytes behind our two
/// header lines); panics if the headers are not there as promised.
fn unwrap_replay(data: &[u8]) -> (String, &[u8]) {
    let text = String::from_utf8_lossy(data);
    assert!(
        text.starts_with("Received: by relay.test (breakwater replay R"),
        "{text}"
    );
    // "Received: ...;\r\n\t<date>\r\nX-Breakwater-Replay: ID\r\n"
    let mut end = 0;
    let mut lines = 0;
    let mut id = String::new();
    while lines < 3 {
        let eol = data[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line");
        let line = String::from_utf8_lossy(&data[end..end + eol]).into_owned();
        if let Some(v) = line.strip_prefix("X-Breakwater-Replay: ") {
            id = v.to_owned();
        }
        end += eol + 2;
        lines += 1;
    }
    assert!(id.starts_with('R'), "{text}");
    (id, &data[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_backend_restore_sends_each_message_once() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(
        tmp.path(),
        &[backend.addr()],
        "[delivery]\nretry = [\"1s\"]\nconcurrency = 8\n",
    )
    .replace("[journal]\n", "[journal]\nretain_delivered = \"7d\"\n");
    let relay = Relay::start_with_text(tmp.path(), &text).await;
    let admin = format!("http://{}", relay.admin);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let rcpts: Vec<String> = (0..N).map(|i| format!("u{}@example.com", i % 7)).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send_each(relay.smtp, &refs).await;
    let first = backend.wait_for(N, Duration::from_secs(60)).await;
    assert_eq!(first.len(), N);
    assert!(
        wait_metric(
            &relay,
            "breakwater_retained_messages",
            N as f64,
            Duration::from_secs(10)
        )
        .await,
        "every delivered message retained"
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);

    // Retained mail is listed as delivered, with the backend's reply.
    let run = cli(
        &[
            "queue",
            "list",
            "--state",
            "delivered",
            "--limit",
            "0",
            "--json",
            "--admin",
            &admin,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let listed = run.json()["messages"].as_array().unwrap().clone();
    assert_eq!(listed.len(), N, "{}", run.stdout);
    let id = listed[0]["id"].as_str().unwrap();
    let run = cli(&["queue", "show", id, "--json", "--admin", &admin], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let shown = run.json();
    assert!(shown["retained_until"].as_str().is_some(), "{shown}");
    assert_eq!(shown["recipients"][0]["state"], "delivered");
    assert_eq!(shown["recipients"][0]["backend"], "b0");
    assert_eq!(shown["recipients"][0]["last_reply"]["code"], 250, "{shown}");
    // ... but not in the queue proper.
    let run = cli(&["queue", "list", "--json", "--admin", &admin], &[]).await;
    assert_eq!(run.json()["messages"].as_array().unwrap().len(), 0);

    // The backend is restored from last night's backup: today's mail is gone.
    let originals: HashMap<String, Vec<u8>> = first
        .iter()
        .map(|m| (m.header("Subject").unwrap(), m.data.clone()))
        .collect();
    backend.clear_messages();

    // A dry run lists what would go and sends nothing.
    let run = cli(
        &["replay", "--since", &since, "--dry-run", "--admin", &admin],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("would send {N} message(s)")),
        "{}",
        run.stdout
    );
    let run = cli(
        &[
            "replay",
            "--since",
            &since,
            "--dry-run",
            "--recipient",
            "u3@example.com",
            "--json",
            "--admin",
            &admin,
        ],
        &[],
    )
    .await;
    let dry = run.json();
    let want = rcpts.iter().filter(|r| r.starts_with("u3@")).count();
    assert_eq!(dry["matched"], want as u64, "{dry}");
    assert_eq!(dry["messages"].as_array().unwrap().len(), want);

    // The replay: every message once, original bytes behind the two headers.
    let run = cli(&["replay", "--since", &since, "--admin", &admin], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("matched {N}, delivered {N}, failed 0, skipped 0")),
        "{}",
        run.stdout
    );
    let again = backend.wait_for(N, Duration::from_secs(60)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut replay_ids = std::collections::HashSet::new();
    for m in &again {
        let (id, original) = unwrap_replay(&m.data);
        replay_ids.insert(id);
        let subject = String::from_utf8_lossy(original)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            .unwrap();
        assert_eq!(
            original,
            originals[&subject].as_slice(),
            "{subject} byte for byte"
        );
        *seen.entry(subject).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "every message came back");
    assert!(
        seen.values().all(|&n| n == 1),
        "each exactly once: {seen:?}"
    );
    assert_eq!(replay_ids.len(), 1);
    assert_eq!(
        relay.counter("breakwater_replayed_messages_total").await,
        N as f64
    );

    // The same replay by mistake: nothing new is queued or sent.
    let run = cli(
        &["replay", "--since", &since, "--json", "--admin", &admin],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(
        (
            v["matched"].as_u64(),
            v["queued"].as_u64(),
            v["skipped"].as_u64()
        ),
        (Some(N as u64), Some(0), Some(N as u64)),
        "{v}"
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    assert_eq!(backend.count(), N, "nothing sent twice");

    // Refusals are clear.
    let run = cli(&["replay", "--since", "yesterday", "--admin", &admin], &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("RFC 3339"), "{}", run.stderr);
    let run = cli(
        &[
            "replay", "--since", &since, "--to", "nosuch", "--admin", &admin,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no backend named"), "{}", run.stderr);
}
