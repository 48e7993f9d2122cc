//! The built `breakwater` binary as a child process, for crash and signal tests.
//!
//! [`Daemon::start`] writes a config (journal in `dir/journal`, SMTP and admin on
//! fresh loopback ports) and runs `breakwater run --config FILE`, waiting until
//! the SMTP port accepts. Stderr goes to a file in `dir` for diagnostics. The
//! child is killed by PID when the guard is dropped, whatever the test did.
#![allow(dead_code)]

use crate::common::{config_text, free_port, loopback, wait_until_async};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long the binary may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Port clashes (another test took our free port) are retried this often.
const SPAWN_ATTEMPTS: usize = 3;

/// A running `breakwater run` child process.
pub struct Daemon {
    child: Option<Child>,
    pub smtp: SocketAddr,
    pub admin: SocketAddr,
    pub journal: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    /// Starts the binary on the journal in `dir/journal`. `smtp_keys` are extra
    /// lines inside `[smtp]`, `extra` whole other sections (e.g. `[delivery]`).
    pub async fn start(
        dir: &Path,
        backends: &[SocketAddr],
        smtp_keys: &str,
        extra: &str,
    ) -> Daemon {
        Daemon::start_inner(dir, backends, smtp_keys, extra, None).await
    }

    async fn start_inner(
        dir: &Path,
        backends: &[SocketAddr],
        smtp_keys: &str,
        extra: &str,
        relay: Option<&str>,
    ) -> Daemon {
        let journal = dir.join("journal");
        for attempt in 1..=SPAWN_ATTEMPTS {
            let (smtp, admin) = (loopback(free_port()), loopback(free_port()));
            let tail = format!(
                "{extra}\n[smtp]\nlisten = [\"{smtp}\"]\n{smtp_keys}\n[admin]\nlisten = \"{admin}\"\n"
            );
            let config = dir.join("breakwater.toml");
            let mut text = config_text(&journal, backends, &tail);
            if let Some(relay) = relay {
                text = text.replace("[relay]\ndomains = [\"example.com\"]\n", relay);
            }
            std::fs::write(&config, text).expect("write config");
            let stderr = dir.join(format!("stderr-{}.log", unique()));
            let file = std::fs::File::create(&stderr).expect("create stderr log");
            let child = Command::new(env!("CARGO_BIN_EXE_breakwater"))
                .arg("run")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .expect("spawn breakwater");
            let mut d = Daemon {
                child: Some(child),
                smtp,
                admin,
                journal: journal.clone(),
                stderr,
            };
            let mut exited = false;
            let up = wait_until_async(START_TIMEOUT, || {
                exited = d
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                exited || TcpStream::connect_timeout(&smtp, Duration::from_millis(100)).is_ok()
            })
            .await;
            if up && !exited {
                return d;
            }
            let log = d.log();
            d.kill9();
            let clash = log.contains("in use");
            assert!(
                clash && attempt < SPAWN_ATTEMPTS,
                "breakwater did not start (attempt {attempt}):\n{log}"
            );
        }
        unreachable!("every start attempt either returns or panics")
    }

    /// Like [`Daemon::start`], with `relay` (a whole `[relay]` section)
    /// instead of the default one (`domains = ["example.com"]`).
    pub async fn start_with_relay(dir: &Path, backends: &[SocketAddr], relay: &str) -> Daemon {
        Daemon::start_inner(dir, backends, "", "", Some(relay)).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child running").id()
    }

    /// A value in KiB from /proc/PID/status, e.g. `VmRSS` (resident now) or
    /// `VmHWM` (the peak resident size so far).
    pub fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let line = status.lines().find(|l| l.starts_with(key)).expect(key);
        let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        kib.unwrap_or_else(|| panic!("no number of kB in {line:?}"))
    }

    /// Everything the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL (no cleanup at all), then reap the child.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful shutdown); use [`Daemon::wait_exit`] after it.
    pub fn term(&mut self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&mut self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid} failed");
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (bounded) for the child to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let child = self.child.as_mut()?;
        wait_until_async(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A per-process counter, so every start writes its own stderr file.
fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
