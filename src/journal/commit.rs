//! Group commit: one writer thread owns every redb write transaction.
//!
//! Sessions and delivery tasks send [`Op`]s; the writer takes everything that is
//! waiting (up to a batch limit), applies it in one write transaction, commits it
//! and only then answers every op of the batch. While one commit is on disk the
//! next batch gathers, so concurrent sessions share fsyncs instead of paying one
//! each. A batch that only stages parts of messages still being received (or
//! discards them) commits without fsync: nothing in it has been acknowledged.
//!
//! After an I/O error (a full disk, say) redb refuses every later transaction
//! until the database is closed and opened again. The writer then fails every op
//! with [`CommitError::Unavailable`], closes the database, and reopens it with a
//! back-off until that works, by itself, when space returns. Each reopen bumps
//! the generation: parts staged before it may be gone (they were never durable),
//! so a message whose parts were staged in an older generation is refused.

use super::record::{Finished, StoredMessage};
use super::{BODIES, DOCUMENTS, JOBS, MESSAGES, PART, SETTINGS, STAGING, Shared};
use redb::{Database, Durability, ReadableTable};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a batch was not committed. Cloned to every op of the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// redb refused the transaction.
    #[error("{0}")]
    Storage(Arc<redb::Error>),
    /// The database is closed after an I/O error and being reopened.
    #[error("journal unavailable after a storage error (reopening): {0}")]
    Unavailable(Arc<str>),
    /// The message's staged parts were written before a reopen and may be lost.
    #[error("the message's parts were lost when the journal was reopened")]
    StagedLost,
}

/// One change to the journal, answered once it is committed.
pub(super) struct Op {
    pub kind: OpKind,
    pub done: oneshot::Sender<Result<Applied, CommitError>>,
}

/// What a committed op did, where the writer had to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Done as asked.
    Done,
    /// The job was removed and it was the message's last: the message is
    /// retained (`true`) or gone with its bytes (`false`).
    Retired { retained: bool },
    /// The message is not in the journal (a new job for it was not made).
    Missing,
    /// The message has had a job from this replay already.
    Skipped,
}

/// What to change.
pub(super) enum OpKind {
    /// A message is complete: its remaining parts (from `first_part` on), its
    /// metadata and its jobs, durably. `staged` is the generation its earlier
    /// parts were staged in, if any were.
    Insert {
        id: u64,
        message: Vec<u8>,
        jobs: Vec<(u64, Vec<u8>)>,
        body: Vec<u8>,
        first_part: u32,
        staged: Option<u64>,
    },
    /// Whole parts of a message still being received, from `first_part` on.
    Stage {
        id: u64,
        first_part: u32,
        data: Vec<u8>,
    },
    /// A message that will never be complete: drop its first `parts` staged parts.
    Discard { id: u64, parts: u32 },
    /// New state for a stored job (after a delivery attempt, a hold ...).
    Update {
        message: u64,
        job: u64,
        meta: Vec<u8>,
    },
    /// The job is done with. If it was the message's last, the message is
    /// kept until `retain_until_ms` when that is set and some recipient was
    /// delivered, else removed with its `parts` body parts. `finished` (the
    /// primary job's outcome) is saved with the message; `tally` counts a
    /// replay job's end in the replay's document (delivered or not).
    RemoveJob {
        message: u64,
        job: u64,
        parts: u32,
        retain_until_ms: u64,
        finished: Option<Finished>,
        tally: Option<(String, bool)>,
    },
    /// A new job for a stored message, made by replay `replay` (refused with
    /// [`Applied::Skipped`] if the message had one from it already).
    AddJob {
        message: u64,
        job: u64,
        meta: Vec<u8>,
        replay: String,
    },
    /// Retained messages whose time is up (or whose room is needed): removed
    /// with their parts, unless a job has come for them meanwhile.
    Expire { messages: Vec<(u64, u32)> },
    /// A persistent setting.
    Setting { key: &'static str, value: u64 },
    /// A named document (an ad-hoc quiet window ...); `None` removes it.
    Document { key: String, value: Option<Vec<u8>> },
    /// Finish what is queued, then stop the writer.
    Shutdown,
}

impl OpKind {
    /// True if acknowledging this op promises durability (needs fsync).
    fn is_durable(&self) -> bool {
        !matches!(self, OpKind::Stage { .. } | OpKind::Discard { .. })
    }

    fn bytes(&self) -> usize {
        match self {
            OpKind::Insert { body, .. } => body.len(),
            OpKind::Stage { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// Limits of one group commit.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most ops per transaction (1 = one commit per message).
    pub max_ops: usize,
    /// Most message bytes per transaction.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_ops: 256,
            max_bytes: 16 << 20,
        }
    }
}

/// Longest pause between two reopen attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Parts of discarded messages removed per transaction: dropping a large
/// unfinished message is spread over several commits so the small commits
/// behind it (a 250 waiting) are not held up.
const DISCARD_PARTS_PER_BATCH: u32 = 512;

/// A discarded message whose parts are still being removed: parts
/// `next..end` of message `id`. Its staging entry goes with its last part, so a
/// crash meanwhile leaves it to [`drop_unfinished`].
#[derive(Debug, Clone, Copy)]
struct Discarding {
    id: u64,
    next: u32,
    end: u32,
}

/// The writer loop; returns when a `Shutdown` op was handled or every sender is gone.
pub(super) fn run(shared: Arc<Shared>, rx: &Receiver<Op>, limits: BatchLimits) {
    let mut batch: Vec<Op> = Vec::with_capacity(limits.max_ops);
    // Where a restarted writer (after a panic) left off.
    let mut generation = shared.generation.load(std::sync::atomic::Ordering::Acquire);
    let mut discarding: VecDeque<Discarding> = VecDeque::new();
    loop {
        if shared.db().is_err() {
            // Staged parts may be gone with the reopen; drop_unfinished at the
            // next open takes whatever is left.
            discarding.clear();
            if !reopen(&shared, rx, &mut generation) {
                return;
            }
        }
        // With discards pending, work on them whenever no op is waiting.
        let first = if discarding.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(op) => Some(op),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        };
        let mut bytes = 0;
        if let Some(first) = first {
            bytes = first.kind.bytes();
            batch.push(first);
        }
        while batch.len() < limits.max_ops && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.kind.bytes();
                    batch.push(op);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let before = discarding.clone();
        let mut applied = Vec::with_capacity(batch.len());
        let result = match shared.db() {
            Ok(db) => apply(&db, &batch, generation, &mut discarding, &mut applied).map_err(|e| {
                discarding = before; // nothing of the batch was committed
                if needs_reopen(&e) {
                    shared.broken(&e.to_string());
                }
                CommitError::Storage(Arc::new(e))
            }),
            Err(e) => Err(e),
        };
        // A message refused for stale parts must not fail its batch-mates.
        let mut stop = false;
        for (k, op) in batch.drain(..).enumerate() {
            stop |= matches!(op.kind, OpKind::Shutdown);
            let r = match (&result, &op.kind) {
                (
                    Ok(()),
                    OpKind::Insert {
                        staged: Some(g), ..
                    },
                ) if *g != generation => Err(CommitError::StagedLost),
                (Ok(()), _) => Ok(applied.get(k).copied().unwrap_or(Applied::Done)),
                (Err(e), _) => Err(e.clone()),
            };
            let _ = op.done.send(r);
        }
        if stop {
            return;
        }
    }
}

/// After an I/O error: fail what arrives, close the database, and open it again
/// with a back-off until that works. Returns false if the writer must stop.
fn reopen(shared: &Shared, rx: &Receiver<Op>, generation: &mut u64) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        match shared.reopen() {
            Ok(()) => {
                *generation += 1;
                shared.set_generation(*generation);
                tracing::warn!("journal reopened after a storage error; accepting mail again");
                return true;
            }
            Err(e) => tracing::debug!("journal reopen failed (retrying in {backoff:?}): {e}"),
        }
        let until = std::time::Instant::now() + backoff;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(op) => {
                    let stop = matches!(op.kind, OpKind::Shutdown);
                    let _ = op.done.send(Err(shared.unavailable()));
                    if stop {
                        return false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// True if redb wants the database closed and reopened after this error.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

fn apply(
    db: &Database,
    batch: &[Op],
    generation: u64,
    discarding: &mut VecDeque<Discarding>,
    applied: &mut Vec<Applied>,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    if !batch.iter().any(|op| op.kind.is_durable()) {
        txn.set_durability(Durability::None)?;
    }
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut jobs = txn.open_table(JOBS)?;
        let mut bodies = txn.open_table(BODIES)?;
        let mut settings = txn.open_table(SETTINGS)?;
        let mut staging = txn.open_table(STAGING)?;
        let mut documents = txn.open_table(DOCUMENTS)?;
        for op in batch {
            let mut result = Applied::Done;
            match &op.kind {
                OpKind::Insert {
                    id,
                    message,
                    jobs: new_jobs,
                    body,
                    first_part,
                    staged,
                } => {
                    if let Some(g) = staged {
                        if *g != generation {
                            // Answered with StagedLost; the spool discards its parts.
                            applied.push(result);
                            continue;
                        }
                        staging.remove(id)?;
                    }
                    insert_parts(&mut bodies, *id, *first_part, body)?;
                    if body.is_empty() && *first_part == 0 {
                        bodies.insert((*id, 0), [].as_slice())?;
                    }
                    messages.insert(id, message.as_slice())?;
                    for (job, meta) in new_jobs {
                        jobs.insert((*id, *job), meta.as_slice())?;
                    }
                }
                OpKind::Stage {
                    id,
                    first_part,
                    data,
                } => {
                    if *first_part == 0 {
                        staging.insert(id, generation)?;
                    }
                    insert_parts(&mut bodies, *id, *first_part, data)?;
                }
                OpKind::Discard { id, parts } => discarding.push_back(Discarding {
                    id: *id,
                    next: 0,
                    end: *parts,
                }),
                OpKind::Update { message, job, meta } => {
                    jobs.insert((*message, *job), meta.as_slice())?;
                }
                OpKind::RemoveJob {
                    message,
                    job,
                    parts,
                    retain_until_ms,
                    finished,
                    tally,
                } => {
                    jobs.remove((*message, *job))?;
                    if let Some((replay, delivered)) = tally {
                        let field = if *delivered { "delivered" } else { "failed" };
                        count_replay(&mut documents, replay, field)?;
                    }
                    let last = jobs
                        .range((*message, 0)..=(*message, u64::MAX))?
                        .next()
                        .is_none();
                    result = retire_or_update(
                        &mut messages,
                        &mut bodies,
                        *message,
                        *parts,
                        last,
                        *retain_until_ms,
                        finished.as_ref(),
                    )?;
                }
                OpKind::AddJob {
                    message,
                    job,
                    meta,
                    replay,
                } => {
                    let stored = messages
                        .get(message)?
                        .and_then(|v| StoredMessage::decode(v.value()).ok());
                    result = match stored {
                        None => Applied::Missing,
                        Some(m) if m.replays.contains(replay) => Applied::Skipped,
                        Some(mut m) => {
                            m.replays.push(replay.clone());
                            m.retain_until_ms = 0;
                            messages.insert(message, m.encode().as_slice())?;
                            jobs.insert((*message, *job), meta.as_slice())?;
                            count_replay(&mut documents, replay, "queued")?;
                            Applied::Done
                        }
                    };
                }
                OpKind::Expire { messages: list } => {
                    for (id, parts) in list {
                        let busy = jobs.range((*id, 0)..=(*id, u64::MAX))?.next().is_some();
                        if busy {
                            continue;
                        }
                        messages.remove(id)?;
                        for part in 0..*parts {
                            bodies.remove((*id, part))?;
                        }
                    }
                }
                OpKind::Setting { key, value } => {
                    settings.insert(*key, *value)?;
                }
                OpKind::Document { key, value } => match value {
                    Some(v) => {
                        documents.insert(key.as_str(), v.as_slice())?;
                    }
                    None => {
                        documents.remove(key.as_str())?;
                    }
                },
                OpKind::Shutdown => {}
            }
            applied.push(result);
        }
        let mut budget = DISCARD_PARTS_PER_BATCH;
        while budget > 0 {
            let Some(d) = discarding.front_mut() else {
                break;
            };
            let until = d.end.min(d.next + budget);
            for part in d.next..until {
                bodies.remove((d.id, part))?;
            }
            budget -= until - d.next;
            d.next = until;
            if d.next == d.end {
                staging.remove(d.id)?;
                discarding.pop_front();
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// After a job of `message` was removed: saves the primary delivery's
/// `finished` outcome with the message, and if that was its `last` job keeps
/// it until `retain_until_ms` (when set and a recipient got it) or removes it
/// with its `parts`. Without retention the last job's removal never reads or
/// decodes the message: the common case on the delivery path.
fn retire_or_update(
    messages: &mut redb::Table<u64, &[u8]>,
    bodies: &mut redb::Table<(u64, u32), &[u8]>,
    message: u64,
    parts: u32,
    last: bool,
    retain_until_ms: u64,
    finished: Option<&Finished>,
) -> Result<Applied, redb::Error> {
    let remove = |messages: &mut redb::Table<u64, &[u8]>,
                  bodies: &mut redb::Table<(u64, u32), &[u8]>|
     -> Result<Applied, redb::Error> {
        messages.remove(message)?;
        for part in 0..parts {
            bodies.remove((message, part))?;
        }
        Ok(Applied::Retired { retained: false })
    };
    if last && retain_until_ms == 0 {
        return remove(messages, bodies);
    }
    if !last && finished.is_none() {
        return Ok(Applied::Done);
    }
    let Some(mut m) = messages
        .get(message)?
        .and_then(|v| StoredMessage::decode(v.value()).ok())
    else {
        return if last {
            remove(messages, bodies)
        } else {
            Ok(Applied::Done)
        };
    };
    if let Some(f) = finished {
        m.finished = Some(f.clone());
    }
    if !last {
        messages.insert(message, m.encode().as_slice())?;
        return Ok(Applied::Done);
    }
    if m.finished.as_ref().is_some_and(Finished::any_delivered) {
        m.retain_until_ms = retain_until_ms;
        messages.insert(message, m.encode().as_slice())?;
        return Ok(Applied::Retired { retained: true });
    }
    remove(messages, bodies)
}

/// Counts a replay's job in the replay's document (`replay/ID`, JSON with
/// `queued`, `delivered` and `failed` counters), in the same commit as the
/// job's making or removal, so the counts are exact across crashes.
fn count_replay(
    documents: &mut redb::Table<&str, &[u8]>,
    replay: &str,
    field: &str,
) -> Result<(), redb::Error> {
    let key = format!("{}{replay}", super::REPLAY_PREFIX);
    let Some(mut doc) = documents
        .get(key.as_str())?
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.value()).ok())
    else {
        return Ok(());
    };
    let n = doc
        .get(field)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    doc[field] = serde_json::Value::from(n + 1);
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    documents.insert(key.as_str(), bytes.as_slice())?;
    Ok(())
}

fn insert_parts(
    bodies: &mut redb::Table<(u64, u32), &[u8]>,
    id: u64,
    first_part: u32,
    data: &[u8],
) -> Result<(), redb::Error> {
    for (k, chunk) in data.chunks(PART).enumerate() {
        bodies.insert((id, first_part + k as u32), chunk)?;
    }
    Ok(())
}

/// Removes the parts of messages whose reception never finished (staged, then
/// the relay stopped or crashed before their final commit). Returns how many.
pub(super) fn drop_unfinished(db: &Database) -> Result<usize, redb::Error> {
    let txn = db.begin_write()?;
    let mut n = 0;
    {
        let mut staging = txn.open_table(STAGING)?;
        let mut bodies = txn.open_table(BODIES)?;
        let ids: Vec<u64> = staging
            .iter()?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for id in ids {
            let parts: Vec<u32> = bodies
                .range((id, 0)..=(id, u32::MAX))?
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for part in parts {
                bodies.remove((id, part))?;
            }
            staging.remove(id)?;
            n += 1;
        }
    }
    txn.commit()?;
    Ok(n)
}
