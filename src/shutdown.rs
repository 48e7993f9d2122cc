//! Shutdown plumbing, passed explicitly (no globals): a cancellation token that
//! every long-running task watches, and a tracker to wait for them.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The relay's shutdown handle.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled once shutdown starts.
    pub token: CancellationToken,
    /// Sessions and other tasks to wait for.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh handle.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
