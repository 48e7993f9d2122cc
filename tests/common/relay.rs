//! An in-process breakwater relay on port 0, for integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running relay: SMTP and admin on 127.0.0.1 port 0, journal in `dir`.
pub struct Relay {
    /// SMTP address.
    pub smtp: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Journal directory (kept by `_tmp` unless given by the test).
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), breakwater::Error>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// The config text for a relay in `dir` relaying `example.com` to `backends`
/// (priority = position). `extra` is appended: whole sections such as
/// `[smtp]`, `[relay]` (default here: domains = ["example.com"]), `[delivery]`
/// (default here: retry = ["1s"]), `[health]` (default here: interval =
/// "200ms") or more `[[backend]]`s.
pub fn config_text(dir: &Path, backends: &[SocketAddr], extra: &str) -> String {
    let mut t = format!(
        "hostname = \"relay.test\"\n[journal]\npath = {:?}\n",
        dir.display().to_string()
    );
    if !extra.contains("[relay]") {
        t.push_str("[relay]\ndomains = [\"example.com\"]\n");
    }
    for (i, b) in backends.iter().enumerate() {
        t.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\naddress = \"{b}\"\npriority = {}\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\n",
            10 * (i + 1)
        ));
    }
    if !extra.contains("[health]") {
        t.push_str("[health]\ninterval = \"200ms\"\ntimeout = \"2s\"\n");
    }
    if !extra.contains("[delivery]") {
        t.push_str("[delivery]\nretry = [\"1s\"]\nshutdown_grace = \"2s\"\n");
    }
    t.push_str(extra);
    t
}

impl Relay {
    /// A relay with a fresh temporary journal.
    pub async fn start(backends: &[SocketAddr], extra: &str) -> Relay {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut r = Relay::start_in(tmp.path(), backends, extra).await;
        r._tmp = Some(tmp);
        r
    }

    /// A relay on the journal in `dir` (for restart tests).
    pub async fn start_in(dir: &Path, backends: &[SocketAddr], extra: &str) -> Relay {
        Relay::start_with_text(dir, &config_text(dir, backends, extra)).await
    }

    /// A relay on the journal in `dir` with the whole config `text`. With
    /// `BW_TEST_LOG` set (e.g. `BW_TEST_LOG=info`), the relay's log goes to stderr.
    pub async fn start_with_text(dir: &Path, text: &str) -> Relay {
        Relay::start_on_clock(dir, text, breakwater::delivery::Clock::new()).await
    }

    /// [`Relay::start_with_text`] on `clock` (a controlled one: the test moves
    /// the relay's time forward by hours without waiting).
    pub async fn start_on_clock(
        dir: &Path,
        text: &str,
        clock: breakwater::delivery::Clock,
    ) -> Relay {
        if let Ok(filter) = std::env::var("BW_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let text = text.to_owned();
        let config = breakwater::config::Config::parse(&text)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let smtp = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (smtp_addr, admin_addr) = (smtp.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = breakwater::Listeners {
            smtp: vec![smtp],
            admin: Some(admin),
        };
        let task = tokio::spawn(breakwater::run_with_clock(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
            clock,
        ));
        Relay {
            smtp: smtp_addr,
            admin: admin_addr,
            dir: dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    /// Shuts the relay down (like SIGTERM) and waits for it, bounded.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("relay stops within 30 s")
                .expect("relay task")
                .expect("relay run ok");
        }
    }

    /// GET `path` on the admin listener: (status, body).
    pub async fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(self.admin, method, path).await
    }

    /// The value of an unlabelled metric (or the first series matching `name{...}`).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics").await;
        metric_value(&body, name).unwrap_or_else(|| panic!("metric {name} not found in\n{body}"))
    }

    /// Like [`Relay::metric`], but 0 for a series not exported yet (a labelled
    /// counter such as `breakwater_smtp_rejections_total{reason="rate"}`
    /// appears only once it was first counted).
    pub async fn counter(&self, name: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics").await;
        metric_value(&body, name).unwrap_or(0.0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Polls the metric `name` (exact series text, labels included) until it equals
/// `want` or `timeout` passes; true if it did.
pub async fn wait_metric(relay: &Relay, name: &str, want: f64, timeout: Duration) -> bool {
    wait_metric_at(relay.admin, name, want, timeout).await
}

/// [`wait_metric`] on any admin listener (a relay run as a child process).
pub async fn wait_metric_at(admin: SocketAddr, name: &str, want: f64, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    for _ in 0..10_000 {
        let (_, body) = http(admin, "GET", "/metrics").await;
        if metric_value(&body, name) == Some(want) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Finds `name` (exact series text up to the value) in Prometheus text.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.rsplit_once(' ')
            .filter(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    })
}

/// A minimal HTTP/1.0 request (the admin API speaks HTTP/1.1, which accepts it).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read response");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("admin answers within 10 s")
}
