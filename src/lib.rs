//! breakwater: a store-and-forward SMTP continuity relay.
//!
//! Layout (see DESIGN.md):
//! - [`config`]: the TOML contract, defaults, validation with key paths.
//! - [`smtp`]: listener, per-connection I/O loop, session state machine, replies.
//! - [`journal`]: the durable queue on redb with group commit; `250` only after it.
//! - [`delivery`]: dispatcher (schedule, concurrency), backend client, outcomes, retry.
//! - [`health`]: backend probes and up/down circuits.
//! - [`schedule`]: quiet-time windows.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/api`, and `/mail` (held mail for people).
//! - [`shutdown`]: cancellation and task tracking, passed explicitly.
//!
//! [`run`] only wires these together: it takes already-bound listeners and a
//! shutdown future, so tests run relays on port 0 side by side in one process.

pub mod admin;
pub mod canary;
pub mod config;
pub mod delivery;
pub mod flows;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod journal;
mod reload;
pub mod schedule;
pub mod shutdown;
pub mod smtp;
#[cfg(test)]
mod testkit;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Sockets the relay serves, bound by the caller.
pub struct Listeners {
    /// SMTP listeners.
    pub smtp: Vec<TcpListener>,
    /// Admin HTTP listener, if any.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config` (`smtp.listen`, `admin.listen`).
    pub async fn bind(config: &config::Config) -> std::io::Result<Listeners> {
        let mut smtp = Vec::new();
        for addr in &config.smtp.listen {
            smtp.push(
                TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("smtp.listen {addr}: {e}"))
                })?,
            );
        }
        let admin = TcpListener::bind(&config.admin.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin.listen {}: {e}", config.admin.listen),
            )
        })?;
        Ok(Listeners {
            smtp,
            admin: Some(admin),
        })
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal could not be opened.
    #[error("journal: {0}")]
    Journal(#[from] journal::Error),
    /// The STARTTLS certificate or key could not be loaded.
    #[error("{0}")]
    Tls(#[from] smtp::tls::Error),
    /// The recipient list could not be loaded.
    #[error("{0}")]
    Recipients(String),
}

/// The running parts every session and the admin API share, wired by [`wire`].
pub(crate) struct Wired {
    pub ctx: Arc<smtp::Context>,
    pub stop: shutdown::Shutdown,
    pub dispatch: tokio::task::JoinHandle<()>,
    pub health: Arc<health::Health>,
    /// Stops the running health monitor (a reload starts another).
    pub monitor: tokio_util::sync::CancellationToken,
    /// The alert monitor (flows, backend outages, queue age).
    pub alerts: tokio::task::JoinHandle<()>,
}

/// Loads the TLS certificate, opens the journal, starts the health monitor and
/// the dispatcher on the current runtime, and builds the sessions' context.
pub(crate) fn wire(config: config::Config, clock: delivery::Clock) -> Result<Wired, Error> {
    let config = Arc::new(config);
    let tls = match &config.smtp.tls {
        Some(t) => Some(Arc::new(smtp::tls::Tls::load(t)?)),
        None => None,
    };
    let mut opts = journal::Options::new(&config.journal.path, config.journal.max_bytes);
    opts.cache_bytes = 16 << 20;
    opts.min_free_bytes = config.journal.min_free_bytes;
    let (journal, recovered) = journal::Journal::open(&opts)?;
    let metrics = Arc::new(admin::metrics::Metrics::new());
    metrics
        .config_last_reload_success
        .set(chrono::Utc::now().timestamp());
    let health = Arc::new(health::Health::new(
        &config.backend,
        &config.health,
        metrics.clone(),
    ));
    let mirror_health = Arc::new(health::Health::for_mirrors(
        &config.mirror,
        &config.health,
        &metrics,
    ));
    let stop = shutdown::Shutdown::new();
    let (queue, dispatcher) = delivery::dispatcher(
        &config,
        journal.clone(),
        health.clone(),
        mirror_health.clone(),
        metrics.clone(),
        recovered,
        clock,
    )?;
    let monitor = stop.token.child_token();
    health::spawn_monitors(health.clone(), mirror_health, &config, monitor.clone());
    let grace = config.delivery.shutdown_grace.0;
    let dispatch = tokio::spawn(dispatcher.run(stop.token.clone(), grace));
    let recipients = smtp::recipients::Recipients::new(&config, queue.gate().clone())
        .map_err(Error::Recipients)?;
    let flows = Arc::new(flows::Flows::new(
        &config,
        &flows::monitor::load_states(&journal),
        metrics.registry(),
        clock,
    ));
    let auth = smtp::auth::Edge::new(&config.auth);
    let ctx = Arc::new(smtp::Context {
        config: std::sync::RwLock::new(config),
        journal,
        queue,
        metrics,
        shutdown: stop.token.clone(),
        tls,
        recipients: std::sync::RwLock::new(Arc::new(recipients)),
        flows: flows.clone(),
        auth,
    });
    let alerts = flows::monitor::spawn(ctx.clone(), flows, clock, stop.token.clone());
    Ok(Wired {
        ctx,
        stop,
        dispatch,
        health,
        monitor,
        alerts,
    })
}

/// Runs the relay until `shutdown` resolves, then stops accepting, answers
/// `421 4.3.0` to open sessions, lets in-flight deliveries finish within
/// `delivery.shutdown_grace`, and closes the journal. SIGHUP re-reads the
/// STARTTLS certificate and the recipient list.
pub async fn run(
    config: config::Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with_clock(config, listeners, shutdown, delivery::Clock::new()).await
}

/// [`run`] on `clock` (a [`delivery::Clock::controlled`] one in tests that
/// move time forward by hours).
pub async fn run_with_clock(
    config: config::Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    clock: delivery::Clock,
) -> Result<(), Error> {
    // Installed before anything listens: a SIGHUP that arrives early must not
    // take the default action (ending the process).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let Wired {
        ctx,
        stop,
        dispatch,
        health,
        monitor,
        alerts,
    } = wire(config, clock)?;
    let config = ctx.config();
    let grace = config.delivery.shutdown_grace.0;
    let reloader = Arc::new(reload::Reloader {
        ctx: ctx.clone(),
        health,
        monitor: std::sync::Mutex::new(monitor),
        token: Arc::new(std::sync::RwLock::new(
            config.admin.token().unwrap_or_default(),
        )),
        backends: Arc::new(std::sync::RwLock::new(
            config
                .backend
                .iter()
                .map(|b| (b.name.clone(), b.address.clone()))
                .collect(),
        )),
        mailbox_access: Arc::new(std::sync::RwLock::new(config.mailbox_access.clone())),
    });
    match hangup {
        Ok(hup) => {
            tokio::spawn(reload_on_hangup(hup, reloader.clone()));
        }
        Err(e) => {
            tracing::warn!("cannot install a SIGHUP handler ({e}); reload with POST /api/reload")
        }
    }
    let max_connections =
        smtp::listener::fit_connections(config.smtp.max_connections, descriptors_reserved(&config));
    let per_listener = max_connections;
    let mut accept_tasks = Vec::new();
    for l in listeners.smtp {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("smtp listening on {addr}");
        }
        let task = smtp::listener::run(l, ctx.clone(), per_listener, stop.tracker.clone());
        accept_tasks.push(tokio::spawn(task));
    }
    if let Some(l) = listeners.admin {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("admin listening on http://{addr}");
        }
        let r = reloader.clone();
        let state = Arc::new(admin::State {
            metrics: ctx.metrics.clone(),
            journal: ctx.journal.clone(),
            queue: ctx.queue.clone(),
            shutdown: stop.token.clone(),
            token: reloader.token.clone(),
            backends: reloader.backends.clone(),
            reload: Box::new(move || r.reload()),
            mail: Arc::new(admin::mail::JournalSource(ctx.journal.clone())),
            mailbox_access: reloader.mailbox_access.clone(),
            auth_memory: ctx.auth.memory.clone(),
            flows: ctx.flows.clone(),
        });
        tokio::spawn(admin::serve(l, state));
    }

    tokio::spawn(canary::run(ctx.clone()));

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing deliveries (grace {grace:?})");
    stop.token.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    stop.tracker.close();
    if tokio::time::timeout(grace, stop.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after {grace:?}; closing them");
    }
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), dispatch).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), alerts).await;
    ctx.journal.close().await;
    tracing::info!("journal closed; bye");
    Ok(())
}

/// File descriptors kept for everything but inbound sessions: the journal,
/// listeners, admin clients, backend and DSN connections, recipient probes.
fn descriptors_reserved(config: &config::Config) -> usize {
    let backends: usize = config
        .backend
        .iter()
        .map(|b| b.max_connections.unwrap_or(config.delivery.concurrency))
        .sum();
    128 + backends + config.delivery.concurrency + 32
}

/// On SIGHUP: reload (see [`reload`]). Without a handler SIGHUP's default
/// action would end the relay (`systemctl reload`, a habit from Postfix).
async fn reload_on_hangup(mut hup: tokio::signal::unix::Signal, reloader: Arc<reload::Reloader>) {
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = reloader.ctx.shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the config");
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
    }
}
