//! A message being received: our `Received:` header, then the client's bytes,
//! written to the journal as they arrive ([`Spool`]), checked as they pass
//! ([`BodyCheck`]) and limited to `smtp.max_message_size`; once refused, the
//! rest of it is read and forgotten.
//!
//! A message kept whole (`[auth]`) holds a [`Reservation`] of the shared
//! `auth.max_memory` budget covering its buffer: the buffer grows only by what
//! was reserved first (without waiting), and a message that cannot reserve
//! more is refused (`452 4.3.1`) and its buffer freed. The reservation goes back
//! when the message is dropped (refused, reset, disconnect, timeout) or, after
//! [`Incoming::finish`], when its [`Finished`] is dropped (after the commit).

use super::auth::Reservation;
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
    /// The part of `auth.max_memory` the buffer of a whole message holds.
    held: Option<Reservation>,
}

/// What a receiver may append beyond its input (the data receiver gives back
/// a held CR with the byte after it).
const FEED_SLACK: usize = 8;
/// The most a whole message's buffer grows ahead of its bytes.
const MAX_HEADROOM: usize = 1 << 20;

/// A complete message: its spool, what the checks found, and the memory it
/// holds (given back when this is dropped).
#[derive(Debug)]
pub struct Finished {
    pub spool: Spool,
    pub check: BodyCheck,
    pub held: Option<Reservation>,
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
            held: None,
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
            held: None,
        }
    }

    /// Keeps the whole message in memory until [`Incoming::finish`] (bounded
    /// by the size limit, and by `budget` shared with the other sessions), so
    /// that it can be checked and headers put in front.
    pub fn keep_whole(&mut self, budget: &super::auth::Budget) {
        self.whole = true;
        self.held = Some(budget.reservation());
    }

    /// Bytes of the memory budget this message holds now.
    pub fn held(&self) -> u64 {
        self.held.as_ref().map_or(0, Reservation::bytes)
    }

    /// Before a receiver appends from `input` bytes: a whole message makes
    /// room for them in its buffer, within its reservation, or is refused
    /// (`452 4.3.1`) when the budget cannot give more.
    pub fn make_room(&mut self, input: usize) {
        let (Some(spool), Some(held)) = (&mut self.spool, &mut self.held) else {
            return;
        };
        let buf = spool.buf();
        let need = input + FEED_SLACK;
        if buf.capacity() - buf.len() >= need {
            return;
        }
        let len = buf.len();
        // Room for what the size limit still allows, at most.
        let limit = (self.header_len as u64 + self.max).saturating_sub(len as u64) as usize;
        let headroom = (len / 4).min(MAX_HEADROOM).min(limit).max(need);
        for extra in [headroom, need] {
            if held.grow_to((len + extra) as u64) {
                buf.reserve_exact(extra);
                // The allocator may give a little more than asked: count it
                // when it fits (it is bounded by the request anyway).
                held.grow_to(buf.capacity() as u64);
                return;
            }
        }
        tracing::warn!(
            "{} refused: auth.max_memory reached ({} bytes held for verification)",
            self.id,
            held.bytes()
        );
        self.refuse(Reply::MEMORY_BUSY);
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
        self.held = None;
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

    /// The complete message, or the reply refusing it.
    pub fn finish(self) -> Result<Finished, Reply> {
        if let Some(reply) = self.refused {
            return Err(reply);
        }
        let Some(spool) = self.spool else {
            return Err(Reply::STORAGE_ERROR);
        };
        Ok(Finished {
            spool,
            check: self.check,
            held: self.held,
        })
    }
}
