//! A message being received: our `Received:` header, then the client's bytes,
//! written to the journal as they arrive ([`Spool`]), checked as they pass
//! ([`BodyCheck`]) and limited to `smtp.max_message_size`; once refused, the
//! rest of it is read and forgotten.

use super::data::BodyCheck;
use super::reply::Reply;
use crate::journal::{QueueId, Spool};
use tokio::time::Instant;

/// One message on its way in (DATA, or the BDAT chunks so far).
#[derive(Debug)]
pub struct Incoming {
    id: QueueId,
    /// Where the message goes; `None` once it is refused.
    spool: Option<Spool>,
    /// Why it will be refused at its end, if it will.
    refused: Option<Reply>,
    check: BodyCheck,
    /// Bytes from the client (without our header): what the size limit counts.
    client_bytes: u64,
    max: u64,
    /// Where the bytes of a refused message go to be forgotten.
    scratch: Vec<u8>,
    /// When the whole message must have arrived (`smtp.data_timeout`).
    deadline: Instant,
    /// Our header lines at the start of the spool (before the client's bytes).
    header_len: usize,
    /// Keep the whole message in memory (no staging): `[auth]` needs it.
    whole: bool,
}

impl Incoming {
    /// A message for `spool`, starting with `header`, of at most `max` client
    /// bytes, due complete by `deadline`.
    pub fn new(mut spool: Spool, header: &[u8], max: u64, deadline: Instant) -> Incoming {
        spool.buf().extend_from_slice(header);
        Incoming {
            id: spool.id(),
            spool: Some(spool),
            refused: None,
            check: BodyCheck::new(),
            client_bytes: 0,
            max,
            scratch: Vec::new(),
            deadline,
            header_len: header.len(),
            whole: false,
        }
    }

    /// A chunk that belongs to no valid transaction: read and forgotten.
    pub fn discard(deadline: Instant) -> Incoming {
        Incoming {
            id: QueueId(0),
            spool: None,
            refused: Some(Reply::BAD_SEQUENCE),
            check: BodyCheck::new(),
            client_bytes: 0,
            max: 0,
            scratch: Vec::new(),
            deadline,
            header_len: 0,
            whole: false,
        }
    }

    /// Keeps the whole message in memory until [`Incoming::finish`] (bounded
    /// by the size limit), so that it can be checked and headers put in front.
    pub fn keep_whole(&mut self) {
        self.whole = true;
    }

    /// How many bytes of our own header lines start the spool.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// When the whole message must have arrived.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Why the message will be refused, if it will.
    pub fn refusal(&self) -> Option<&Reply> {
        self.refused.as_ref()
    }

    /// Where the receiver appends the next bytes.
    pub fn sink(&mut self) -> &mut Vec<u8> {
        match &mut self.spool {
            Some(spool) => spool.buf(),
            None => {
                self.scratch.clear();
                &mut self.scratch
            }
        }
    }

    /// The sink's length now: pass it to [`Incoming::took`] after appending.
    pub fn mark(&mut self) -> usize {
        self.sink().len()
    }

    /// Looks at what was appended since `mark`: checks, size limit.
    pub fn took(&mut self, mark: usize) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let new = &spool.buf()[mark..];
        self.check.feed(new);
        self.client_bytes += new.len() as u64;
        if self.client_bytes > self.max {
            self.refuse(Reply::SIZE_EXCEEDED);
        }
    }

    /// Refuses the message: what was written is dropped, the rest is not kept.
    pub fn refuse(&mut self, reply: Reply) {
        self.refused.get_or_insert(reply);
        self.spool = None;
    }

    /// Stages what is buffered once there is enough of it; a journal that
    /// cannot take it refuses the message (`452 4.3.1` or `451 4.3.0`).
    pub async fn stage(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        if self.whole || !spool.needs_flush() {
            return;
        }
        if let Err(e) = spool.flush().await {
            tracing::warn!("{} journal refused part of the message: {e}", self.id);
            self.refuse(if e.is_full() {
                Reply::STORAGE_FULL
            } else {
                Reply::STORAGE_ERROR
            });
        }
    }

    /// The complete message: its spool and what the checks found, or the
    /// reply refusing it.
    pub fn finish(self) -> Result<(Spool, BodyCheck), Reply> {
        if let Some(reply) = self.refused {
            return Err(reply);
        }
        self.spool
            .map(|spool| (spool, self.check))
            .ok_or(Reply::STORAGE_ERROR)
    }
}
