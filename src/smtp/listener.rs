//! The SMTP listener: owns the socket and the connection limits. When full it
//! refuses (`421 4.3.2`, or `421 4.7.0` for one address holding
//! `smtp.max_connections_per_ip`) instead of letting clients wait.

use super::Context;
use super::reply::Reply;
use super::session::Session;
use crate::admin::metrics::Rejection;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// A refusal at connect must be written within this time (or is dropped).
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

/// Accepts connections until shutdown; each session runs as a task on `tracker`.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<Context>,
    max_connections: usize,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let per_ip = Arc::new(PerIp::new());
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, don't spin.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        let ip = peer.ip().to_canonical();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(&ctx, &tracker, stream, Reply::TOO_MANY_CONNECTIONS);
            continue;
        };
        // Read per connection: a reload changes the limit for new sessions.
        let max_per_ip = ctx.config().smtp.max_connections_per_ip;
        let Some(ip_slot) = PerIp::take(&per_ip, ip, max_per_ip) else {
            tracing::info!(client = %ip, "refused: smtp.max_connections_per_ip reached");
            refuse(&ctx, &tracker, stream, Reply::TOO_MANY_FROM_IP);
            continue;
        };
        let ctx = ctx.clone();
        tracker.spawn(async move {
            let _gauge = SessionGauge::new(&ctx);
            let mut session = Session::new(ctx.clone(), ip);
            session.hold_slot(Box::new(ip_slot));
            session.hold_slot(Box::new(permit));
            super::connection::serve(session, stream).await;
        });
    }
}

/// Answers `reply` and closes, without a session.
fn refuse(ctx: &Arc<Context>, tracker: &TaskTracker, mut stream: TcpStream, reply: Reply) {
    ctx.metrics.reject(Rejection::Rate);
    tracker.spawn(async move {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(&out)).await;
    });
}

/// Keeps `breakwater_smtp_sessions_active` right however a session ends.
struct SessionGauge(Arc<Context>);

impl SessionGauge {
    fn new(ctx: &Arc<Context>) -> SessionGauge {
        ctx.metrics.smtp_sessions_active.inc();
        SessionGauge(ctx.clone())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.metrics.smtp_sessions_active.dec();
    }
}

/// Sessions per client address.
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's place in [`PerIp`]; given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn new() -> PerIp {
        PerIp {
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `ip`, or `None` if it has `max` sessions already.
    fn take(table: &Arc<PerIp>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = table.open.lock().expect("per-ip lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("per-ip lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit and returns how many
/// sessions fit beside `reserve` other descriptors (journal, backends, admin):
/// `wanted`, or fewer when the limit is lower (then says so in the log), so that
/// clients get a `421` from a full relay rather than no greeting at all.
pub fn fit_connections(wanted: usize, reserve: usize) -> usize {
    let limit = raise_nofile();
    let Some(limit) = limit else {
        return wanted;
    };
    let room = (limit as usize).saturating_sub(reserve).max(1);
    if wanted > room {
        tracing::warn!(
            "smtp.max_connections = {wanted} does not fit the open-file limit ({limit}, {reserve} kept for the journal and backends); using {room}. Raise LimitNOFILE (systemd) or ulimit -n"
        );
        room
    } else {
        wanted
    }
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
#[allow(clippy::unnecessary_cast)] // rlim_t differs between platforms
fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; both are plain integers.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let t = Arc::new(PerIp::new());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = PerIp::take(&t, ip, 2).unwrap();
        let _b = PerIp::take(&t, ip, 2).unwrap();
        assert!(PerIp::take(&t, ip, 2).is_none());
        assert!(PerIp::take(&t, other, 2).is_some());
        drop(a);
        assert!(PerIp::take(&t, ip, 2).is_some());
        assert!(
            t.open.lock().unwrap().get(&other).is_none(),
            "emptied entries removed"
        );
    }

    #[test]
    fn connections_fit_the_file_limit() {
        assert_eq!(fit_connections(10, 64), 10);
        let limit = raise_nofile().unwrap() as usize;
        assert_eq!(fit_connections(limit, 100), limit - 100);
    }
}
