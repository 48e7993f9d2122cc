//! The `/api` endpoints (DESIGN.md, "Admin API"): typed JSON in and out,
//! errors as `{"error": "..."}` with 400 (bad input), 404 (unknown id), 409
//! (not now) or 503 (storage trouble).

use super::State;
use crate::config::Dur;
use crate::delivery::QueueError;
use crate::journal::{AttemptLog, BackendReply, Entry, Look, QueueId, RcptState, Record};
use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type S = AxState<Arc<State>>;

/// Most messages one page of `GET /api/queue` returns.
pub const MAX_PAGE: usize = 1000;
/// Most records one page looks at (a selective filter on a large queue
/// answers with fewer messages and a cursor to go on from).
const MAX_SCAN: usize = 5_000;

pub(super) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/queue", get(list))
        .route("/queue/flush", post(flush_all))
        .route("/queue/flush/{id}", post(flush_one))
        .route("/queue/hold", post(hold_all))
        .route("/queue/release", post(release_all))
        .route("/queue/hold/{id}", post(hold_one))
        .route("/queue/release/{id}", post(release_one))
        .route("/queue/{id}", get(show).delete(delete))
        .route("/queue/{id}/raw", get(super::history::raw))
        .route("/messages", get(super::history::messages))
        .route("/replay", post(super::history::replay))
        .route("/replay/{id}", get(super::history::replay_status))
        .route("/quiet", get(quiet_list).post(quiet_start))
        .route("/quiet/{name}", axum::routing::delete(quiet_stop))
        .route("/backends", get(backends))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
}

/// A refusal on its way to becoming an error response.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// An error response: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    (
        status,
        Json(E {
            error: message.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for QueueError {
    fn into_response(self) -> Response {
        let status = match &self {
            QueueError::NotFound(_) => StatusCode::NOT_FOUND,
            QueueError::Conflict(_) => StatusCode::CONFLICT,
            QueueError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueueError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, self.to_string())
    }
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

pub(super) fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    let refuse = || {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a queue id (16 hexadecimal digits, as `breakwater queue list` shows)",
                id.chars().take(40).collect::<String>()
            ),
        )
    };
    if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse());
    }
    id.parse().map_err(|_| refuse())
}

pub(super) fn rfc3339(ms: u64) -> Option<String> {
    DateTime::from_timestamp_millis(ms as i64).map(|t| t.to_rfc3339())
}

/// One message as the API and `queue list --json` show it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    pub arrived: Option<String>,
    pub size: u64,
    pub held: bool,
    /// `mail`, or `dsn` for a notice breakwater generated.
    pub kind: String,
    pub client_ip: String,
    pub helo: String,
    /// TLS version of the inbound session, if it used STARTTLS.
    pub tls: Option<String>,
    pub recipients: Vec<RecipientView>,
    /// The attempt history (`GET /api/queue/ID` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
    /// Delivered and kept (`journal.retain_delivered`) until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<String>,
    /// The message's other delivery jobs: mirror copies, replays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobView>,
}

/// A delivery job of a message besides the one its recipients show.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: String,
    /// `mirror:NAME` or `replay:ID`.
    pub purpose: String,
    pub recipients: Vec<RecipientView>,
}

/// One recipient of a [`MessageView`].
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RecipientView {
    pub address: String,
    /// pending | deferred | delivered | failed
    pub state: String,
    pub attempts: u32,
    pub last_reply: Option<BackendReply>,
    pub next_attempt: Option<String>,
    /// The backend that took it (delivered only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// One delivery attempt in `queue show`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AttemptView {
    pub at: Option<String>,
    pub backend: Option<String>,
    pub delivered: u32,
    pub deferred: u32,
    pub failed: u32,
    pub reply: Option<BackendReply>,
}

impl From<&AttemptLog> for AttemptView {
    fn from(a: &AttemptLog) -> AttemptView {
        AttemptView {
            at: rfc3339(a.at_ms),
            backend: a.backend.clone(),
            delivered: a.delivered,
            deferred: a.deferred,
            failed: a.failed,
            reply: a.reply.clone(),
        }
    }
}

impl MessageView {
    /// The view of a stored message and its jobs; `history` adds attempts.
    pub fn of_entry(e: &Entry, history: bool) -> MessageView {
        let view = e.view();
        let mut v = MessageView::of(&view, history);
        v.id = e.message.id.to_string();
        if e.is_retained() && e.message.retain_until_ms > 0 {
            v.retained_until = rfc3339(e.message.retain_until_ms);
        }
        v.jobs = e
            .jobs
            .iter()
            .filter(|j| j.id != view.id)
            .map(|j| JobView {
                id: j.id.to_string(),
                purpose: j.purpose.label(),
                recipients: recipient_views(j),
            })
            .collect();
        v
    }

    /// The view of `r`; `history` adds its attempts.
    pub fn of(r: &Record, history: bool) -> MessageView {
        MessageView {
            id: r.id.to_string(),
            from: r.envelope.mail_from.clone(),
            arrived: rfc3339(r.envelope.arrived_ms),
            size: r.size,
            held: r.held,
            kind: match &r.purpose {
                crate::journal::Purpose::Alert => "alert",
                p if p.is_notice() => "dsn",
                p if p.is_canary() => "canary",
                _ => "mail",
            }
            .into(),
            client_ip: r.envelope.client_ip.to_string(),
            helo: r.envelope.helo.clone(),
            tls: r.envelope.tls.as_ref().map(|t| t.version.clone()),
            recipients: recipient_views(r),
            attempts: history.then(|| r.history.iter().map(AttemptView::from).collect()),
            retained_until: None,
            jobs: Vec::new(),
        }
    }
}

fn recipient_views(r: &Record) -> Vec<RecipientView> {
    r.rcpts
        .iter()
        .map(|x| {
            let (state, attempts, reply, backend) = match &x.state {
                RcptState::Pending => ("pending", 0, None, None),
                RcptState::Deferred { reply, attempts } => {
                    ("deferred", *attempts, Some(reply.clone()), None)
                }
                RcptState::Delivered { backend, reply } => (
                    "delivered",
                    r.attempts,
                    Some(reply.clone()),
                    Some(backend.clone()),
                ),
                RcptState::Failed { reply } => ("failed", r.attempts, Some(reply.clone()), None),
            };
            let next_attempt = (x.state.is_open() && !r.held)
                .then(|| rfc3339(r.next_attempt_ms))
                .flatten();
            RecipientView {
                address: x.address.clone(),
                state: state.into(),
                attempts,
                last_reply: reply,
                next_attempt,
                backend,
            }
        })
        .collect()
}

/// `GET /api/queue` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    domain: Option<String>,
    older_than: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Include canaries (left out by default).
    #[serde(default)]
    canaries: bool,
}

/// `GET /api/queue` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub messages: Vec<MessageView>,
    /// Where the next page starts (pass as `cursor`), or null at the end.
    pub next: Option<String>,
}

/// What a list filter keeps.
struct Filter {
    state: Option<String>,
    domain: Option<String>,
    arrived_before_ms: Option<u64>,
    /// Bytes the stored JSON of a match must contain (from `state`), and
    /// must contain ignoring ASCII case (from `domain`): see [`Filter::look`].
    state_bytes: Option<Vec<u8>>,
    domain_bytes: Option<Vec<u8>>,
    canaries: bool,
}

/// Ids are arrival microseconds, raised by at most one per message in a
/// burst: a record whose id is this far past the `older_than` bound arrived
/// after it, and so did every later one.
const ID_SLACK_MS: u64 = 60_000;

impl Filter {
    fn new(
        state: Option<String>,
        domain: Option<String>,
        arrived_before_ms: Option<u64>,
    ) -> Filter {
        let state_bytes = state.as_deref().map(|s| match s {
            "held" => b"\"held\":true".to_vec(),
            s => format!("\"state\":\"{s}\"").into_bytes(),
        });
        let domain_bytes = domain.as_deref().map(|d| format!("@{d}\"").into_bytes());
        Filter {
            state,
            domain,
            arrived_before_ms,
            state_bytes,
            domain_bytes,
            canaries: false,
        }
    }

    /// A cheap look at the stored JSON: skips records that cannot match (the
    /// bytes a match must contain are missing) and stops at the first record
    /// too new for `older_than`. [`Filter::keeps`] decides on the rest.
    fn look(&self, id: QueueId, raw: &[u8]) -> Look {
        if let Some(t) = self.arrived_before_ms
            && id.0 / 1000 > t.saturating_add(ID_SLACK_MS)
        {
            return Look::Stop;
        }
        let lacks = |needle: &Option<Vec<u8>>, fold| {
            needle.as_ref().is_some_and(|n| !contains(raw, n, fold))
        };
        if lacks(&self.state_bytes, false) || lacks(&self.domain_bytes, true) {
            return Look::Skip;
        }
        Look::Decode
    }

    /// Queued messages, and retained ones when delivered mail is asked for.
    fn keeps_entry(&self, e: &Entry) -> bool {
        if !self.canaries && e.jobs.iter().any(|j| j.purpose.is_canary()) {
            return false;
        }
        if e.is_retained() && self.state.as_deref() != Some("delivered") {
            return false;
        }
        self.keeps(&e.view())
    }

    fn keeps(&self, r: &Record) -> bool {
        if let Some(t) = self.arrived_before_ms
            && r.envelope.arrived_ms > t
        {
            return false;
        }
        if let Some(d) = &self.domain {
            let in_domain = |a: &str| {
                a.rsplit_once('@')
                    .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(d))
            };
            if !r.rcpts.iter().any(|x| in_domain(&x.address)) {
                return false;
            }
        }
        match self.state.as_deref() {
            None => true,
            Some("held") => r.held,
            Some(s) => r.rcpts.iter().any(|x| state_name(&x.state) == s),
        }
    }
}

/// True if `needle` occurs in `hay` (ASCII case-insensitively with `fold`).
fn contains(hay: &[u8], needle: &[u8], fold: bool) -> bool {
    needle.is_empty()
        || hay.windows(needle.len()).any(|w| {
            if fold {
                w.eq_ignore_ascii_case(needle)
            } else {
                w == needle
            }
        })
}

fn state_name(s: &RcptState) -> &'static str {
    match s {
        RcptState::Pending => "pending",
        RcptState::Deferred { .. } => "deferred",
        RcptState::Delivered { .. } => "delivered",
        RcptState::Failed { .. } => "failed",
    }
}

async fn list(AxState(state): S, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad(format!("bad query: {}", e.body_text())),
    };
    if let Some(s) = &q.state
        && !["pending", "deferred", "delivered", "failed", "held"].contains(&s.as_str())
    {
        return bad(format!(
            "state {s:?}: use pending, deferred, delivered, failed or held"
        ));
    }
    let arrived_before_ms = match &q.older_than {
        None => None,
        Some(d) => match Dur::parse(d) {
            Ok(d) => {
                let now = state.queue.gate().now().timestamp_millis().max(0) as u64;
                Some(now.saturating_sub(d.0.as_millis() as u64))
            }
            Err(e) => return bad(format!("older_than: {e}")),
        },
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => match parse_id(c) {
            Ok(id) => Some(id),
            Err(r) => return r.into_response(),
        },
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let mut filter = Filter::new(
        q.state,
        q.domain
            .map(|d| d.trim().trim_start_matches('@').to_owned()),
        arrived_before_ms,
    );
    filter.canaries = q.canaries;
    let journal = state.journal.clone();
    let page = tokio::task::spawn_blocking(move || {
        journal.page(
            after,
            limit,
            MAX_SCAN,
            |id, raw| filter.look(id, raw),
            |e| filter.keeps_entry(e),
        )
    })
    .await;
    match page {
        Ok(Ok((entries, next))) => Json(Page {
            messages: entries
                .iter()
                .map(|e| MessageView::of_entry(e, false))
                .collect(),
            next: next.map(|id| id.to_string()),
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
    }
}

async fn show(AxState(state): S, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let journal = state.journal.clone();
    match tokio::task::spawn_blocking(move || journal.entry(id)).await {
        Ok(Ok(Some(e))) => Json(MessageView::of_entry(&e, true)).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("{id} is not in the queue")),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "lookup failed"),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    reason: Option<String>,
}

async fn delete(
    AxState(state): S,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let Ok(Query(q)) = q else {
        return bad("the only parameter is reason");
    };
    let reason = q
        .reason
        .unwrap_or_else(|| "none given".into())
        .chars()
        .take(500)
        .collect();
    match state.queue.delete(id, reason).await {
        Ok(()) => ok(serde_json::json!({"deleted": id.to_string()})),
        Err(e) => e.into_response(),
    }
}

fn ok(v: serde_json::Value) -> Response {
    Json(v).into_response()
}

async fn flush_all(AxState(state): S) -> Response {
    state.queue.flush();
    ok(serde_json::json!({"flushed": true}))
}

async fn flush_one(AxState(state): S, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.queue.flush_message(id).await {
        Ok(()) => ok(serde_json::json!({"flushed": id.to_string()})),
        Err(e) => e.into_response(),
    }
}

async fn set_queue_held(state: &State, held: bool) -> Response {
    match state.queue.set_queue_held(held).await {
        Ok(()) => ok(serde_json::json!({"held": held})),
        Err(e) => QueueError::Storage(e.to_string()).into_response(),
    }
}

async fn hold_all(AxState(state): S) -> Response {
    set_queue_held(&state, true).await
}

async fn release_all(AxState(state): S) -> Response {
    set_queue_held(&state, false).await
}

async fn set_message_held(state: &State, id: &str, held: bool) -> Response {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.queue.set_message_held(id, held).await {
        Ok(()) => ok(serde_json::json!({"id": id.to_string(), "held": held})),
        Err(e) => e.into_response(),
    }
}

async fn hold_one(AxState(state): S, Path(id): Path<String>) -> Response {
    set_message_held(&state, &id, true).await
}

async fn release_one(AxState(state): S, Path(id): Path<String>) -> Response {
    set_message_held(&state, &id, false).await
}

/// A quiet-time window in `GET /api/quiet`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WindowView {
    pub name: String,
    /// `config` (from the file) or `adhoc` (from `quiet start`).
    pub source: String,
    pub active: bool,
    pub backends: Vec<String>,
    pub span: String,
    pub next_change: Option<String>,
}

async fn quiet_list(AxState(state): S) -> Response {
    state.queue.forget_ended_windows().await;
    let windows: Vec<WindowView> = state
        .queue
        .gate()
        .windows()
        .into_iter()
        .map(|w| WindowView {
            name: w.name,
            source: w.source.into(),
            active: w.active,
            backends: w.backends,
            span: w.span,
            next_change: w.next_change.map(|t| t.to_rfc3339()),
        })
        .collect();
    Json(serde_json::json!({ "windows": windows })).into_response()
}

/// `POST /api/quiet` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietStart {
    pub name: String,
    /// A duration (`2h`).
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// An RFC 3339 end.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub backends: Vec<String>,
}

async fn quiet_start(AxState(state): S, body: Result<Json<QuietStart>, JsonRejection>) -> Response {
    let Json(q) = match body {
        Ok(b) => b,
        Err(e) => {
            let status = match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, format!("bad body: {}", e.body_text()));
        }
    };
    let now: DateTime<Utc> = state.queue.gate().now();
    let until = match (&q.for_, &q.until) {
        (Some(d), None) => match Dur::parse(d) {
            Ok(d) => match chrono::Duration::from_std(d.0) {
                Ok(d) => now + d,
                Err(_) => return bad("for: too long"),
            },
            Err(e) => return bad(format!("for: {e}")),
        },
        (None, Some(t)) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return bad(format!("until: {t:?} is not an RFC 3339 time ({e})")),
        },
        _ => return bad("give exactly one of for (a duration such as 2h) and until (RFC 3339)"),
    };
    match state.queue.quiet_start(&q.name, until, q.backends).await {
        Ok(()) => ok(serde_json::json!({"name": q.name.trim(), "until": until.to_rfc3339()})),
        Err(e) => e.into_response(),
    }
}

async fn quiet_stop(AxState(state): S, Path(name): Path<String>) -> Response {
    match state.queue.quiet_stop(&name).await {
        Ok(()) => ok(serde_json::json!({"stopped": name})),
        Err(e) => e.into_response(),
    }
}

/// One backend in `GET /api/backends` and `GET /api/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    /// The health circuit: the last probes succeeded.
    pub up: bool,
    /// Quiet-time windows covering it now.
    pub windows: Vec<String>,
    /// Mail may go to it now (up, no window, queue not held).
    pub open: bool,
    /// When the health monitor last probed it (RFC 3339), and the result.
    #[serde(default)]
    pub last_probe: Option<String>,
    #[serde(default)]
    pub last_probe_ok: Option<bool>,
}

fn backend_views(state: &State) -> Vec<BackendView> {
    let gate = state.queue.gate();
    let backends = state.backends.read().expect("backends lock").clone();
    backends
        .into_iter()
        .map(|(name, address)| {
            let probe = gate.health().last_probe(&name);
            BackendView {
                last_probe: probe
                    .and_then(|(ms, _)| DateTime::from_timestamp_millis(ms))
                    .map(|t| t.to_rfc3339()),
                last_probe_ok: probe.map(|(_, ok)| ok),
                up: gate.health().is_up(&name),
                windows: gate.windows_for(&name),
                open: gate.is_open_for(&name),
                name,
                address,
            }
        })
        .collect()
}

async fn backends(AxState(state): S) -> Response {
    Json(serde_json::json!({ "backends": backend_views(&state) })).into_response()
}

/// `GET /api/status`: what `breakwater status` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub backends: Vec<BackendView>,
    /// Some backend may take mail now.
    pub delivering: bool,
    /// The whole queue is held (`queue hold`).
    pub held: bool,
    pub depth: u64,
    pub oldest_age_seconds: u64,
    pub due: u64,
    pub deferred: u64,
    pub held_messages: u64,
    pub in_flight: u64,
    pub journal_bytes: u64,
    /// Why new mail is refused, if it is.
    pub not_ready: Option<String>,
    /// The `[[flow]]`s: silent or not, last seen.
    #[serde(default)]
    pub flows: Vec<crate::flows::FlowView>,
}

async fn status(AxState(state): S) -> Response {
    let gate = state.queue.gate();
    let s = state.queue.stats();
    let now_ms = gate.now().timestamp_millis().max(0) as u64;
    Json(StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        backends: backend_views(&state),
        delivering: gate.is_open(),
        held: gate.is_held(),
        depth: state.journal.message_count(),
        oldest_age_seconds: s.oldest_age_seconds(now_ms),
        due: s.due,
        deferred: s.deferred,
        held_messages: s.held,
        in_flight: s.in_flight,
        journal_bytes: state.journal.file_bytes(),
        not_ready: state.journal.readiness().err(),
        flows: state.flows.views(now_ms),
    })
    .into_response()
}

async fn reload(AxState(state): S) -> Response {
    let state2 = state.clone();
    match tokio::task::spawn_blocking(move || (state2.reload)()).await {
        Ok(Ok(summary)) => ok(serde_json::json!({"reloaded": true, "summary": summary})),
        Ok(Err(why)) => error(
            StatusCode::CONFLICT,
            format!("reload refused, the running configuration stays: {why}"),
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Envelope, MailParams, Recipient};

    fn record(id: u64, held: bool, rcpts: &[(&str, RcptState)]) -> Record {
        Record {
            id: QueueId(id),
            message: QueueId(id),
            envelope: Envelope {
                mail_from: "s@client.test".into(),
                params: MailParams::default(),
                client_ip: "127.0.0.1".parse().unwrap(),
                helo: "c".into(),
                tls: None,
                arrived_ms: id / 1000,
            },
            rcpts: rcpts
                .iter()
                .map(|(a, s)| Recipient {
                    address: (*a).into(),
                    orcpt: None,
                    notify: 0,
                    state: s.clone(),
                    dsn_sent: false,
                })
                .collect(),
            size: 1,
            attempts: 0,
            next_attempt_ms: 0,
            held,
            purpose: crate::journal::Purpose::Primary,
            delay_warned: false,
            history: Vec::new(),
        }
    }

    /// The cheap look never skips a record the full filter keeps, and stops
    /// only past every record old enough.
    #[test]
    fn look_agrees_with_keeps() {
        let deferred = RcptState::Deferred {
            reply: "451 4.2.1 later".into(),
            attempts: 1,
        };
        let records = [
            record(
                1_000_000_000,
                false,
                &[("a@Example.COM", RcptState::Pending)],
            ),
            record(2_000_000_000, true, &[("b@other.test", deferred.clone())]),
            record(
                3_000_000_000,
                false,
                &[
                    ("c@example.com", deferred),
                    ("d@x.test", RcptState::Pending),
                ],
            ),
            record(
                9_000_000_000,
                false,
                &[(
                    "e@example.com",
                    RcptState::Failed {
                        reply: "550 no".into(),
                    },
                )],
            ),
        ];
        let states = [
            None,
            Some("held"),
            Some("deferred"),
            Some("pending"),
            Some("failed"),
            Some("delivered"),
        ];
        let domains = [
            None,
            Some("example.com"),
            Some("other.test"),
            Some("nowhere.test"),
        ];
        let bounds = [None, Some(2_500_000), Some(100)];
        for state in states {
            for domain in domains {
                for bound in bounds {
                    let f = Filter::new(state.map(str::to_owned), domain.map(str::to_owned), bound);
                    let mut stopped = false;
                    for r in &records {
                        let look = f.look(r.id, &r.encode());
                        if look == Look::Stop {
                            stopped = true;
                        }
                        if f.keeps(r) {
                            assert!(
                                !stopped && look == Look::Decode,
                                "{state:?} {domain:?} {bound:?}: {r:?}"
                            );
                        }
                    }
                }
            }
        }
        let f = Filter::new(None, None, Some(100));
        assert_eq!(f.look(QueueId(9_000_000_000), b"{}"), Look::Stop);
        let f = Filter::new(Some("held".into()), None, None);
        assert_eq!(f.look(QueueId(1), &records[0].encode()), Look::Skip);
    }
}
