//! One delivery attempt: deliver (the bytes streamed from the journal), record
//! each recipient's outcome, commit the new state, and tell the drain what the backend's answer
//! says about its load.

use super::Status;
use super::client::Attempt;
use super::dispatcher::Shared;
use super::drain::Signal;
use super::notices;
use super::outcome::Outcome;
use crate::journal::{AttemptLog, BackendReply, Purpose, QueueId, RcptState, Record};
use std::time::Duration;
use tokio::time::Instant;

/// What an attempt reports back to the dispatcher.
pub(crate) struct Report {
    pub record: Box<Record>,
    pub status: Status,
    pub signal: Signal,
    pub took: Duration,
    /// A DSN the attempt queued, to be scheduled.
    pub notice: Option<Box<Record>>,
}

/// One delivery attempt: deliver, record every recipient's outcome, and commit
/// the new state before reporting back.
pub(super) async fn attempt(shared: &Shared, record: Record) -> Report {
    let started = Instant::now();
    let (record, status, signal, notice) = run(shared, record).await;
    Report {
        record: Box::new(record),
        status,
        signal,
        took: started.elapsed(),
        notice: notice.map(Box::new),
    }
}

async fn run(shared: &Shared, mut record: Record) -> (Record, Status, Signal, Option<Record>) {
    // The bytes are streamed from the journal during delivery (and read for a
    // DSN only when one is built); here they are only checked to be there.
    match shared.journal.contains(record.message).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                "{} vanished from the journal; nothing to deliver",
                record.id
            );
            return (record, Status::Removed, Signal::Neutral, None);
        }
        Err(e) => {
            tracing::error!("{} cannot read message from journal: {e}", record.id);
            record.next_attempt_ms = shared.clock.now_ms() + retry_delay_ms(shared, &record, 1);
            return (record, Status::Kept, Signal::Neutral, None);
        }
    }
    let now = shared.clock.now_ms();
    let mut signal = Signal::Neutral;
    let mut relayed = Vec::new();
    let mut remote = None;
    let live = shared.live();
    if expire(&mut record, now, live.lifetime_ms) {
        tracing::warn!(
            "{} expired: queued longer than delivery.max_queue_lifetime",
            record.id
        );
    } else if record.has_open_recipients() {
        let prefix = match &record.purpose {
            Purpose::Replay { replay, .. } => crate::smtp::received::replay_headers(
                &live.hostname,
                replay,
                record.id,
                chrono::DateTime::from_timestamp_micros(record.id.0 as i64).unwrap_or_default(),
            ),
            _ => Vec::new(),
        };
        let result = live
            .backends
            .deliver(&record, &shared.journal, &prefix)
            .await;
        signal = signal_of(result.backend.is_some(), &result.outcomes);
        relayed = apply(shared, &mut record, &result);
        remote = result.backend;
    }
    let notice = notices::notify(shared, &mut record, &relayed, remote.as_deref()).await;
    let (record, status) = commit_state(shared, record).await;
    (record, status, signal, notice)
}

/// Records each recipient's outcome; returns the recipients delivered with
/// NOTIFY=SUCCESS through a backend that could not take the DSN request.
fn apply(shared: &Shared, record: &mut Record, result: &Attempt) -> Vec<usize> {
    record.attempts += 1;
    let backend = result.backend.as_deref().unwrap_or("none");
    let next_ms = shared.clock.now_ms() + retry_delay_ms(shared, record, record.attempts);
    let mut relayed = Vec::new();
    let mirror = record.purpose.mirror().map(str::to_owned);
    for (i, outcome) in &result.outcomes {
        match &mirror {
            Some(m) => shared
                .metrics
                .mirror_deliveries
                .with_label_values(&[m, outcome.label()])
                .inc(),
            None => shared.metrics.attempt(backend, outcome.label()),
        }
        let rcpt = &mut record.rcpts[*i];
        log_outcome(record.id, &rcpt.address, backend, outcome, next_ms);
        rcpt.state = match outcome.clone() {
            Outcome::Delivered(reply) => {
                if rcpt.wants_success_notice() && !result.dsn_passed {
                    relayed.push(*i);
                }
                RcptState::Delivered {
                    backend: backend.to_owned(),
                    reply,
                }
            }
            Outcome::Deferred(reply) => RcptState::Deferred {
                reply,
                attempts: record.attempts,
            },
            Outcome::Failed(reply) => RcptState::Failed { reply },
        };
    }
    record.next_attempt_ms = next_ms;
    record.log_attempt(summary(shared.clock.now_ms(), result));
    relayed
}

/// The history entry of an attempt.
fn summary(at_ms: u64, result: &Attempt) -> AttemptLog {
    let count = |label| {
        result
            .outcomes
            .iter()
            .filter(|(_, o)| o.label() == label)
            .count() as u32
    };
    let decisive = result
        .outcomes
        .iter()
        .find(|(_, o)| !matches!(o, Outcome::Delivered(_)))
        .or(result.outcomes.first());
    AttemptLog {
        at_ms,
        backend: result.backend.clone(),
        delivered: count("delivered"),
        deferred: count("deferred"),
        failed: count("failed"),
        reply: decisive.map(|(_, o)| o.reply().clone()),
    }
}

/// Fails every open recipient of a message older than `lifetime_ms` at `now_ms`
/// (RFC 3463 4.4.7). Returns true if it did. Pure: tested with a table.
pub(crate) fn expire(record: &mut Record, now_ms: u64, lifetime_ms: u64) -> bool {
    if now_ms.saturating_sub(record.envelope.arrived_ms) <= lifetime_ms
        || !record.has_open_recipients()
    {
        return false;
    }
    for r in record.rcpts.iter_mut().filter(|r| r.state.is_open()) {
        let last = match &r.state {
            RcptState::Deferred { reply, .. } => format!(" (last reply: {reply})"),
            _ => String::new(),
        };
        r.state = RcptState::Failed {
            reply: BackendReply::new(
                451,
                "4.4.7",
                format!("message expired after delivery.max_queue_lifetime{last}"),
            ),
        };
    }
    true
}

/// The retry delay with +-15% jitter, so a backlog deferred in one wave does
/// not come back in one wave.
fn retry_delay_ms(shared: &Shared, record: &Record, attempts: u32) -> u64 {
    let base = shared.live().retry.delay(attempts).as_millis() as u64;
    let seed = record.id.0 ^ (u64::from(attempts) << 48) ^ shared.clock.now_ms();
    jitter(base, seed)
}

/// `base` scaled by a factor in [0.85, 1.15] drawn from `seed` (xorshift64*).
pub(crate) fn jitter(base: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 random bits
    let factor = 0.85 + 0.30 * (r as f64 / (1u64 << 24) as f64);
    (base as f64 * factor) as u64
}

/// What the attempt says about the backend's load: no backend reachable or any
/// 4xx is trouble, any 2xx is health, anything else (5xx only) says nothing.
fn signal_of(reached: bool, outcomes: &[(usize, Outcome)]) -> Signal {
    if !reached
        || outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Deferred(_)))
    {
        Signal::Trouble
    } else if outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Delivered(_)))
    {
        Signal::Healthy
    } else {
        Signal::Neutral
    }
}

/// Saves the state after an attempt: a message with nothing left to do (every
/// recipient delivered, or failed and its sender told) is removed; any other is
/// saved (deferred recipients wait for their retry time). If the journal
/// refuses, the state is [`Status::Unsaved`]: the dispatcher writes it later.
pub(crate) async fn commit_state(shared: &Shared, record: Record) -> (Record, Status) {
    if record.rcpts.iter().all(|r| r.is_settled()) {
        let now = shared.clock.now_ms();
        // A canary is never retained.
        let retain_ms = (!record.purpose.is_canary()) as u64 * shared.live().retain_ms;
        match shared.journal.remove(&record, now, retain_ms).await {
            Ok(()) => {
                shared.canaries.finished(&record, now);
                let delivered = record
                    .rcpts
                    .iter()
                    .all(|r| matches!(r.state, RcptState::Delivered { .. }));
                if delivered && record.purpose.is_primary() {
                    shared.metrics.messages_delivered.inc();
                    let took = shared
                        .clock
                        .now_ms()
                        .saturating_sub(record.envelope.arrived_ms);
                    shared
                        .metrics
                        .delivery_duration
                        .observe(took as f64 / 1000.0);
                }
                let how = match (&record.purpose, delivered) {
                    (Purpose::Mirror { mirror }, true) => {
                        format!("copy delivered to mirror {mirror}")
                    }
                    (Purpose::Mirror { mirror }, false) => {
                        format!("copy to mirror {mirror} given up")
                    }
                    (Purpose::Replay { replay, .. }, true) => format!("replay {replay} delivered"),
                    (Purpose::Replay { replay, .. }, false) => format!("replay {replay} failed"),
                    (Purpose::Canary { backend, .. }, true) => {
                        format!("canary accepted by {backend}")
                    }
                    (Purpose::Canary { backend, .. }, false) => {
                        format!("canary refused by {backend}")
                    }
                    (_, true) => "delivered to all recipients".into(),
                    (_, false) => "done (failures reported)".into(),
                };
                if record.message == record.id {
                    tracing::info!("{} removed: {how}", record.id);
                } else {
                    tracing::info!("{} job {} done: {how}", record.message, record.id);
                }
                return (record, Status::Removed);
            }
            Err(e) => tracing::error!(
                "{} done but not removed from the journal (kept in memory, written when the journal takes writes again): {e}",
                record.id
            ),
        }
        return (record, Status::Unsaved);
    }
    if let Err(e) = shared.journal.save(&record).await {
        tracing::error!(
            "{} state not saved (kept in memory, written when the journal takes writes again): {e}",
            record.id
        );
        return (record, Status::Unsaved);
    }
    (record, Status::Kept)
}

/// Writes a state an earlier attempt could not (no delivery is made).
pub(super) async fn persist(shared: &Shared, record: Record) -> Report {
    let started = Instant::now();
    let (record, status) = commit_state(shared, record).await;
    Report {
        record: Box::new(record),
        status,
        signal: Signal::Neutral,
        took: started.elapsed(),
        notice: None,
    }
}

fn log_outcome(id: QueueId, rcpt: &str, backend: &str, outcome: &Outcome, next_ms: u64) {
    match outcome {
        Outcome::Delivered(reply) => {
            tracing::info!("{id} delivered to=<{rcpt}> backend={backend} reply=\"{reply}\"")
        }
        Outcome::Deferred(reply) => {
            let next = chrono::DateTime::from_timestamp_millis(next_ms as i64)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            tracing::info!(
                "{id} deferred to=<{rcpt}> backend={backend} reason=\"{reply}\" next_attempt={next}"
            )
        }
        Outcome::Failed(reply) => {
            tracing::warn!("{id} failed to=<{rcpt}> backend={backend} reply=\"{reply}\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_15_percent_and_spreads() {
        let base = 60_000;
        let values: Vec<u64> = (0..1000u64)
            .map(|i| jitter(base, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        assert!(values.iter().all(|&v| (51_000..=69_000).contains(&v)));
        let (lo, hi) = (values.iter().min().unwrap(), values.iter().max().unwrap());
        assert!(hi - lo > 12_000, "spread {lo}..{hi}");
    }

    #[test]
    fn expiry_table() {
        use crate::journal::{Envelope, MailParams, QueueId, Recipient};
        let rcpt = |state| Recipient {
            address: "a@example.com".into(),
            orcpt: None,
            notify: 0,
            state,
            dsn_sent: false,
        };
        let record = |states: Vec<RcptState>| Record {
            id: QueueId(1),
            message: QueueId(1),
            envelope: Envelope {
                mail_from: "s@client.test".into(),
                params: MailParams::default(),
                client_ip: "127.0.0.1".parse().unwrap(),
                helo: "c".into(),
                tls: None,
                arrived_ms: 1_000_000,
            },
            rcpts: states.into_iter().map(rcpt).collect(),
            size: 0,
            attempts: 0,
            next_attempt_ms: 0,
            held: false,
            purpose: crate::journal::Purpose::Primary,
            delay_warned: false,
            history: Vec::new(),
        };
        let deferred = || RcptState::Deferred {
            reply: "451 4.3.0 later".into(),
            attempts: 3,
        };
        let delivered = || RcptState::Delivered {
            backend: "b0".into(),
            reply: "250 ok".into(),
        };
        let day = 86_400_000;
        // (arrival + age, lifetime, states, expired?)
        let cases = [
            (5 * day, 5 * day, vec![deferred()], false),
            (5 * day + 1, 5 * day, vec![deferred()], true),
            (10 * day, 5 * day, vec![RcptState::Pending], true),
            (10 * day, 5 * day, vec![delivered()], false),
            (10 * day, 5 * day, vec![delivered(), deferred()], true),
        ];
        for (age, lifetime, states, want) in cases {
            let mut r = record(states);
            assert_eq!(expire(&mut r, 1_000_000 + age, lifetime), want, "age {age}");
            if want {
                assert!(r.rcpts.iter().all(|x| !x.state.is_open()));
                assert!(r.rcpts.iter().any(
                    |x| matches!(&x.state, RcptState::Failed { reply } if reply.enhanced == "4.4.7")
                ));
            }
        }
    }

    #[test]
    fn signals() {
        let d = |o: Outcome| vec![(0, o)];
        assert_eq!(signal_of(false, &[]), Signal::Trouble);
        assert_eq!(
            signal_of(true, &d(Outcome::Delivered("250".into()))),
            Signal::Healthy
        );
        assert_eq!(
            signal_of(true, &d(Outcome::Deferred("421".into()))),
            Signal::Trouble
        );
        assert_eq!(
            signal_of(true, &d(Outcome::Failed("550".into()))),
            Signal::Neutral
        );
    }
}
