//! Admin HTTP: `/metrics` (Prometheus), `/healthz`, `/readyz` and the `/api`
//! used by `breakwater queue ...`.

pub mod metrics;

use crate::delivery::Queue;
use crate::journal::{Journal, QueueId};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics::Metrics;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read and drive.
pub struct State {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Journal (size, health).
    pub journal: Journal,
    /// Dispatcher handle (flush).
    pub queue: Queue,
    /// Shutdown token (readiness).
    pub shutdown: CancellationToken,
}

/// Serves admin HTTP until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn route<B>(state: &State, req: Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() == Method::POST
        && let Some((verb, id)) = hold_request(path)
    {
        return hold(state, verb == "hold", id).await;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            state
                .metrics
                .journal_bytes
                .set(state.journal.file_bytes() as i64);
            text(StatusCode::OK, state.metrics.render())
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if state.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
            } else if let Err(why) = state.journal.readiness() {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        (&Method::POST, "/api/queue/flush") => {
            state.queue.flush();
            text(StatusCode::OK, "{\"flushed\":true}\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// `/api/queue/hold`, `/api/queue/release` (whole queue) and
/// `/api/queue/hold/ID`, `/api/queue/release/ID` (one message).
fn hold_request(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/api/queue/")?;
    let (verb, id) = match rest.split_once('/') {
        Some((v, id)) => (v, Some(id)),
        None => (rest, None),
    };
    matches!(verb, "hold" | "release").then_some((verb, id))
}

async fn hold(state: &State, held: bool, id: Option<&str>) -> Response<Full<Bytes>> {
    let result = match id {
        None => state
            .queue
            .set_queue_held(held)
            .await
            .map_err(|e| e.to_string()),
        Some(id) => match id.parse::<QueueId>() {
            Ok(id) => state.queue.set_message_held(id, held).await,
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("bad queue id {id:?}\n")),
        },
    };
    match result {
        Ok(()) => text(StatusCode::OK, format!("{{\"held\":{held}}}\n")),
        Err(e) if e.contains("not in the queue") => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
