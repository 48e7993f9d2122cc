//! Where `/mail` reads messages from: the [`MailSource`] trait, and its
//! implementation on the [`Journal`]: queued and held mail, and delivered mail
//! kept for `journal.retain_delivered`.

use crate::journal::{Entry, Journal, PART, QueueId, RcptState, Record};

/// What the listing shows of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSummary {
    pub id: QueueId,
    /// The envelope sender (empty for the null sender).
    pub from: String,
    /// Every envelope recipient (the web layer shows only those a viewer may see).
    pub recipients: Vec<String>,
    /// Arrival, milliseconds since the Unix epoch.
    pub arrived_ms: u64,
    /// Stored bytes.
    pub size: u64,
    /// "queued", "deferred", "held", "delivered", "failed".
    pub state: String,
}

/// Read access to stored mail. Called from blocking threads.
pub trait MailSource: Send + Sync + 'static {
    /// Messages newest first, starting before `before` (None: the newest),
    /// looking at no more than `scan`; returns them and a cursor for the next
    /// page (None at the end).
    fn newest(
        &self,
        before: Option<QueueId>,
        scan: usize,
    ) -> Result<(Vec<MailSummary>, Option<QueueId>), String>;

    /// The summary and exact stored bytes of one message.
    fn message(&self, id: QueueId) -> Result<Option<(MailSummary, Vec<u8>)>, String>;

    /// The first bytes of a message (at least `max` of them when it has that
    /// many; more is allowed), for its headers. The default reads the whole
    /// message; a store that can read a prefix should.
    fn head(&self, id: QueueId, max: usize) -> Result<Option<Vec<u8>>, String> {
        Ok(self.message(id)?.map(|(_, mut bytes)| {
            bytes.truncate(max);
            bytes
        }))
    }
}

/// [`MailSource`] on the journal.
pub struct JournalSource(pub Journal);

/// The summary of a stored message: its primary delivery's state, or
/// `delivered` once only retained.
pub fn summary(e: &Entry) -> MailSummary {
    let r = e.view();
    let mut s = record_summary(&r);
    s.id = e.message.id;
    if e.is_retained() {
        s.state = "delivered".into();
    }
    s
}

/// A canary (`[canary]`) is the relay's own test message, not mail anyone
/// reads: `/mail` neither lists nor shows it, as `queue list` hides it
/// without `--canaries`.
fn is_canary(e: &Entry) -> bool {
    e.jobs.iter().any(|j| j.purpose.is_canary())
}

/// The summary of a job.
pub fn record_summary(r: &Record) -> MailSummary {
    let any = |f: fn(&RcptState) -> bool| r.rcpts.iter().any(|x| f(&x.state));
    let state = if r.held {
        "held"
    } else if any(|s| matches!(s, RcptState::Deferred { .. })) {
        "deferred"
    } else if any(|s| matches!(s, RcptState::Pending)) {
        "queued"
    } else if any(|s| matches!(s, RcptState::Failed { .. })) {
        "failed"
    } else {
        "delivered"
    };
    MailSummary {
        id: r.message,
        from: r.envelope.mail_from.clone(),
        recipients: r.rcpts.iter().map(|x| x.address.clone()).collect(),
        arrived_ms: r.envelope.arrived_ms,
        size: r.size,
        state: state.into(),
    }
}

impl MailSource for JournalSource {
    fn newest(
        &self,
        before: Option<QueueId>,
        scan: usize,
    ) -> Result<(Vec<MailSummary>, Option<QueueId>), String> {
        let (entries, next) = self
            .0
            .page_newest(before, scan)
            .map_err(|e| e.to_string())?;
        Ok((
            entries
                .iter()
                .filter(|e| !is_canary(e))
                .map(summary)
                .collect(),
            next,
        ))
    }

    fn message(&self, id: QueueId) -> Result<Option<(MailSummary, Vec<u8>)>, String> {
        let Some(entry) = self
            .0
            .entry(id)
            .map_err(|e| e.to_string())?
            .filter(|e| !is_canary(e))
        else {
            return Ok(None);
        };
        let body = self.0.body(id).map_err(|e| e.to_string())?;
        Ok(body.map(|b| (summary(&entry), b)))
    }

    fn head(&self, id: QueueId, max: usize) -> Result<Option<Vec<u8>>, String> {
        let parts = max.div_ceil(PART).max(1) as u32;
        let bytes = self.0.parts(id, 0, parts).map_err(|e| e.to_string())?;
        Ok((!bytes.is_empty()).then_some(bytes))
    }
}
