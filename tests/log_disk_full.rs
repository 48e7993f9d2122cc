//! Losing log lines never stops mail. With stderr on `/dev/full` (every write
//! fails with ENOSPC, as when the log's file system is full) the relay still
//! accepts, journals and delivers everything. Before the fix, the logging
//! layer reported its failed write with `eprintln!`, which panicked and killed
//! the task or thread that was logging: deliveries stayed "in flight" for ever
//! and the journal's only writer died.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const N: usize = 20;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_loses_log_lines_not_mail() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here: test skipped");
        return;
    };
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (smtp, admin) = (loopback(free_port()), loopback(free_port()));
    let text = config_text(
        &tmp.path().join("journal"),
        &[backend.addr()],
        &format!("[smtp]\nlisten = [\"{smtp}\"]\n[admin]\nlisten = \"{admin}\"\n"),
    );
    let config = tmp.path().join("breakwater.toml");
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["run", "--config", &config.display().to_string()])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .expect("spawn breakwater");
    let mut relay = Kill(child);
    let up = wait_until_async(Duration::from_secs(15), || {
        std::net::TcpStream::connect_timeout(&smtp, Duration::from_millis(100)).is_ok()
    })
    .await;
    assert!(up, "the relay listens although it cannot write its log");

    let rcpts: Vec<String> = (0..N).map(|i| format!("u{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send_each(smtp, &refs).await;
    let got = backend.wait_for(N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), N, "every message delivered");
    assert!(
        wait_metric_at(
            admin,
            "breakwater_queue_depth",
            0.0,
            Duration::from_secs(10)
        )
        .await,
        "nothing stuck in flight"
    );
    assert!(
        matches!(relay.0.try_wait(), Ok(None)),
        "the relay is still running"
    );
    // And it still takes mail (the journal's writer is alive).
    send_each(smtp, &["late@example.com"]).await;
    backend.wait_for(N + 1, Duration::from_secs(30)).await;
    let _ = relay.0.kill();
}
