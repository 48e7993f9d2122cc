//! `breakwater check-config` reports every problem with its key path (exit 1),
//! accepts the reference config (exit 0); `queue` without a daemon exits 2.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// Runs the built binary with `args` (bounded): (exit code, stdout, stderr).
async fn breakwater(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("breakwater finishes within 20 s")
        .expect("run breakwater");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `check-config` on `text` written to a file in `dir`.
async fn check(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    let (code, _, stderr) = breakwater(&["check-config", "--config", file.to_str().unwrap()]).await;
    (code, stderr)
}

const MANY_ERRORS: &str = r#"
hostname = "relay.test"
[smtp]
listen = ["not-an-address"]
max_recipients = 0
[delivery]
retry = []
[[backend]]
name = "primary"
address = "127.0.0.1"
[[backend]]
name = "primary"
address = "127.0.0.1:2526"
[[quiet_time]]
name = "patch-night"
timezone = "Mars/Olympus_Mons"
start = "22:00"
end = "02:00"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_listed_with_its_key_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = check(tmp.path(), "many.toml", MANY_ERRORS).await;
    assert_eq!(code, Some(1), "{stderr}");
    for key in [
        "smtp.listen[0]",
        "smtp.max_recipients",
        "relay.domains",
        "backend[0].address",
        "backend[1].name",
        "delivery.retry",
        "quiet_time[0].timezone",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_errors_name_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = "[relay]\ndomains = [\"example.com\"]\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:25\"\n";

    // A bad duration fails deserialisation: reported alone, naming its key.
    let text = format!("{base}[smtp]\nidle_timeout = \"5x\"\n");
    let (code, stderr) = check(tmp.path(), "duration.toml", &text).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("idle_timeout"), "key missing:\n{stderr}");
    assert!(stderr.contains("5x"), "value missing:\n{stderr}");
    assert!(stderr.contains("line 7"), "line missing:\n{stderr}");

    let text = format!("{base}[delivery]\nretry_every = \"1m\"\n");
    let (code, stderr) = check(tmp.path(), "unknown.toml", &text).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("retry_every"), "key missing:\n{stderr}");

    // And the same base without mistakes passes.
    let (code, stderr) = check(tmp.path(), "ok.toml", base).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/breakwater.toml");
    let (code, stdout, stderr) =
        breakwater(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_command_without_daemon_exits_2() {
    let url = format!("http://{}", loopback(free_port()));
    let (code, _, stderr) = breakwater(&["queue", "flush", "--admin", &url]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&url),
        "names the address it tried:\n{stderr}"
    );
}
