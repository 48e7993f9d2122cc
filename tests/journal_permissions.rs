//! Proves the journal is private: `breakwater run` creates its directory 0700
//! and file 0600 whatever the umask, tightens a directory others can read, and
//! refuses to start (exit 1, saying why) on one other users can write to.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `breakwater run` on `config` until it listens on `smtp` (then kills
/// it) or exits (at most 20 s). Returns (exit code if it exited, stderr).
async fn run_until(config: &Path, smtp: std::net::SocketAddr) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            exited = status.code();
            break;
        }
        if std::net::TcpStream::connect_timeout(&smtp, Duration::from_millis(100)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if exited.is_none() {
        let _ = child.start_kill();
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (exited, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_private_and_a_world_writable_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("spool/journal");
    let (smtp, admin) = (loopback(free_port()), loopback(free_port()));
    let text = config_text(
        &journal,
        &[loopback(free_port())],
        &format!("[smtp]\nlisten = [\"{smtp}\"]\n[admin]\nlisten = \"{admin}\"\n"),
    );
    let config = tmp.path().join("breakwater.toml");
    std::fs::write(&config, text).unwrap();

    let (exited, log) = run_until(&config, smtp).await;
    assert_eq!(exited, None, "it should have started:\n{log}");
    assert_eq!(mode(&journal), 0o700);
    assert_eq!(mode(&journal.join("journal.redb")), 0o600);

    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        journal.join("journal.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (exited, log) = run_until(&config, smtp).await;
    assert_eq!(exited, None, "{log}");
    assert_eq!(mode(&journal), 0o700, "tightened:\n{log}");
    assert_eq!(mode(&journal.join("journal.redb")), 0o600);

    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (exited, log) = run_until(&config, smtp).await;
    assert_eq!(exited, Some(1), "{log}");
    assert!(log.contains("writable by other users"), "{log}");
    assert!(log.contains("journal.path"), "{log}");
}
