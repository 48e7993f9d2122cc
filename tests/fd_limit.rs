//! Proves that a relay started under a low open-file limit caps
//! `smtp.max_connections` to what fits (saying so in its log), so clients
//! beyond it get `421 4.3.2` instead of no greeting at all.

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The open-file limit the relay runs under.
const NOFILE: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_file_limit_clients_get_421_not_silence() {
    let tmp = tempfile::tempdir().unwrap();
    let (smtp, admin) = (loopback(free_port()), loopback(free_port()));
    let text = config_text(
        &tmp.path().join("journal"),
        &[loopback(free_port())],
        &format!(
            "[smtp]\nlisten = [\"{smtp}\"]\nmax_connections = 1000\nmax_connections_per_ip = 1000\n\
             [admin]\nlisten = \"{admin}\"\n"
        ),
    );
    let config = tmp.path().join("breakwater.toml");
    std::fs::write(&config, text).unwrap();
    let log = tmp.path().join("stderr.log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let up = wait_until_async(Duration::from_secs(15), || {
        std::net::TcpStream::connect_timeout(&smtp, Duration::from_millis(100)).is_ok()
    })
    .await;
    assert!(up, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // The port is bound before the relay starts serving: wait for its word.
    let capped = wait_until_async(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("does not fit the open-file limit"))
    })
    .await;
    assert!(
        capped,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // More connections than the limit allows sessions: every one gets a reply.
    let mut conns = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for i in 0..(NOFILE as usize + 50) {
        let mut s = tokio::net::TcpStream::connect(smtp).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i} got no reply at all"))
            .unwrap();
        match &buf[..n.min(9)] {
            b"220 relay" => greeted += 1,
            b"421 4.3.2" => refused += 1,
            other => panic!("connection {i}: {:?}", String::from_utf8_lossy(other)),
        }
        conns.push(s);
    }
    assert!(
        greeted > 0 && refused > 0,
        "greeted {greeted}, refused {refused}"
    );
    drop(conns);
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
