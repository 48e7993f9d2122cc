//! Retained and queued mail given back: `POST /api/replay` (new primary jobs
//! for delivered messages after the backend was restored from a backup),
//! `GET /api/replay/ID` (its progress), `GET /api/messages` (what
//! `breakwater export` writes) and `GET /api/queue/ID/raw` (a message's exact
//! stored bytes, streamed).
//!
//! A replay's id is derived from what it selects (since, until, recipient,
//! backend), so the same command given twice is the same replay, and the
//! journal lets a message have at most one job per replay: repeating it by
//! mistake sends nothing new.

use super::State;
use super::api::{ApiError, error, parse_id, rfc3339};
use crate::config::address_matches;
use crate::journal::{
    self, Added, Entry, Journal, Look, Purpose, QueueId, RcptState, Recipient, Record,
};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type S = AxState<Arc<State>>;

/// Messages a replay stores jobs for at once (the group commit batches them).
const REPLAY_BATCH: usize = 256;
/// Messages one replay may select (a larger selection is refused: narrow it).
const MAX_REPLAY: usize = 200_000;
/// Messages a dry run lists.
const DRY_RUN_LIST: usize = 1_000;
/// Most entries one page of `GET /api/messages` returns, and looks at.
const MAX_PAGE: usize = 1_000;
const MAX_SCAN: usize = 5_000;

/// `POST /api/replay` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Messages that arrived at or after this (RFC 3339 or YYYY-MM-DD, UTC).
    pub since: String,
    /// ... and before this.
    #[serde(default)]
    pub until: Option<String>,
    /// Only recipients matching this (`user@example.com`, `*@example.com`).
    #[serde(default)]
    pub recipient: Option<String>,
    /// Only to this backend.
    #[serde(default)]
    pub to: Option<String>,
    /// List what would go; queue nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/replay` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ReplayAnswer {
    pub id: String,
    /// Delivered messages the selection matched.
    pub matched: u64,
    /// Queued for delivery again by this call.
    pub queued: u64,
    /// Matched but not queued: replayed by this replay already (or gone).
    pub skipped: u64,
    pub dry_run: bool,
    /// What would go (dry run only; at most 1,000).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ReplayItem>,
}

/// One message a dry run would replay.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ReplayItem {
    pub id: String,
    pub from: String,
    pub arrived: Option<String>,
    pub recipients: Vec<String>,
}

/// A replay's progress (`GET /api/replay/ID`), kept in the journal.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReplayStatus {
    pub id: String,
    pub since: String,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    /// Jobs made (all calls of this replay together).
    #[serde(default)]
    pub queued: u64,
    /// Jobs delivered to every recipient.
    #[serde(default)]
    pub delivered: u64,
    /// Jobs that ended with a recipient failed.
    #[serde(default)]
    pub failed: u64,
}

fn parse_time(key: &str, s: &str) -> Result<u64, ApiError> {
    let s = s.trim();
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "{key} {s:?}: use RFC 3339 (2026-12-01T08:00:00+01:00) or a date (2026-12-01, UTC)"
                ),
            )
        })?;
    Ok(t.timestamp_millis().max(0) as u64)
}

/// FNV-1a: the replay id of a selection (stable across releases and hosts).
fn replay_id(since: u64, until: Option<u64>, recipient: Option<&str>, to: Option<&str>) -> String {
    let key = format!(
        "{since}|{}|{}|{}",
        until.map_or(String::new(), |u| u.to_string()),
        recipient.unwrap_or("").to_ascii_lowercase(),
        to.unwrap_or("")
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("R{:012X}", h >> 16)
}

/// A message a replay selected: only what its new job needs (a replay may
/// select many thousands: the rest of the stored entry is not kept).
struct Selected {
    message: QueueId,
    envelope: journal::Envelope,
    size: u64,
    rcpts: Vec<Recipient>,
}

/// What a selection matches in one stored message: the recipients the
/// primary delivery got to that the pattern takes, if any.
fn matching(
    e: &Entry,
    since: u64,
    until: Option<u64>,
    recipient: Option<&str>,
) -> Option<Selected> {
    let arrived = e.message.envelope.arrived_ms;
    if arrived < since || until.is_some_and(|u| arrived >= u) {
        return None;
    }
    let finished = e.message.finished.as_ref()?;
    let rcpts: Vec<Recipient> = finished
        .rcpts
        .iter()
        .filter(|r| matches!(r.state, RcptState::Delivered { .. }))
        .filter(|r| recipient.is_none_or(|p| address_matches(p, &r.address)))
        .map(|r| Recipient {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            // The sender heard about this message when it was delivered.
            notify: smtp_proto::RCPT_NOTIFY_NEVER,
            state: RcptState::Pending,
            dsn_sent: false,
        })
        .collect();
    (!rcpts.is_empty()).then(|| Selected {
        message: e.message.id,
        envelope: e.message.envelope.clone(),
        size: e.message.size,
        rcpts,
    })
}

/// Where a walk for messages that arrived at or after `since_ms` may start:
/// ids are arrival microseconds (raised by at most one per message in a
/// burst), so a minute before is safe.
fn start_near(since_ms: u64) -> Option<QueueId> {
    (since_ms > 60_000).then(|| QueueId((since_ms - 60_000) * 1000))
}

/// Every message of the journal `keep` takes, oldest first, read page by page.
fn select<T: Send>(
    journal: &Journal,
    since: u64,
    mut keep: impl FnMut(&Entry) -> Option<T>,
    max: usize,
) -> Result<Vec<T>, ApiError> {
    let mut out = Vec::new();
    let mut after = start_near(since);
    for _ in 0..100_000 {
        let mut found = Vec::new();
        let (_, next) = journal
            .page(
                after,
                MAX_SCAN,
                MAX_SCAN,
                |_, _| Look::Decode,
                |e| {
                    if let Some(t) = keep(e) {
                        found.push(t);
                    }
                    false
                },
            )
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")))?;
        out.extend(found);
        if out.len() > max {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "the selection matches more than {max} messages; narrow it with --until or --recipient"
                ),
            ));
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
    Ok(out)
}

pub(super) async fn replay(
    AxState(state): S,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad body: {}", e.body_text()),
            );
        }
    };
    match run_replay(&state, req).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run_replay(state: &State, req: ReplayRequest) -> Result<ReplayAnswer, ApiError> {
    let since = parse_time("since", &req.since)?;
    let until = req
        .until
        .as_deref()
        .map(|u| parse_time("until", u))
        .transpose()?;
    if until.is_some_and(|u| u <= since) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "until must be after since".into(),
        ));
    }
    let recipient = req
        .recipient
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(r) = recipient
        && !(r == "*" || r.contains('@'))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("recipient {r:?}: use user@example.com or *@example.com"),
        ));
    }
    let to = req.to.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = to {
        let known = state.queue.gate().backend_names();
        if !known.iter().any(|b| b == t) {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("no backend named {t:?} (backends: {})", known.join(", ")),
            ));
        }
    }
    let id = replay_id(since, until, recipient, to);
    let journal = state.journal.clone();
    let pattern = recipient.map(str::to_owned);
    let selected = tokio::task::spawn_blocking(move || {
        select(
            &journal,
            since,
            |e| matching(e, since, until, pattern.as_deref()),
            MAX_REPLAY,
        )
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "selection failed".into()))??;
    let mut answer = ReplayAnswer {
        id: id.clone(),
        matched: selected.len() as u64,
        queued: 0,
        skipped: 0,
        dry_run: req.dry_run,
        messages: Vec::new(),
    };
    if req.dry_run {
        answer.messages = selected
            .iter()
            .take(DRY_RUN_LIST)
            .map(|m| ReplayItem {
                id: m.message.to_string(),
                from: m.envelope.mail_from.clone(),
                arrived: rfc3339(m.envelope.arrived_ms),
                recipients: m.rcpts.iter().map(|r| r.address.clone()).collect(),
            })
            .collect();
        return Ok(answer);
    }
    ensure_document(state, &id, &req, to).await?;
    let purpose = Purpose::Replay {
        replay: id.clone(),
        to: to.map(str::to_owned),
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = selected.into_iter();
    loop {
        while tasks.len() < REPLAY_BATCH {
            let Some(m) = pending.next() else {
                break;
            };
            let record = Record {
                id: state.journal.next_id(),
                message: m.message,
                purpose: purpose.clone(),
                envelope: m.envelope,
                rcpts: m.rcpts,
                size: m.size,
                attempts: 0,
                next_attempt_ms: 0,
                held: false,
                delay_warned: false,
                history: Vec::new(),
            };
            let journal = state.journal.clone();
            let replay = id.clone();
            tasks.spawn(async move {
                let r = journal.add_job(&record, &replay).await;
                (record, r)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let Ok((record, result)) = done else {
            answer.skipped += 1;
            continue;
        };
        match result {
            Ok(Added::Added) => {
                answer.queued += 1;
                state.metrics.replayed.inc();
                tracing::info!(
                    "{} queued again by replay {id} as job {}",
                    record.message,
                    record.id
                );
                state.queue.enqueued(record);
            }
            Ok(Added::Skipped | Added::Missing) => answer.skipped += 1,
            Err(e) => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "journal: {e} (after {} queued; run the same replay again to go on)",
                        answer.queued
                    ),
                ));
            }
        }
    }
    tracing::info!(
        "replay {id}: matched {}, queued {}, skipped {} (replayed before)",
        answer.matched,
        answer.queued,
        answer.skipped
    );
    Ok(answer)
}

/// Stores the replay's document (its counters start at 0) unless it exists.
async fn ensure_document(
    state: &State,
    id: &str,
    req: &ReplayRequest,
    to: Option<&str>,
) -> Result<(), ApiError> {
    let key = format!("{}{id}", journal::REPLAY_PREFIX);
    let storage =
        |e: journal::Error| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}"));
    if state.journal.document(&key).map_err(storage)?.is_some() {
        return Ok(());
    }
    let doc = ReplayStatus {
        id: id.to_owned(),
        since: req.since.clone(),
        until: req.until.clone(),
        recipient: req.recipient.clone(),
        to: to.map(str::to_owned),
        created: rfc3339(state.queue.gate().now().timestamp_millis().max(0) as u64),
        ..ReplayStatus::default()
    };
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    state
        .journal
        .set_document(key, Some(bytes))
        .await
        .map_err(storage)
}

pub(super) async fn replay_status(AxState(state): S, Path(id): Path<String>) -> Response {
    if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a replay id"),
        );
    }
    let key = format!("{}{id}", journal::REPLAY_PREFIX);
    match state.journal.document(&key) {
        Ok(Some(doc)) => match serde_json::from_slice::<ReplayStatus>(&doc) {
            Ok(s) => Json(s).into_response(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("replay document unreadable: {e}"),
            ),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no replay {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")),
    }
}

/// `GET /api/messages` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    since: Option<String>,
    until: Option<String>,
    recipient: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// One stored message, as `GET /api/messages` lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StoredView {
    pub id: String,
    pub from: String,
    pub arrived: Option<String>,
    pub arrived_ms: u64,
    pub size: u64,
    pub recipients: Vec<String>,
    /// `queued` (a job still needs it) or `retained` (delivered, kept).
    pub state: String,
}

/// `GET /api/messages` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StoredPage {
    pub messages: Vec<StoredView>,
    pub next: Option<String>,
}

pub(super) async fn messages(
    AxState(state): S,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", e.body_text()),
            );
        }
    };
    let parse = |key, v: &Option<String>| v.as_deref().map(|s| parse_time(key, s)).transpose();
    let (since, until) = match (parse("since", &q.since), parse("until", &q.until)) {
        (Ok(s), Ok(u)) => (s.unwrap_or(0), u),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => start_near(since),
        Some(c) => match parse_id(c) {
            Ok(id) => Some(id),
            Err(e) => return e.into_response(),
        },
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let pattern = q.recipient.filter(|r| !r.trim().is_empty());
    let journal = state.journal.clone();
    let page = tokio::task::spawn_blocking(move || {
        journal.page(
            after,
            limit,
            MAX_SCAN,
            |_, _| Look::Decode,
            |e| {
                let arrived = e.message.envelope.arrived_ms;
                arrived >= since
                    && until.is_none_or(|u| arrived < u)
                    && pattern.as_deref().is_none_or(|p| {
                        e.view()
                            .rcpts
                            .iter()
                            .any(|r| address_matches(p, &r.address))
                    })
            },
        )
    })
    .await;
    match page {
        Ok(Ok((entries, next))) => Json(StoredPage {
            messages: entries
                .iter()
                .map(|e| StoredView {
                    id: e.message.id.to_string(),
                    from: e.message.envelope.mail_from.clone(),
                    arrived: rfc3339(e.message.envelope.arrived_ms),
                    arrived_ms: e.message.envelope.arrived_ms,
                    size: e.message.size,
                    recipients: e.view().rcpts.iter().map(|r| r.address.clone()).collect(),
                    state: if e.is_retained() {
                        "retained"
                    } else {
                        "queued"
                    }
                    .into(),
                })
                .collect(),
            next: next.map(|n| n.to_string()),
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
    }
}

/// Parts read (and sent) at a time when streaming a message out.
const RAW_PARTS: u32 = 16;

pub(super) async fn raw(AxState(state): S, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let journal = state.journal.clone();
    let entry = {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || j.entry(id)).await
    };
    let size = match entry {
        Ok(Ok(Some(e))) => e.message.size,
        Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, format!("{id} is not in the journal")),
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}")),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "lookup failed"),
    };
    tracing::info!("{id} read through the admin API (raw message)");
    let total = journal::parts(size);
    let stream = futures_util::stream::unfold(0u32, move |first| {
        let journal = journal.clone();
        async move {
            if first >= total {
                return None;
            }
            let chunk = journal
                .read_parts(id, first, RAW_PARTS)
                .await
                .map(bytes::Bytes::from)
                .map_err(std::io::Error::other);
            let stop = chunk.is_err();
            Some((chunk, if stop { total } else { first + RAW_PARTS }))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "message/rfc822".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.eml\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_are_stable_and_tell_selections_apart() {
        let a = replay_id(1_000, None, None, None);
        assert_eq!(a, replay_id(1_000, None, None, None));
        assert_eq!(a.len(), 13);
        assert_ne!(a, replay_id(1_001, None, None, None));
        assert_ne!(a, replay_id(1_000, Some(2_000), None, None));
        assert_ne!(a, replay_id(1_000, None, Some("*@example.com"), None));
        assert_eq!(
            replay_id(1_000, None, Some("A@Example.com"), None),
            replay_id(1_000, None, Some("a@example.com"), None)
        );
        assert_ne!(a, replay_id(1_000, None, None, Some("b0")));
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("since", "1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("since", "1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert!(parse_time("since", "2h").is_err());
        assert!(parse_time("since", "").is_err());
    }
}
