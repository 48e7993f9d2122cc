//! Admin HTTP on `admin.listen`: `/metrics` (Prometheus), `/healthz`,
//! `/readyz` and the JSON `/api` behind `breakwater queue ...`,
//! `breakwater quiet ...` and `breakwater status` (DESIGN.md, "Admin API").
//!
//! The API steers the queue, so it is guarded: with `admin.token_file` every
//! `/api` call needs `Authorization: Bearer TOKEN` (compared in constant time);
//! with or without a token, a call that changes something and carries a
//! foreign `Origin` or `Sec-Fetch-Site: cross-site`/`same-site` is refused, so
//! a web page opened on the admin host can never hold or delete mail; without
//! a token, `/api` answers only requests addressed to an IP literal or
//! `localhost` (a DNS-rebinding page cannot read the queue either). Headers,
//! bodies and the time a client may take are bounded.
//!
//! `/mail` ([`mail`]) is for people, not tools: sign-in pages to read held
//! mail during an outage, with guards of their own.

pub mod api;
pub mod history;
pub mod mail;
pub mod metrics;

use crate::delivery::Queue;
use crate::journal::Journal;
use api::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::Metrics;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read and drive.
pub struct State {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Journal (size, health, listing).
    pub journal: Journal,
    /// Dispatcher handle (flush, hold, delete, quiet windows, counts).
    pub queue: Queue,
    /// Shutdown token (readiness).
    pub shutdown: CancellationToken,
    /// The bearer token `/api` needs (`admin.token_file`), if any.
    pub token: Arc<RwLock<Option<String>>>,
    /// The backends' addresses by name, for `GET /api/backends`.
    pub backends: Arc<RwLock<Vec<(String, String)>>>,
    /// What `POST /api/reload` (and SIGHUP) does: a summary, or what failed.
    pub reload: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    /// Where `/mail` reads messages (the journal).
    pub mail: Arc<dyn mail::MailSource>,
    /// Who may sign in on `/mail` (`[[mailbox_access]]`, replaced on reload).
    pub mailbox_access: Arc<RwLock<Vec<crate::config::MailboxAccess>>>,
    /// The `auth.max_memory` budget (for its gauge).
    pub auth_memory: crate::smtp::auth::Budget,
    /// The `[[flow]]`s, for `GET /api/status`.
    pub flows: Arc<crate::flows::Flows>,
}

/// Largest request body (the API's bodies are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long, whatever it is doing.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Admin connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// The routes, with the guards in front of `/api`.
pub fn router(state: Arc<State>) -> Router {
    let api = api::routes()
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .nest("/api", api)
        .merge(mail::routes(state.clone()))
        .fallback(|| async { api::error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// Serves admin HTTP until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let app = router(state.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // too many admin clients at once
            continue;
        };
        let inner = hyper_util::service::TowerToHyperService::new(app.clone());
        // The client's address, for `/mail`'s sign-in limits.
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&inner, req)
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

async fn metrics_page(AxState(state): AxState<Arc<State>>) -> Response {
    state.refresh_gauges();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn ready(AxState(state): AxState<Arc<State>>) -> (StatusCode, String) {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if let Err(why) = state.journal.readiness() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

impl State {
    /// Makes every gauge exact now: the queue's counts and the oldest age
    /// (computed from the clock, so it grows during a quiet outage), the
    /// journal's size and the quiet-time state.
    pub fn refresh_gauges(&self) {
        let gate = self.queue.gate();
        let now_ms = gate.now().timestamp_millis().max(0) as u64;
        let mut stats = self.queue.stats();
        // The journal counts a message from its commit, before the dispatcher
        // has heard of it: the depth is what is on disk.
        stats.depth = self.journal.message_count();
        self.metrics.refresh_queue(&stats, now_ms);
        self.metrics
            .journal_bytes
            .set(self.journal.file_bytes() as i64);
        let (retained, retained_bytes) = self.journal.retained();
        self.metrics.retained_messages.set(retained as i64);
        self.metrics.retained_bytes.set(retained_bytes as i64);
        self.metrics
            .auth_memory_bytes
            .set(self.auth_memory.used() as i64);
        gate.update_metric();
    }
}

/// Token, origin and host checks in front of every `/api` call.
async fn guard(AxState(state): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let token = state.token.read().expect("token lock").clone();
    if let Err(refusal) = check(req.method(), req.headers(), token.as_deref()) {
        return refusal.into_response();
    }
    next.run(req).await
}

fn check(method: &Method, headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating {
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "none" | "same-origin")
        {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "cross-site requests may not change the queue".into(),
            ));
        }
        if let Some(origin) = get(header::ORIGIN)
            && !same_origin(origin, get(header::HOST))
        {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "requests from another origin may not change the queue".into(),
            ));
        }
    }
    match token {
        Some(want) => {
            let given = get(header::AUTHORIZATION)
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
                return Err(ApiError(
                    StatusCode::UNAUTHORIZED,
                    "this API needs the admin token: send Authorization: Bearer TOKEN (the CLI reads it from BREAKWATER_ADMIN_TOKEN or from admin.token_file with --config)".into(),
                ));
            }
        }
        None => {
            if !get(header::HOST).is_none_or(is_local_host) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "without admin.token_file the API answers only requests to an IP address or localhost".into(),
                ));
            }
        }
    }
    Ok(())
}

/// True if `origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// An IP literal (`127.0.0.1:9925`, `[::1]:9925`) or `localhost[:port]`.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Compares without an early exit, so the time taken says nothing about how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn status(r: Result<(), ApiError>) -> u16 {
        r.map_or_else(|r| r.0.as_u16(), |()| 200)
    }

    #[test]
    fn foreign_origins_cannot_change_anything() {
        let host = ("host", "127.0.0.1:9925");
        let cases = [
            (
                Method::POST,
                vec![host, ("origin", "http://evil.test")],
                403,
            ),
            (
                Method::POST,
                vec![host, ("sec-fetch-site", "cross-site")],
                403,
            ),
            (
                Method::DELETE,
                vec![host, ("sec-fetch-site", "same-site")],
                403,
            ),
            (
                Method::POST,
                vec![host, ("origin", "http://127.0.0.1:9925")],
                200,
            ),
            (Method::POST, vec![host], 200),
            (Method::GET, vec![host, ("origin", "http://evil.test")], 200),
            (Method::POST, vec![("host", "evil.test:9925")], 403),
        ];
        for (m, h, want) in cases {
            assert_eq!(status(check(&m, &headers(&h), None)), want, "{m} {h:?}");
        }
    }

    #[test]
    fn token_needed_when_configured() {
        let h =
            |auth: &'static str| headers(&[("host", "mx.example:9925"), ("authorization", auth)]);
        assert_eq!(
            status(check(&Method::GET, &h("Bearer s3cret"), Some("s3cret"))),
            200
        );
        assert_eq!(
            status(check(&Method::GET, &h("Bearer s3cre"), Some("s3cret"))),
            401
        );
        assert_eq!(
            status(check(&Method::GET, &h("Basic s3cret"), Some("s3cret"))),
            401
        );
        assert_eq!(
            status(check(
                &Method::GET,
                &headers(&[("host", "x")]),
                Some("s3cret")
            )),
            401
        );
    }

    #[test]
    fn hosts_and_comparison() {
        for (h, want) in [
            ("127.0.0.1:9925", true),
            ("[::1]:9925", true),
            ("localhost:9925", true),
            ("LOCALHOST", true),
            ("evil.test:9925", false),
            ("127.0.0.1.evil.test", false),
        ] {
            assert_eq!(is_local_host(h), want, "{h}");
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
