//! The SMTP listener: owns the socket and the connection limit. When full it
//! refuses (`421 4.3.2`) instead of letting clients wait.

use super::Context;
use super::reply::Reply;
use super::session::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Accepts connections until shutdown; each session runs as a task on `tracker`.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<Context>,
    max_connections: usize,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (mut stream, peer) = match accepted {
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracker.spawn(async move {
                let mut out = Vec::new();
                Reply::TOO_MANY_CONNECTIONS.write_to(&mut out);
                let _ = stream.write_all(&out).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        tracker.spawn(async move {
            ctx.metrics.smtp_sessions_active.inc();
            let session = Session::new(ctx.clone(), peer.ip());
            super::connection::serve(session, stream).await;
            ctx.metrics.smtp_sessions_active.dec();
            drop(permit);
        });
    }
}
