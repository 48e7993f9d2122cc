//! Proves that a real full file system (a 24 MiB tmpfs) never gets a false
//! `250`, never a 5xx, loses nothing acknowledged, and does not poison the
//! journal: once space returns, acceptance and delivery resume by themselves,
//! and no recorded delivery is made again, not even after a restart.
//! Needs root (to mount the tmpfs); without it the test says why and passes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.path().to_owned(), dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills `dir` until writing fails; returns the filler's path.
fn fill(dir: &Path, leave: usize) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let _ = f.flush();
    drop(f);
    // Give back a little, so the relay gets somewhat further before it hits the wall.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len.saturating_sub(leave as u64)).unwrap();
    path
}

fn message(i: usize) -> Vec<u8> {
    let mut m =
        format!("Subject: disk {i}\r\nMessage-ID: <disk-{i}@client.test>\r\n\r\n").into_bytes();
    while m.len() < 60_000 {
        m.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrs\r\n",
        );
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_defers_and_recovers_without_loss_or_repeats() {
    let Some(fs) = Tmpfs::mount("24m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root); the full-disk test did not run");
        return;
    };
    let journal = fs.0.join("journal");
    // The backend is down while the disk fills, so mail piles up in the journal.
    let mut backend = Backend::start().await;
    backend.stop().await;
    let extra = "[smtp]\nmax_errors = 1000\n";
    let backend_addr = backend.addr();
    let cfg = |dir: &Path| {
        // min_free_bytes = 0: this test wants the real ENOSPC, not the early refusal.
        config_text(dir, &[backend_addr], extra).replace("[relay]", "min_free_bytes = 0\n[relay]")
    };
    let mut relay = Relay::start_with_text(&journal, &cfg(&journal)).await;
    let filler = fill(&fs.0, 3 << 20);

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let (mut acked, mut refused) = (Vec::new(), 0);
    for i in 0..300 {
        let r = c
            .try_send_message("s@client.test", &["a@example.com"], &message(i))
            .await;
        match r.code {
            250 => acked.push(i),
            421 => {
                c = Client::connect(relay.smtp).await;
                c.ehlo("client.test").await;
                refused += 1;
            }
            400..=499 => refused += 1,
            _ => panic!("message {i}: {r} (only 250 or 4xx are allowed)"),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled up ({} accepted)",
        acked.len()
    );
    eprintln!("{} accepted, then refused with 4xx", acked.len());

    // The backend returns while the disk is still full: deliveries whose
    // outcome cannot be written must not be forgotten (nor repeated later).
    backend.restart().await.unwrap();
    let (status, body) = relay.http("GET", "/readyz").await;
    eprintln!("readyz while full: {status} {body}");
    let progress = wait_until_async(Duration::from_secs(5), || backend.count() > 0).await;
    eprintln!(
        "delivered on a full disk: {} (progress: {progress})",
        backend.count()
    );

    // Space returns: the relay resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = None;
    for i in 1000..1300 {
        let r = c
            .try_send_message("s@client.test", &["a@example.com"], &message(i))
            .await;
        if r.code == 250 {
            resumed = Some(i);
            break;
        }
        assert!(r.code / 100 == 4, "message {i}: {r}");
        if r.code == 421 {
            c = Client::connect(relay.smtp).await;
            c.ehlo("client.test").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("acceptance resumed within ~30 s of space returning");
    acked.push(resumed);
    assert!(
        wait_metric(&relay, "breakwater_queue_depth", 0.0, WAIT).await,
        "queue drained"
    );
    let (status, body) = relay.http("GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Everything acknowledged arrived, and exactly once.
    let want: std::collections::HashSet<String> = acked
        .iter()
        .map(|i| format!("<disk-{i}@client.test>"))
        .collect();
    let seen = count_by_header(&backend.messages(), "Message-ID");
    for id in &want {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} delivered {:?} times",
            seen.get(id)
        );
    }
    c.quit().await;
    // A restart on the same journal repeats nothing that was recorded.
    let before = backend.count();
    relay.stop().await;
    let mut relay = Relay::start_with_text(&journal, &cfg(&journal)).await;
    // A repeat would come within a probe interval (200 ms here); give it 2 s.
    let repeated = wait_until_async(Duration::from_secs(2), || backend.count() > before).await;
    assert!(
        !repeated,
        "a recorded delivery was made again after restart"
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    relay.stop().await;
    backend.stop().await;
    drop(fs);
}
