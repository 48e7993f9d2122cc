//! The journal: the durable queue, the single source of truth for every message.
//!
//! Layout on disk: one redb file, `<journal.path>/journal.redb` (directory 0700,
//! file 0600), with tables keyed by queue id (DESIGN.md, "Journal model"):
//! `messages` (each message once: its envelope and size, how its primary
//! delivery ended and until when it is retained, JSON), `bodies` (the message
//! bytes exactly as they will be relayed, our `Received:` header included, in
//! parts of [`PART`] bytes), `jobs` keyed (message, job) (each delivery job's
//! purpose and per-recipient state: primary delivery, a copy per mirror, a
//! notice, a replay), `staging` (messages whose parts are being written while
//! they arrive), `settings` and `documents`. A message stays while a job needs
//! it, then for `journal.retain_delivered` if a recipient got it. Journals of
//! the release before the split (one `meta` record per message) are migrated
//! when opened. Every change goes through the group-commit writer ([`commit`]); a
//! method that changes the journal returns only once the change is durable.
//!
//! Large messages are not held in memory: a session writes them through a
//! [`Spool`], which stages whole parts as they arrive (without fsync: nothing
//! is acknowledged yet) and commits the rest with the record durably at the end.
//! Parts of a message whose reception never finished are removed at the next open.

mod commit;
pub mod record;

pub use commit::{BatchLimits, CommitError};
pub use record::{
    AttemptLog, BackendReply, Envelope, Finished, MailParams, Purpose, QueueId, RcptState,
    Recipient, Record, StoredJob, StoredMessage, TlsInfo,
};

use commit::{Applied, Op, OpKind};
use record::IdGenerator;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// The release before the split kept one record per message here; migrated
/// into `messages` and `jobs` when a journal is opened.
pub(crate) const META: TableDefinition<u64, &[u8]> = TableDefinition::new("meta");
/// Each message once ([`StoredMessage`], JSON), by queue id.
pub(crate) const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Delivery jobs ([`Record::encode_job`], JSON), keyed (message, job).
pub(crate) const JOBS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("jobs");
/// Documents of replays: `replay/ID`.
pub(crate) const REPLAY_PREFIX: &str = "replay/";
/// Message bytes, split into parts of at most [`PART`] bytes keyed (id, part).
pub(crate) const BODIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
/// Messages being received whose first parts are already written: id -> generation.
pub(crate) const STAGING: TableDefinition<u64, u64> = TableDefinition::new("staging");

/// Largest body part. redb keeps a value whole in one B-tree leaf, and leaves are
/// power-of-two pages, so a 10 KiB value occupies a 16 KiB page; parts that fit a
/// 4 KiB page keep the journal near the message size (measured: 1.22x allocated
/// for 10.6 KB messages, against 1.60x with whole bodies).
pub const PART: usize = 4000;

/// A [`Spool`] stages its parts once this many bytes are buffered: the most a
/// session holds of a message in memory (plus one read).
pub const STAGE_BYTES: usize = 8 * PART;

/// Small persistent settings (the whole-queue hold).
pub(crate) const SETTINGS: TableDefinition<&str, u64> = TableDefinition::new("settings");
/// Named documents (JSON): ad-hoc quiet windows under `quiet/NAME`.
pub(crate) const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// What [`Journal::page`] does with a stored record, judged from its id and
/// its raw bytes before decoding them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// It cannot match: next.
    Skip,
    /// It may match: decode it and ask `keep`.
    Decode,
    /// Neither it nor any later (newer) record can match: the page ends.
    Stop,
}

/// Journal failures. Sessions answer `452 4.3.1` to [`Error::Full`] and
/// [`Error::LowSpace`] and `451 4.3.0` to everything else; none of them is
/// ever a `250`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Accepting the message would exceed `journal.max_bytes`.
    #[error("journal full: {used} of {max} bytes used (journal.max_bytes)")]
    Full { used: u64, max: u64 },
    /// The journal's file system has less free space than `journal.min_free_bytes`.
    #[error("{free} bytes free on the journal's file system, below journal.min_free_bytes ({min})")]
    LowSpace { free: u64, min: u64 },
    /// A change was not committed.
    #[error("journal commit failed: {0}")]
    Commit(#[from] CommitError),
    /// A read failed.
    #[error("journal read failed: {0}")]
    Read(#[source] redb::Error),
    /// A stored record cannot be decoded.
    #[error("record {id} unreadable: {source}")]
    Unreadable {
        id: QueueId,
        #[source]
        source: serde_json::Error,
    },
    /// The journal directory or file could not be set up.
    #[error("{what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The journal directory can be written by other users.
    #[error(
        "journal.path {} is writable by other users (mode {mode:o}): they could read or forge queued mail; chmod 700 it",
        path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    /// The journal has been closed (shutting down).
    #[error("journal closed")]
    Closed,
}

impl Error {
    /// True for "no room" (`452 4.3.1`), false for storage trouble (`451 4.3.0`).
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full { .. } | Error::LowSpace { .. })
    }
}

fn read_error(e: impl Into<redb::Error>) -> Error {
    Error::Read(e.into())
}

/// Options for [`Journal::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of the journal file; created (0700) if missing.
    pub dir: PathBuf,
    /// Message bytes the journal may hold.
    pub max_bytes: u64,
    /// Free space below which [`Journal::check_space`] refuses new mail.
    pub min_free_bytes: u64,
    /// Group commit limits.
    pub batch: BatchLimits,
    /// redb page cache in bytes (kept small: bodies are read once per attempt).
    pub cache_bytes: usize,
}

impl Options {
    /// Defaults for a journal in `dir` holding at most `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Options {
        Options {
            dir: dir.into(),
            max_bytes,
            min_free_bytes: 0,
            batch: BatchLimits::default(),
            cache_bytes: 16 << 20,
        }
    }
}

/// Handle to the journal; cheap to clone, shared by sessions and the dispatcher.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    writer: Mutex<Option<JoinHandle<()>>>,
    ids: IdGenerator,
    live_bytes: AtomicU64,
    /// Open jobs other than mirror copies, by message: its length is
    /// `breakwater_queue_depth` (a message whose only job left is a copy
    /// for a dead standby is delivered as far as the backends go).
    open: Mutex<std::collections::HashMap<u64, u32>>,
    /// Messages no job needs, kept for `journal.retain_delivered`.
    retained: Mutex<RetainedIndex>,
    max_bytes: u64,
    min_free_bytes: u64,
    dir: PathBuf,
}

/// What the writer thread and the readers share: the open database (absent
/// while it is being reopened after an I/O error) and the health it implies.
pub(crate) struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    file: PathBuf,
    cache_bytes: usize,
    /// Why the database is closed, while it is.
    broken: Mutex<Option<Arc<str>>>,
    /// True while the database is open; changes are announced.
    usable: watch::Sender<bool>,
    generation: AtomicU64,
    /// Times the writer panicked (and went on).
    pub(crate) panicked: AtomicU64,
}

impl Shared {
    /// The open database, or why there is none.
    pub(crate) fn db(&self) -> Result<Arc<Database>, CommitError> {
        self.db
            .read()
            .expect("journal lock")
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    pub(crate) fn unavailable(&self) -> CommitError {
        let why = self.broken.lock().expect("journal lock").clone();
        CommitError::Unavailable(why.unwrap_or_else(|| "closed".into()))
    }

    /// Closes the database after an I/O error; [`Shared::reopen`] brings it back.
    pub(crate) fn broken(&self, why: &str) {
        tracing::error!(
            "journal storage error: {why}; refusing mail (451) until it can be reopened"
        );
        *self.broken.lock().expect("journal lock") = Some(why.into());
        self.db.write().expect("journal lock").take();
        self.usable.send_replace(false);
    }

    /// Opens the file again (readers still holding the old handle make this fail
    /// until they let go; the caller retries).
    pub(crate) fn reopen(&self) -> Result<(), redb::Error> {
        let db = open_db(&self.file, self.cache_bytes)?;
        *self.db.write().expect("journal lock") = Some(Arc::new(db));
        *self.broken.lock().expect("journal lock") = None;
        self.usable.send_replace(true);
        Ok(())
    }

    pub(crate) fn set_generation(&self, g: u64) {
        self.generation.store(g, Ordering::Release);
    }
}

fn open_db(file: &Path, cache_bytes: usize) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(cache_bytes)
        .create(file)?)
}

impl Journal {
    /// Opens (or creates) the journal and returns it with every stored job
    /// (joined with its message), oldest message first: what to schedule after
    /// a restart. A journal of the release before the split is migrated first.
    /// Parts of messages whose reception never finished are removed. Refuses a
    /// directory other users can write to; tightens one they can read.
    pub fn open(opts: &Options) -> Result<(Journal, Vec<Record>), Error> {
        secure_dir(&opts.dir)?;
        let file = opts.dir.join("journal.redb");
        secure_file(&file)?;
        let db = open_db(&file, opts.cache_bytes).map_err(read_error)?;
        ensure_tables(&db)?;
        let unfinished = commit::drop_unfinished(&db).map_err(read_error)?;
        if unfinished > 0 {
            tracing::info!("removed {unfinished} partly received message(s) from the journal");
        }
        let migrated = migrate(&db)?;
        if migrated > 0 {
            tracing::info!(
                "journal upgraded: {migrated} message(s) of the previous release split into messages and delivery jobs"
            );
        }
        let loaded = load(&db)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            file,
            cache_bytes: opts.cache_bytes,
            broken: Mutex::new(None),
            usable: watch::channel(true).0,
            generation: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let limits = opts.batch;
        let writer = std::thread::Builder::new()
            .name("journal-commit".into())
            .spawn(move || {
                // The only writer must outlive a panic (a bug, a failed log
                // write): the ops of the batch it was on are answered "closed"
                // (their callers answer 451 or keep the outcome to write
                // again) and the next batch is taken as usual.
                for restarts in 0u64.. {
                    let run = std::panic::AssertUnwindSafe(|| {
                        commit::run(writer_shared.clone(), &rx, limits)
                    });
                    match std::panic::catch_unwind(run) {
                        Ok(()) => return,
                        Err(_) => {
                            writer_shared.panicked.fetch_add(1, Ordering::Relaxed);
                            if restarts % 1000 == 0 {
                                tracing::error!(
                                    "journal writer panicked; its batch was refused, writing goes on"
                                );
                            }
                        }
                    }
                }
            })
            .map_err(|source| Error::Setup {
                what: "spawn the journal writer".into(),
                source,
            })?;
        let inner = Inner {
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
            ids: IdGenerator::new(loaded.floor),
            live_bytes: AtomicU64::new(loaded.bytes),
            open: Mutex::new(loaded.open),
            retained: Mutex::new(loaded.retained),
            max_bytes: opts.max_bytes,
            min_free_bytes: opts.min_free_bytes,
            dir: opts.dir.clone(),
        };
        Ok((
            Journal {
                inner: Arc::new(inner),
            },
            loaded.jobs,
        ))
    }

    /// A fresh queue id for a message arriving now.
    pub fn next_id(&self) -> QueueId {
        self.inner.ids.next(now_micros())
    }

    /// Stores a new message with its one job durably. Returns only after the
    /// commit holding it is on disk; on any error nothing was stored and the
    /// client must not get 250.
    pub async fn enqueue(&self, record: &Record, body: Vec<u8>) -> Result<(), Error> {
        let mut spool = self.spool(record.message);
        spool.buf().extend_from_slice(&body);
        spool.commit(std::slice::from_ref(record)).await
    }

    /// [`Journal::enqueue`] for the relay's own alert mail: counted in the
    /// journal's bytes but never refused for `journal.max_bytes`. A journal
    /// full of held mail is when mail stops, which is what the alert is
    /// about; alerts are a few KiB, one per episode. Storage errors still
    /// fail it.
    pub async fn enqueue_beyond_limit(&self, record: &Record, body: Vec<u8>) -> Result<(), Error> {
        let mut spool = self.spool(record.message);
        spool.exempt = true;
        spool.buf().extend_from_slice(&body);
        spool.commit(std::slice::from_ref(record)).await
    }

    /// A spool for message `id`: its bytes are written as they arrive.
    pub fn spool(&self, id: QueueId) -> Spool {
        Spool {
            journal: self.clone(),
            id,
            buf: Vec::new(),
            staged_parts: 0,
            staged_generation: None,
            reserved: 0,
            committed: false,
            exempt: false,
        }
    }

    /// Saves a job's new state (recipient states, schedule, hold).
    pub async fn save(&self, record: &Record) -> Result<(), Error> {
        self.submit(OpKind::Update {
            message: record.message.0,
            job: record.id.0,
            meta: record.encode_job(),
        })
        .await
        .map(drop)
    }

    /// Removes a job that needs nothing more, at `now_ms`. A primary job's
    /// outcome is kept with the message; when this was the message's last
    /// job, the message is retained for `retain_ms` if a recipient got it
    /// (0: removed with its bytes at once).
    pub async fn remove(&self, record: &Record, now_ms: u64, retain_ms: u64) -> Result<(), Error> {
        let finished = record.purpose.is_primary().then(|| Finished {
            at_ms: now_ms,
            rcpts: record.rcpts.clone(),
            history: record.history.clone(),
        });
        let tally = match &record.purpose {
            Purpose::Replay { replay, .. } => Some((
                replay.clone(),
                record
                    .rcpts
                    .iter()
                    .all(|r| matches!(r.state, RcptState::Delivered { .. })),
            )),
            _ => None,
        };
        let retain_until_ms = if retain_ms > 0 {
            now_ms.saturating_add(retain_ms)
        } else {
            0
        };
        let applied = self
            .submit(OpKind::RemoveJob {
                message: record.message.0,
                job: record.id.0,
                parts: parts(record.size),
                retain_until_ms,
                finished,
                tally,
            })
            .await?;
        if record.purpose.counts_in_queue() {
            self.close_open(record.message.0);
        }
        if let Applied::Retired { retained } = applied {
            if retained {
                let mut idx = self.inner.retained.lock().expect("retained lock");
                idx.insert(record.message.0, record.size, retain_until_ms);
            } else {
                self.release(record.size);
            }
        }
        Ok(())
    }

    /// Adds job `record` for its stored message on behalf of replay `replay`.
    /// A message has at most one job per replay: a second is refused.
    pub async fn add_job(&self, record: &Record, replay: &str) -> Result<Added, Error> {
        let msg = record.message.0;
        let took = self
            .inner
            .retained
            .lock()
            .expect("retained lock")
            .remove(msg);
        let put_back = |j: &Journal| {
            if let Some((size, until)) = took {
                let mut idx = j.inner.retained.lock().expect("retained lock");
                idx.insert(msg, size, until);
            }
        };
        let result = self
            .submit(OpKind::AddJob {
                message: msg,
                job: record.id.0,
                meta: record.encode_job(),
                replay: replay.to_owned(),
            })
            .await;
        match result {
            Ok(Applied::Skipped) => {
                put_back(self);
                Ok(Added::Skipped)
            }
            Ok(Applied::Missing) => {
                if let Some((size, _)) = took {
                    self.release(size);
                }
                Ok(Added::Missing)
            }
            Ok(_) => {
                self.add_open(msg, 1);
                Ok(Added::Added)
            }
            Err(e) => {
                put_back(self);
                Err(e)
            }
        }
    }

    /// Gives up the retained messages whose time is up at `now_ms`, oldest
    /// first; returns how many.
    pub fn expire_retained(&self, now_ms: u64) -> usize {
        let gone = self
            .inner
            .retained
            .lock()
            .expect("retained lock")
            .pop_expired(now_ms);
        self.give_up(gone)
    }

    /// When the next retained message's time is up, if any is retained.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.inner
            .retained
            .lock()
            .expect("retained lock")
            .next_expiry()
    }

    /// Retained messages and the bytes they hold.
    pub fn retained(&self) -> (u64, u64) {
        let idx = self.inner.retained.lock().expect("retained lock");
        (idx.by_id.len() as u64, idx.bytes)
    }

    fn give_up(&self, gone: Vec<(u64, u64)>) -> usize {
        if gone.is_empty() {
            return 0;
        }
        let n = gone.len();
        let freed: u64 = gone.iter().map(|&(_, size)| size).sum();
        self.release(freed);
        self.submit_detached(OpKind::Expire {
            messages: gone
                .into_iter()
                .map(|(id, size)| (id, parts(size)))
                .collect(),
        });
        n
    }

    /// Messages the backends (or a sender's server) still have to get:
    /// counted from the commit until the last job but mirror copies ends.
    /// Retained messages, and messages waiting only for a standby's copy,
    /// are not counted (`breakwater_queue_depth`).
    pub fn message_count(&self) -> u64 {
        self.inner.open.lock().expect("open lock").len() as u64
    }

    fn add_open(&self, msg: u64, n: u32) {
        if n > 0 {
            *self
                .inner
                .open
                .lock()
                .expect("open lock")
                .entry(msg)
                .or_default() += n;
        }
    }

    fn close_open(&self, msg: u64) {
        let mut open = self.inner.open.lock().expect("open lock");
        if let Some(n) = open.get_mut(&msg) {
            *n -= 1;
            if *n == 0 {
                open.remove(&msg);
            }
        }
    }

    /// Stores a setting durably.
    pub async fn set_setting(&self, key: &'static str, value: u64) -> Result<(), Error> {
        self.submit(OpKind::Setting { key, value }).await.map(drop)
    }

    /// A stored setting, `None` if never set.
    pub fn setting(&self, key: &str) -> Result<Option<u64>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let table = txn.open_table(SETTINGS).map_err(read_error)?;
        Ok(table.get(key).map_err(read_error)?.map(|v| v.value()))
    }

    /// Stores (`Some`) or removes (`None`) a named document durably.
    pub async fn set_document(&self, key: String, value: Option<Vec<u8>>) -> Result<(), Error> {
        self.submit(OpKind::Document { key, value }).await.map(drop)
    }

    /// One named document, `None` if there is none.
    pub fn document(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let table = txn.open_table(DOCUMENTS).map_err(read_error)?;
        Ok(table
            .get(key)
            .map_err(read_error)?
            .map(|v| v.value().to_vec()))
    }

    /// Every document whose key starts with `prefix`, in key order.
    pub fn documents(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let table = txn.open_table(DOCUMENTS).map_err(read_error)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(read_error)? {
            let (k, v) = entry.map_err(read_error)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One page of the journal's messages, oldest first: the entries after
    /// `after` that `keep` accepts, at most `limit` of them, looking at no more
    /// than `scan` messages. `look` first sees each message's id and raw
    /// stored bytes (the message's and its jobs', one after the other).
    /// Returns them and where the next page starts (`None` at the end). Reads
    /// only metadata, never bodies, in one read transaction that blocks no
    /// writer: call it from a blocking task.
    pub fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        scan: usize,
        mut look: impl FnMut(QueueId, &[u8]) -> Look,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, Option<QueueId>), Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let messages = txn.open_table(MESSAGES).map_err(read_error)?;
        let jobs = txn.open_table(JOBS).map_err(read_error)?;
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let mut out = Vec::new();
        let mut last = None;
        let mut raw = Vec::new();
        for (seen, entry) in messages.range(start..).map_err(read_error)?.enumerate() {
            let (k, v) = entry.map_err(read_error)?;
            let id = QueueId(k.value());
            if out.len() >= limit || seen >= scan {
                // Something is left: the next page starts after the last looked at.
                return Ok((out, last));
            }
            last = Some(id);
            let job_bytes = stored_jobs(&jobs, id.0)?;
            raw.clear();
            raw.extend_from_slice(v.value());
            job_bytes.iter().for_each(|b| raw.extend_from_slice(b));
            match look(id, &raw) {
                Look::Skip => continue,
                Look::Stop => return Ok((out, None)),
                Look::Decode => {}
            }
            let e = Entry::decode(id, v.value(), &job_bytes)?;
            if keep(&e) {
                out.push(e);
            }
        }
        Ok((out, None))
    }

    /// Messages (queued and retained) newest first, before `before` (`None`:
    /// from the newest), looking at no more than `scan`; returns them and
    /// where the next page starts (`None` at the end). Messages that cannot
    /// be decoded are skipped (the open logged them). Reads metadata only:
    /// call from a blocking task.
    pub fn page_newest(
        &self,
        before: Option<QueueId>,
        scan: usize,
    ) -> Result<(Vec<Entry>, Option<QueueId>), Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let messages = txn.open_table(MESSAGES).map_err(read_error)?;
        let jobs = txn.open_table(JOBS).map_err(read_error)?;
        let range = match before {
            Some(b) => messages.range(..b.0),
            None => messages.range::<u64>(..),
        };
        let mut out = Vec::new();
        let mut last = None;
        for (seen, entry) in range.map_err(read_error)?.rev().enumerate() {
            if seen >= scan {
                return Ok((out, last));
            }
            let (k, v) = entry.map_err(read_error)?;
            let id = QueueId(k.value());
            last = Some(id);
            if let Ok(e) = Entry::decode(id, v.value(), &stored_jobs(&jobs, id.0)?) {
                out.push(e);
            }
        }
        Ok((out, None))
    }

    /// The stored bytes of a message, `None` if it is not in the journal.
    /// Holds the whole message in memory: delivery streams it with
    /// [`Journal::read_parts`] instead.
    pub fn body(&self, id: QueueId) -> Result<Option<Vec<u8>>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let table = txn.open_table(BODIES).map_err(read_error)?;
        let mut body = Vec::new();
        let mut found = false;
        for part in table
            .range((id.0, 0)..=(id.0, u32::MAX))
            .map_err(read_error)?
        {
            body.extend_from_slice(part.map_err(read_error)?.1.value());
            found = true;
        }
        Ok(found.then_some(body))
    }

    /// Up to `max` parts of message `id` from part `first` on, concatenated
    /// (empty past the end). Blocking: call from a blocking task.
    pub fn parts(&self, id: QueueId, first: u32, max: u32) -> Result<Vec<u8>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let table = txn.open_table(BODIES).map_err(read_error)?;
        let mut out = Vec::with_capacity(max as usize * PART);
        let last = first.saturating_add(max.saturating_sub(1));
        for part in table
            .range((id.0, first)..=(id.0, last))
            .map_err(read_error)?
        {
            out.extend_from_slice(part.map_err(read_error)?.1.value());
        }
        Ok(out)
    }

    /// [`Journal::parts`] on a blocking thread.
    pub async fn read_parts(&self, id: QueueId, first: u32, max: u32) -> Result<Vec<u8>, Error> {
        let j = self.clone();
        tokio::task::spawn_blocking(move || j.parts(id, first, max))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// True if message `id` is in the journal (and so its bytes).
    /// Cheap: one key lookup, on a blocking thread.
    pub async fn contains(&self, id: QueueId) -> Result<bool, Error> {
        let j = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = j.inner.shared.db()?;
            let txn = db.begin_read().map_err(read_error)?;
            let table = txn.open_table(MESSAGES).map_err(read_error)?;
            Ok(table.get(id.0).map_err(read_error)?.is_some())
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    /// Message `id` with its jobs, `None` if it is not in the journal.
    pub fn entry(&self, id: QueueId) -> Result<Option<Entry>, Error> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().map_err(read_error)?;
        let messages = txn.open_table(MESSAGES).map_err(read_error)?;
        let jobs = txn.open_table(JOBS).map_err(read_error)?;
        let Some(v) = messages.get(id.0).map_err(read_error)? else {
            return Ok(None);
        };
        Entry::decode(id, v.value(), &stored_jobs(&jobs, id.0)?).map(Some)
    }

    /// Message bytes currently held (what `journal.max_bytes` limits).
    pub fn live_bytes(&self) -> u64 {
        self.inner.live_bytes.load(Ordering::Relaxed)
    }

    /// Size of the journal file on disk.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.shared.file).map_or(0, |m| m.len())
    }

    /// Free bytes on the journal's file system (for unprivileged users), if known.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.inner.dir)
    }

    /// May a message of `incoming` bytes (0 if unknown) be accepted? Refused
    /// while the file system is below `journal.min_free_bytes`, or the journal
    /// would pass `journal.max_bytes`. Cheap: one `statvfs`.
    pub fn check_space(&self, incoming: u64) -> Result<(), Error> {
        let min = self.inner.min_free_bytes;
        if min > 0
            && let Some(free) = self.free_bytes()
            && free < min.saturating_add(incoming)
        {
            return Err(Error::LowSpace { free, min });
        }
        // Retained mail is given up before new mail is refused.
        let reclaimable = self.retained().1;
        let used = self.live_bytes().saturating_sub(reclaimable);
        let max = self.inner.max_bytes;
        if used.saturating_add(incoming) > max {
            return Err(Error::Full { used, max });
        }
        Ok(())
    }

    /// Cheap health probe: false while the database is closed after a storage
    /// error (it is being reopened).
    pub fn is_healthy(&self) -> bool {
        *self.inner.shared.usable.borrow()
    }

    /// Announces every change of [`Journal::is_healthy`].
    pub fn watch_health(&self) -> watch::Receiver<bool> {
        self.inner.shared.usable.subscribe()
    }

    /// Why the relay should not get new mail now, if it should not: the journal
    /// is reopening after a storage error, or the disk is low on space.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_healthy() {
            return Err(self.inner.shared.unavailable().to_string());
        }
        match self.check_space(0) {
            Err(e) => Err(format!("{e}; new mail gets 452 4.3.1")),
            Ok(()) => Ok(()),
        }
    }

    /// Finishes queued commits and stops the writer. Later changes fail with
    /// [`Error::Closed`]. Safe to call more than once.
    pub async fn close(&self) {
        let _ = self.submit(OpKind::Shutdown).await;
        let handle = self.inner.writer.lock().expect("writer lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    fn reserve(&self, size: u64) -> Result<(), Error> {
        let max = self.inner.max_bytes;
        let prev = self.inner.live_bytes.fetch_add(size, Ordering::Relaxed);
        if prev + size > max {
            // Retained mail is given up, oldest first, before new mail is
            // refused; queued mail never is.
            let need = prev + size - max;
            let gone = {
                let mut idx = self.inner.retained.lock().expect("retained lock");
                if idx.bytes >= need {
                    idx.pop_oldest(need)
                } else {
                    Vec::new()
                }
            };
            if gone.is_empty() {
                self.release(size);
                return Err(Error::Full { used: prev, max });
            }
            let n = self.give_up(gone);
            tracing::info!(
                "gave up {n} retained message(s), oldest first, to make room for new mail (journal.max_bytes)"
            );
        }
        Ok(())
    }

    /// [`Journal::reserve`] without the limit.
    fn count(&self, size: u64) {
        self.inner.live_bytes.fetch_add(size, Ordering::Relaxed);
    }

    fn release(&self, size: u64) {
        self.inner.live_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    async fn submit(&self, kind: OpKind) -> Result<Applied, Error> {
        let (done, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Op { kind, done })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(Error::Commit)
    }

    /// Sends an op nobody waits for (a discard from a destructor).
    fn submit_detached(&self, kind: OpKind) {
        let (done, _) = oneshot::channel();
        let _ = self.inner.tx.send(Op { kind, done });
    }

    fn generation(&self) -> u64 {
        self.inner.shared.generation.load(Ordering::Acquire)
    }
}

/// A message being written while it arrives. Append to [`Spool::buf`]; call
/// [`Spool::flush`] when [`Spool::needs_flush`] says so (it stages whole parts,
/// so at most [`STAGE_BYTES`] stay in memory) and [`Spool::commit`] at the end.
/// Dropped without a commit, it removes what it staged.
pub struct Spool {
    journal: Journal,
    id: QueueId,
    buf: Vec<u8>,
    staged_parts: u32,
    staged_generation: Option<u64>,
    reserved: u64,
    committed: bool,
    /// Counted in the journal's bytes without being held to `journal.max_bytes`.
    exempt: bool,
}

impl Spool {
    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The bytes not yet staged; append the message here.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes of the message so far.
    pub fn len(&self) -> u64 {
        u64::from(self.staged_parts) * PART as u64 + self.buf.len() as u64
    }

    /// True before any byte was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once enough is buffered to stage.
    pub fn needs_flush(&self) -> bool {
        self.buf.len() >= STAGE_BYTES
    }

    /// Writes the whole parts buffered so far (not durably: nothing is
    /// acknowledged until [`Spool::commit`]). Fails with [`Error::Full`] when
    /// they do not fit `journal.max_bytes`.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let whole = self.buf.len() / PART * PART;
        if whole == 0 {
            return Ok(());
        }
        self.journal.reserve(whole as u64)?;
        self.reserved += whole as u64;
        let rest = self.buf.split_off(whole);
        let data = std::mem::replace(&mut self.buf, rest);
        if self.staged_generation.is_none() {
            self.staged_generation = Some(self.journal.generation());
        }
        let first_part = self.staged_parts;
        self.staged_parts += (whole / PART) as u32;
        self.journal
            .submit(OpKind::Stage {
                id: self.id.0,
                first_part,
                data,
            })
            .await
            .map(drop)
    }

    /// Stores the rest of the message with its `jobs` durably (the message's
    /// envelope and size come from the first; each is a job for this spool's
    /// message: primary delivery, mirror copies). Returns only once the commit
    /// is on disk; on error nothing is stored (what was staged is removed) and
    /// the client must not get 250.
    pub async fn commit(mut self, jobs: &[Record]) -> Result<(), Error> {
        let Some(first) = jobs.first() else {
            return Err(Error::Closed);
        };
        debug_assert!(jobs.iter().all(|j| j.message == self.id));
        let rest = self.buf.len() as u64;
        if self.exempt {
            self.journal.count(rest);
        } else {
            self.journal.reserve(rest)?;
        }
        self.reserved += rest;
        let result = self
            .journal
            .submit(OpKind::Insert {
                id: self.id.0,
                message: StoredMessage::of(first).encode(),
                jobs: jobs.iter().map(|j| (j.id.0, j.encode_job())).collect(),
                body: std::mem::take(&mut self.buf),
                first_part: self.staged_parts,
                staged: self.staged_generation,
            })
            .await;
        self.committed = result.is_ok();
        if self.committed {
            let open = jobs.iter().filter(|j| j.purpose.counts_in_queue()).count();
            self.journal.add_open(self.id.0, open as u32);
        }
        result.map(drop)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.journal.release(self.reserved);
        if self.staged_parts > 0 {
            self.journal.submit_detached(OpKind::Discard {
                id: self.id.0,
                parts: self.staged_parts,
            });
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish()
    }
}

/// Creates `dir` (0700 whatever the umask), refuses it when other users may
/// write to it, and takes away their read access if they have it.
fn secure_dir(dir: &Path) -> Result<(), Error> {
    let setup = |what: &str, source| Error::Setup {
        what: format!("{what} {}", dir.display()),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| setup("create journal.path", e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| setup("inspect journal.path", e))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::Insecure {
            path: dir.to_owned(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        tracing::warn!(
            "journal.path {} was readable by other users (mode {mode:o}); changed to 700",
            dir.display()
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup("chmod 700 journal.path", e))?;
    }
    Ok(())
}

/// Creates the journal file 0600 (or makes an existing one 0600).
fn secure_file(file: &Path) -> Result<(), Error> {
    let setup = |what: &str, source| Error::Setup {
        what: format!("{what} {}", file.display()),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| setup("create", e))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| setup("chmod 600", e))
}

/// Free bytes for unprivileged users on the file system holding `dir`.
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to writable
    // memory of the right size; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn ensure_tables(db: &Database) -> Result<(), Error> {
    let txn = db.begin_write().map_err(read_error)?;
    txn.open_table(META).map_err(read_error)?;
    txn.open_table(MESSAGES).map_err(read_error)?;
    txn.open_table(JOBS).map_err(read_error)?;
    txn.open_table(BODIES).map_err(read_error)?;
    txn.open_table(SETTINGS).map_err(read_error)?;
    txn.open_table(STAGING).map_err(read_error)?;
    txn.open_table(DOCUMENTS).map_err(read_error)?;
    txn.commit().map_err(read_error)?;
    Ok(())
}

/// Reads a record of the release before the split: one per message, with
/// the message's envelope and its one job's state; `"bounce": true` marked a DSN.
pub fn decode_legacy(bytes: &[u8]) -> Result<Record, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    let bounce = v
        .get("bounce")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let mut r: Record = serde_json::from_value(v)?;
    r.message = r.id;
    if bounce {
        r.purpose = Purpose::Notice;
    }
    Ok(r)
}

/// Splits every record of the previous release (table `meta`) into a message
/// and its job, in one durable transaction. A record that cannot be read is
/// left where it is (never deleted) and logged. Returns how many moved.
fn migrate(db: &Database) -> Result<usize, Error> {
    let txn = db.begin_write().map_err(read_error)?;
    let mut moved = 0;
    {
        let mut meta = txn.open_table(META).map_err(read_error)?;
        let mut messages = txn.open_table(MESSAGES).map_err(read_error)?;
        let mut jobs = txn.open_table(JOBS).map_err(read_error)?;
        let mut old = Vec::new();
        for entry in meta.iter().map_err(read_error)? {
            let (k, v) = entry.map_err(read_error)?;
            old.push((k.value(), v.value().to_vec()));
        }
        for (id, bytes) in old {
            match decode_legacy(&bytes) {
                Ok(r) => {
                    messages
                        .insert(id, StoredMessage::of(&r).encode().as_slice())
                        .map_err(read_error)?;
                    jobs.insert((id, r.id.0), r.encode_job().as_slice())
                        .map_err(read_error)?;
                    meta.remove(id).map_err(read_error)?;
                    moved += 1;
                }
                Err(e) => tracing::error!(
                    id = %QueueId(id),
                    "unreadable record of the previous release kept in the journal's meta table: {e}"
                ),
            }
        }
    }
    txn.commit().map_err(read_error)?;
    Ok(moved)
}

/// The stored jobs of message `id`, as stored.
fn stored_jobs(
    jobs: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    id: u64,
) -> Result<Vec<Vec<u8>>, Error> {
    jobs.range((id, 0)..=(id, u64::MAX))
        .map_err(read_error)?
        .map(|j| j.map(|(_, v)| v.value().to_vec()).map_err(read_error))
        .collect()
}

/// What [`load`] found.
struct Loaded {
    jobs: Vec<Record>,
    retained: RetainedIndex,
    open: std::collections::HashMap<u64, u32>,
    /// Bytes of every stored message.
    bytes: u64,
    /// The largest id in use.
    floor: u64,
}

fn load(db: &Database) -> Result<Loaded, Error> {
    let txn = db.begin_read().map_err(read_error)?;
    let messages = txn.open_table(MESSAGES).map_err(read_error)?;
    let jobs = txn.open_table(JOBS).map_err(read_error)?;
    let mut out = Loaded {
        jobs: Vec::new(),
        retained: RetainedIndex::default(),
        open: std::collections::HashMap::new(),
        bytes: 0,
        floor: 0,
    };
    for entry in messages.iter().map_err(read_error)? {
        let (k, v) = entry.map_err(read_error)?;
        let id = k.value();
        out.floor = out.floor.max(id);
        let m = match StoredMessage::decode(v.value()) {
            Ok(m) => m,
            // Keep the bytes where they are: an operator can inspect them; we
            // never delete what we cannot read.
            Err(e) => {
                tracing::error!(id = %QueueId(id), "unreadable message kept in journal: {e}");
                continue;
            }
        };
        out.bytes += m.size;
        let before = out.jobs.len();
        for j in jobs.range((id, 0)..=(id, u64::MAX)).map_err(read_error)? {
            let (jk, jv) = j.map_err(read_error)?;
            out.floor = out.floor.max(jk.value().1);
            match StoredJob::decode(jv.value()) {
                Ok(job) => {
                    if job.purpose.counts_in_queue() {
                        *out.open.entry(id).or_default() += 1;
                    }
                    out.jobs.push(job.join(&m));
                }
                Err(e) => tracing::error!(
                    id = %QueueId(jk.value().1),
                    "unreadable delivery job of {} kept in journal: {e}", QueueId(id)
                ),
            }
        }
        if out.jobs.len() == before {
            // No job needs it: retained (a message without jobs and without a
            // retention time is given up at once).
            out.retained.insert(id, m.size, m.retain_until_ms);
        }
    }
    Ok(out)
}

/// Message `id` with its jobs, as [`Journal::page`] and [`Journal::entry`]
/// return it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The message.
    pub message: StoredMessage,
    /// Its jobs (none once it is only retained).
    pub jobs: Vec<Record>,
}

impl Entry {
    fn decode(id: QueueId, message: &[u8], jobs: &[Vec<u8>]) -> Result<Entry, Error> {
        let message =
            StoredMessage::decode(message).map_err(|source| Error::Unreadable { id, source })?;
        let jobs = jobs
            .iter()
            .map(|b| {
                StoredJob::decode(b)
                    .map(|j| j.join(&message))
                    .map_err(|source| Error::Unreadable { id, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Entry { message, jobs })
    }

    /// What the message's recipients went through, as one record: its
    /// primary job (or notice) while it has one, else how its primary
    /// delivery ended (a retained message), else its first job.
    pub fn view(&self) -> Record {
        if let Some(j) = self
            .jobs
            .iter()
            .find(|j| j.purpose.is_primary() || j.purpose.is_notice())
        {
            return j.clone();
        }
        if let Some(f) = &self.message.finished {
            return Record {
                id: self.message.id,
                message: self.message.id,
                purpose: Purpose::Primary,
                envelope: self.message.envelope.clone(),
                rcpts: f.rcpts.clone(),
                size: self.message.size,
                attempts: f.history.len() as u32,
                next_attempt_ms: 0,
                held: false,
                delay_warned: false,
                history: f.history.clone(),
            };
        }
        self.jobs.first().cloned().unwrap_or_else(|| Record {
            id: self.message.id,
            message: self.message.id,
            purpose: Purpose::Primary,
            envelope: self.message.envelope.clone(),
            rcpts: Vec::new(),
            size: self.message.size,
            attempts: 0,
            next_attempt_ms: 0,
            held: false,
            delay_warned: false,
            history: Vec::new(),
        })
    }

    /// True once no job needs the message (it is kept for retention).
    pub fn is_retained(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// What [`Journal::add_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The job is stored.
    Added,
    /// The message had a job from this replay already.
    Skipped,
    /// The message is no longer in the journal.
    Missing,
}

/// Messages no job needs, by id (oldest first, for making room) and by the
/// end of their retention (for expiry).
#[derive(Debug, Default)]
struct RetainedIndex {
    by_id: BTreeMap<u64, (u64, u64)>,
    by_until: BTreeSet<(u64, u64)>,
    bytes: u64,
}

impl RetainedIndex {
    fn insert(&mut self, id: u64, size: u64, until: u64) {
        if let Some(old) = self.by_id.insert(id, (size, until)) {
            self.by_until.remove(&(old.1, id));
            self.bytes -= old.0;
        }
        self.by_until.insert((until, id));
        self.bytes += size;
    }

    fn remove(&mut self, id: u64) -> Option<(u64, u64)> {
        let (size, until) = self.by_id.remove(&id)?;
        self.by_until.remove(&(until, id));
        self.bytes -= size;
        Some((size, until))
    }

    fn next_expiry(&self) -> Option<u64> {
        self.by_until.first().map(|&(until, _)| until)
    }

    /// Takes every message whose retention ended by `now`: (id, size).
    fn pop_expired(&mut self, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(&(until, id)) = self.by_until.first() {
            if until > now {
                break;
            }
            if let Some((size, _)) = self.remove(id) {
                out.push((id, size));
            }
        }
        out
    }

    /// Takes the oldest messages until they hold at least `need` bytes.
    fn pop_oldest(&mut self, need: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut freed = 0;
        while freed < need {
            let Some((&id, _)) = self.by_id.first_key_value() else {
                break;
            };
            if let Some((size, _)) = self.remove(id) {
                freed += size;
                out.push((id, size));
            }
        }
        out
    }
}

/// How many parts a body of `size` bytes is stored in (at least one, so an empty
/// body still exists).
pub fn parts(size: u64) -> u32 {
    (size as usize).div_ceil(PART).max(1) as u32
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_micros() / 1000
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("file", &self.inner.shared.file)
            .finish()
    }
}

#[cfg(test)]
mod tests;
