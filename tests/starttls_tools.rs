//! Proves STARTTLS works with the TLS clients admins actually use to test an
//! MX: `openssl s_client -starttls smtp` (verifying the certificate and host
//! name) and `swaks --tls`. Where a tool is missing the test says so and
//! passes, except under CI (`CI` set), where `.ci/run` installs them.

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing under CI"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Runs `cmd` with `input` on stdin, killed after [`WAIT`]; its exit status and output.
async fn run(mut cmd: tokio::process::Command, input: &[u8]) -> (bool, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the client finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_swaks_deliver_over_starttls() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::create(tmp.path(), "relay.test");
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], &cert.config()).await;
    let port = relay.smtp.port().to_string();
    let mut expected = 0;

    if have("openssl") {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args(["s_client", "-starttls", "smtp", "-crlf", "-quiet"])
            .args([
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "relay.test",
            ])
            .args([
                "-verify_return_error",
                "-verify_hostname",
                "relay.test",
                "-CAfile",
            ])
            .arg(&cert.cert);
        let input = b"EHLO openssl.test\nMAIL FROM:<s@client.test>\nRCPT TO:<a@example.com>\n\
            DATA\nSubject: openssl\n\nover s_client\n.\nQUIT\n";
        let (_, out) = run(cmd, input).await;
        assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
        expected += 1;
        let got = backend.wait_for(expected, WAIT).await;
        assert!(got[expected - 1].data_str().contains("with ESMTPS id"));
    }
    if have("swaks") {
        let mut cmd = tokio::process::Command::new("swaks");
        cmd.args(["--server", &format!("127.0.0.1:{port}"), "--tls"])
            .args(["--from", "s@client.test", "--to", "a@example.com"])
            .args(["--helo", "swaks.test", "--header", "Subject: swaks"]);
        let (ok, out) = run(cmd, b"").await;
        assert!(ok, "swaks failed:\n{out}");
        assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
        expected += 1;
        let got = backend.wait_for(expected, WAIT).await;
        let text = got[expected - 1].data_str();
        assert!(
            text.contains("with ESMTPS id") && text.contains("Subject: swaks"),
            "{text}"
        );
    }
    relay.stop().await;
    backend.stop().await;
}
