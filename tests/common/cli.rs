//! The `breakwater` binary run as a CLI command against a relay's admin API.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `breakwater ARGS` with extra environment `env` on a blocking thread
/// (the test's own servers keep running), killed by PID after 30 s.
pub async fn cli(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_breakwater"));
        cmd.args(&args)
            .env_remove("BREAKWATER_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn breakwater");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("breakwater {args:?} still running after 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    })
    .await
    .expect("cli task")
}

/// Sends a raw HTTP/1.0 request (`head` without the final blank line) and
/// returns the status, the head and the body of the answer.
pub async fn raw_http(addr: std::net::SocketAddr, head: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect admin");
        s.write_all(format!("{head}\r\n\r\n").as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (status, h.to_owned(), b.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("admin answers within 15 s")
}
