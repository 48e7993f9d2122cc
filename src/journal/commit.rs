//! Group commit: one writer thread owns every redb write transaction.
//!
//! Sessions and delivery tasks send [`Op`]s; the writer takes everything that is
//! waiting (up to a batch limit), applies it in one write transaction, commits it
//! durably (redb fsyncs on `Durability::Immediate`, its default) and only then answers
//! every op of the batch. While one commit is on disk the next batch gathers, so
//! concurrent sessions share fsyncs instead of paying one each.

use super::{BODIES, META, PART, SETTINGS};
use redb::Database;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::oneshot;

/// One change to the journal, answered once it is durable.
pub(super) struct Op {
    pub kind: OpKind,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What to change.
pub(super) enum OpKind {
    /// A new message: metadata and bytes.
    Insert {
        id: u64,
        meta: Vec<u8>,
        body: Vec<u8>,
    },
    /// New metadata for a stored message (after a delivery attempt, a hold ...).
    Update { id: u64, meta: Vec<u8> },
    /// The message is done with: remove metadata and its `parts` body parts.
    Remove { id: u64, parts: u32 },
    /// A persistent setting.
    Setting { key: &'static str, value: u64 },
    /// Finish what is queued, then stop the writer.
    Shutdown,
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

/// The writer loop; returns when a `Shutdown` op was handled or every sender is gone.
pub(super) fn run(db: Arc<Database>, rx: Receiver<Op>, limits: BatchLimits) {
    let mut batch: Vec<Op> = Vec::with_capacity(limits.max_ops);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let mut bytes = 0;
        let mut stop = false;
        while batch.len() < limits.max_ops && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(op) => {
                    if let OpKind::Insert { body, .. } = &op.kind {
                        bytes += body.len();
                    }
                    batch.push(op);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = apply(&db, &batch).map_err(|e| e.to_string());
        for op in batch.drain(..) {
            stop |= matches!(op.kind, OpKind::Shutdown);
            let _ = op.done.send(result.clone());
        }
        if stop {
            return;
        }
    }
}

fn apply(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let mut bodies = txn.open_table(BODIES)?;
        let mut settings = txn.open_table(SETTINGS)?;
        for op in batch {
            match &op.kind {
                OpKind::Insert { id, meta: m, body } => {
                    if body.is_empty() {
                        bodies.insert((*id, 0), [].as_slice())?;
                    }
                    for (part, chunk) in body.chunks(PART).enumerate() {
                        bodies.insert((*id, part as u32), chunk)?;
                    }
                    meta.insert(id, m.as_slice())?;
                }
                OpKind::Update { id, meta: m } => {
                    meta.insert(id, m.as_slice())?;
                }
                OpKind::Remove { id, parts } => {
                    meta.remove(id)?;
                    for part in 0..*parts {
                        bodies.remove((*id, part))?;
                    }
                }
                OpKind::Setting { key, value } => {
                    settings.insert(*key, *value)?;
                }
                OpKind::Shutdown => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}
