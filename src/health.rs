//! Backend health: a circuit per backend fed by probes (connect, greeting, EHLO,
//! QUIT) and by delivery connection failures, and the monitor task that probes.
//!
//! A backend goes down after `health.fall` consecutive failures and comes back
//! after `health.rise` consecutive successes. While a backend is between states
//! (its last result disagrees with its state) it is probed again after
//! [`FAST_INTERVAL`] instead of the full interval (HAProxy's `fastinter`), so a
//! backend that returns is up within one interval plus `rise - 1` fast probes.

use crate::admin::metrics::Metrics;
use crate::config;
use prometheus::IntGaugeVec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Probe spacing while a backend is changing state.
pub const FAST_INTERVAL: Duration = Duration::from_millis(500);

/// Up/down state with fall/rise hysteresis. Pure: tested with a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circuit {
    up: bool,
    streak: u32,
    fall: u32,
    rise: u32,
}

impl Circuit {
    /// A circuit that starts up (deliveries find out soon enough if it is not).
    pub fn new(fall: u32, rise: u32) -> Circuit {
        Circuit {
            up: true,
            streak: 0,
            fall: fall.max(1),
            rise: rise.max(1),
        }
    }

    /// True while the backend counts as up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// True while the last results disagree with the state (a change may follow).
    pub fn is_changing(&self) -> bool {
        self.streak > 0
    }

    /// Records one result; returns what it changed, if anything.
    pub fn record(&mut self, ok: bool) -> Option<Change> {
        if ok == self.up {
            let steadied = ok && self.streak > 0;
            self.streak = 0;
            return steadied.then_some(Change::Steadied);
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return Some(if ok { Change::Up } else { Change::Down });
        }
        None
    }
}

/// What a result changed in a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It went down.
    Down,
    /// It came back up.
    Up,
    /// It was up with failures counting towards `fall`, and a success cleared
    /// them: mail deferred by those failures can go now.
    Steadied,
}

/// The health of every backend, shared by the monitor, the delivery client and
/// the dispatcher. Every change bumps a `watch` generation the dispatcher awaits.
pub struct Health {
    circuits: RwLock<Vec<Arc<Entry>>>,
    /// The gauge family this health writes (`backend_up` or `mirror_up`).
    up: IntGaugeVec,
    changed: watch::Sender<u64>,
    recovered: AtomicBool,
}

/// One backend's circuit, and the wake-up for its prober.
struct Entry {
    name: String,
    address: String,
    circuit: Mutex<Circuit>,
    wake: Notify,
    /// The last probe: when (Unix ms) and whether it passed.
    last_probe: Mutex<Option<(i64, bool)>>,
}

impl Entry {
    fn new(b: &config::Backend, h: &config::Health, up: &IntGaugeVec) -> Arc<Entry> {
        up.with_label_values(&[&b.name]).set(1);
        Arc::new(Entry {
            name: b.name.clone(),
            address: b.address.clone(),
            circuit: Mutex::new(Circuit::new(h.fall, h.rise)),
            wake: Notify::new(),
            last_probe: Mutex::new(None),
        })
    }
}

impl Health {
    /// All backends of `config`, initially up.
    pub fn new(backends: &[config::Backend], h: &config::Health, metrics: Arc<Metrics>) -> Health {
        let up = metrics.backend_up.clone();
        Health::with_gauge(backends, h, up)
    }

    /// The standbys of `[[mirror]]`, each with its own circuit
    /// (`breakwater_mirror_up{mirror}`).
    pub fn for_mirrors(
        mirrors: &[config::Mirror],
        h: &config::Health,
        metrics: &Metrics,
    ) -> Health {
        let list: Vec<config::Backend> = mirrors.iter().map(config::Mirror::as_backend).collect();
        Health::with_gauge(&list, h, metrics.mirror_up.clone())
    }

    fn with_gauge(backends: &[config::Backend], h: &config::Health, up: IntGaugeVec) -> Health {
        let circuits = backends.iter().map(|b| Entry::new(b, h, &up)).collect();
        Health {
            circuits: RwLock::new(circuits),
            up,
            changed: watch::channel(0).0,
            recovered: AtomicBool::new(false),
        }
    }

    /// Takes a reloaded backend list, matched by name: a backend that stays at
    /// its address keeps its circuit; one with a new address, or a new one,
    /// starts up (and is probed at once by the next monitor); a removed one is
    /// forgotten.
    pub fn reconfigure(&self, backends: &[config::Backend], h: &config::Health) {
        let mut circuits = self.circuits.write().expect("circuits lock");
        let old = std::mem::take(&mut *circuits);
        for b in backends {
            match old
                .iter()
                .find(|e| e.name == b.name && e.address == b.address)
            {
                Some(e) => {
                    let mut c = e.circuit.lock().expect("circuit");
                    c.fall = h.fall.max(1);
                    c.rise = h.rise.max(1);
                    drop(c);
                    circuits.push(e.clone());
                }
                None => circuits.push(Entry::new(b, h, &self.up)),
            }
        }
        for e in old
            .iter()
            .filter(|e| !backends.iter().any(|b| b.name == e.name))
        {
            let _ = self.up.remove_label_values(&[&e.name]);
        }
        drop(circuits);
        self.changed.send_modify(|g| *g += 1);
    }

    fn entry(&self, backend: &str) -> Option<Arc<Entry>> {
        self.circuits
            .read()
            .expect("circuits lock")
            .iter()
            .find(|e| e.name == backend)
            .cloned()
    }

    /// True if the named backend is up (unknown names count as down).
    pub fn is_up(&self, backend: &str) -> bool {
        self.entry(backend)
            .is_some_and(|e| e.circuit.lock().expect("circuit").is_up())
    }

    /// The last probe of `backend`: when (Unix ms) and whether it passed.
    pub fn last_probe(&self, backend: &str) -> Option<(i64, bool)> {
        self.entry(backend)
            .and_then(|e| *e.last_probe.lock().expect("probe lock"))
    }

    /// True if any backend is up.
    pub fn any_up(&self) -> bool {
        self.circuits
            .read()
            .expect("circuits lock")
            .iter()
            .any(|e| e.circuit.lock().expect("circuit").is_up())
    }

    /// Records a probe or a delivery connection result for `backend`.
    pub fn report(&self, backend: &str, ok: bool) {
        let Some(e) = self.entry(backend) else {
            return;
        };
        let (change, changing) = {
            let mut c = e.circuit.lock().expect("circuit");
            (c.record(ok), c.is_changing())
        };
        if changing {
            // A failure seen by a delivery: probe again soon, not at the interval.
            e.wake.notify_one();
        }
        let Some(change) = change else {
            return;
        };
        match change {
            Change::Down => tracing::warn!(backend, "backend is down"),
            Change::Up => tracing::info!(backend, "backend is up"),
            Change::Steadied => tracing::info!(backend, "backend answers again"),
        }
        self.up
            .with_label_values(&[backend])
            .set((change != Change::Down) as i64);
        if change != Change::Down {
            self.recovered.store(true, Ordering::Relaxed);
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// True (once) if a backend came back or steadied since the last call:
    /// the mail deferred meanwhile should go now.
    pub fn take_recovered(&self) -> bool {
        self.recovered.swap(false, Ordering::Relaxed)
    }

    /// Counts every backend as up again (an admin flush, like Postfix's
    /// `postqueue -f` flushing dead destinations). A backend that is still down
    /// fails its next attempts and goes down again after `fall` failures.
    pub fn reset_all_up(&self) {
        for e in self.circuits.read().expect("circuits lock").iter() {
            let mut c = e.circuit.lock().expect("circuit");
            if !c.is_up() {
                *c = Circuit::new(c.fall, c.rise);
                self.up.with_label_values(&[&e.name]).set(1);
            }
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// A receiver that sees a new value after every up/down change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves when a delivery reports a failure for `backend`.
    async fn failure_reported(&self, backend: &str) {
        match self.entry(backend) {
            Some(e) => e.wake.notified().await,
            None => std::future::pending().await,
        }
    }

    fn is_changing(&self, backend: &str) -> bool {
        self.entry(backend)
            .is_some_and(|e| e.circuit.lock().expect("circuit").is_changing())
    }
}

/// Starts the probes of `config`'s backends (into `backends`) and standbys
/// (into `mirrors`), until `shutdown`.
pub fn spawn_monitors(
    backends: Arc<Health>,
    mirrors: Arc<Health>,
    config: &config::Config,
    shutdown: CancellationToken,
) {
    tokio::spawn(monitor(
        backends,
        config.backend.clone(),
        config.health.clone(),
        config.hostname.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(monitor(
        mirrors,
        config
            .mirror
            .iter()
            .map(config::Mirror::as_backend)
            .collect(),
        config.health.clone(),
        config.hostname.clone(),
        shutdown,
    ));
}

/// Probes every backend until `shutdown`: one task per backend. A reload
/// cancels this monitor (a child token of the relay's) and starts another
/// with the new list.
pub async fn monitor(
    health: Arc<Health>,
    backends: Vec<config::Backend>,
    cfg: config::Health,
    helo: String,
    shutdown: CancellationToken,
) {
    let mut tasks = Vec::new();
    for b in backends {
        let (health, helo, shutdown) = (health.clone(), helo.clone(), shutdown.clone());
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let wait = if health.is_changing(&b.name) {
                    FAST_INTERVAL.min(cfg.interval.0)
                } else {
                    cfg.interval.0
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = health.failure_reported(&b.name) => {
                        // Re-probe after the fast interval rather than at the next
                        // full one: an outage is confirmed (or not) right away.
                        tokio::select! {
                            _ = tokio::time::sleep(FAST_INTERVAL.min(cfg.interval.0)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
                let needs_tls = b.tls == config::TlsPolicy::Required;
                let result = tokio::select! {
                    r = probe(&b.address, &helo, needs_tls, cfg.timeout.0) => r,
                    _ = shutdown.cancelled() => return,
                };
                if let Err(e) = &result {
                    tracing::debug!(backend = %b.name, "probe failed: {e}");
                }
                if let Some(e) = health.entry(&b.name) {
                    let now = chrono::Utc::now().timestamp_millis();
                    *e.last_probe.lock().expect("probe lock") = Some((now, result.is_ok()));
                }
                health.report(&b.name, result.is_ok());
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One probe: connect, read a 2xx greeting, EHLO (2xx), QUIT, all within
/// `timeout`. With `needs_tls` (a `tls = "required"` backend) the EHLO reply
/// must offer STARTTLS: without it no delivery can succeed, so the backend is
/// not up.
pub async fn probe(
    address: &str,
    helo: &str,
    needs_tls: bool,
    timeout: Duration,
) -> Result<(), String> {
    let run = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = BufReader::new(stream);
        expect_2xx(&mut stream, "greeting").await?;
        stream
            .get_mut()
            .write_all(format!("EHLO {helo}\r\n").as_bytes())
            .await
            .map_err(|e| format!("EHLO: {e}"))?;
        let ehlo = expect_2xx(&mut stream, "EHLO").await?;
        let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
        let starttls = ehlo.iter().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
        });
        if needs_tls && !starttls {
            return Err("EHLO does not offer STARTTLS and tls = \"required\"".into());
        }
        Ok(())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Reads one (possibly multi-line) reply, checks it is 2xx, returns its lines.
async fn expect_2xx(stream: &mut BufReader<TcpStream>, what: &str) -> Result<Vec<String>, String> {
    let mut line = String::new();
    let mut lines = Vec::new();
    for _ in 0..100 {
        line.clear();
        let n = stream
            .read_line(&mut line)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if n == 0 {
            return Err(format!("{what}: connection closed"));
        }
        if !line.starts_with('2') {
            return Err(format!("{what}: {}", line.trim_end()));
        }
        lines.push(line.trim_end().to_owned());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(lines);
        }
    }
    Err(format!("{what}: reply too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_table() {
        // (results fed in order, expected state after each)
        let cases: &[(u32, u32, &[bool], &[bool])] = &[
            (2, 2, &[false], &[true]),
            (2, 2, &[false, false], &[true, false]),
            (2, 2, &[false, true, false], &[true, true, true]),
            (2, 2, &[false, false, true], &[true, false, false]),
            (
                2,
                2,
                &[false, false, true, true],
                &[true, false, false, true],
            ),
            (
                2,
                2,
                &[false, false, true, false, true, true],
                &[true, false, false, false, false, true],
            ),
            (1, 1, &[false, true], &[false, true]),
            (
                3,
                1,
                &[false, false, false, true],
                &[true, true, false, true],
            ),
        ];
        for (fall, rise, results, want) in cases {
            let mut c = Circuit::new(*fall, *rise);
            let got: Vec<bool> = results
                .iter()
                .map(|&ok| {
                    c.record(ok);
                    c.is_up()
                })
                .collect();
            assert_eq!(&got, want, "fall={fall} rise={rise} results={results:?}");
        }
    }

    #[test]
    fn changes_reported() {
        let mut c = Circuit::new(2, 2);
        assert_eq!(c.record(true), None, "up and staying up: nothing to say");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), Some(Change::Steadied), "a failure cleared");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(Change::Down));
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(Change::Up));
    }

    #[tokio::test]
    async fn probe_against_nothing_fails_fast() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert!(
            probe(&addr, "relay.test", false, Duration::from_secs(2))
                .await
                .is_err()
        );
    }
}
