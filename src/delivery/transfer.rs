//! Sending a message body to a backend straight from the journal: a slice of
//! parts is read, encoded ([`super::body`]: dot-stuffing for DATA, long lines
//! folded) and written, then the next, so a delivery holds about one slice of
//! the message however large it is. BDAT sends one chunk per slice; DATA
//! streams the slices after the 354.

use super::body::{Encoder, Mode};
use super::tls::Stream;
use crate::journal::{self, Journal, PART, QueueId};
use mail_send::SmtpClient;
use smtp_proto::Response;
use tokio::io::AsyncWriteExt;

/// Journal parts read at a time: one slice (~64 KB) is what a delivery holds
/// of a message, and one BDAT chunk.
const SLICE_PARTS: u32 = 16;
const SLICE_BYTES: u64 = SLICE_PARTS as u64 * PART as u64;

/// A stored message and how its lines go out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Body<'a> {
    pub journal: &'a Journal,
    pub id: QueueId,
    /// The stored size (the record's), checked against what is read.
    pub size: u64,
    /// `delivery.line_length_limit` (0: no folding).
    pub line_limit: usize,
    /// Header lines sent before the stored bytes (a replay's `Received:` and
    /// `X-Breakwater-Replay:`); empty for everything else.
    pub prefix: &'a [u8],
}

/// Why a body transfer ended without a reply about the message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// Talking to the backend failed: I/O, timeout, unparseable reply.
    #[error("{0}")]
    Smtp(#[from] mail_send::Error),
    /// The message could not be read from the journal.
    #[error("{0}")]
    Journal(#[from] journal::Error),
    /// The journal holds fewer bytes of the message than its record says.
    #[error("message {id} is shorter in the journal than its record says ({read} of {size} bytes)")]
    Short { id: QueueId, read: u64, size: u64 },
    /// The backend answered out of protocol (e.g. 250 to DATA).
    #[error("unexpected reply {} {}", .0.code, .0.message)]
    Unexpected(Response<String>),
}

impl Body<'_> {
    /// How many slices the message is read in (at least one).
    fn slices(&self) -> u32 {
        journal::parts(self.size).div_ceil(SLICE_PARTS)
    }

    /// Slice `k`, checked to hold as many bytes as the record implies.
    async fn slice(&self, k: u32) -> Result<Vec<u8>, TransferError> {
        let bytes = self
            .journal
            .read_parts(self.id, k * SLICE_PARTS, SLICE_PARTS)
            .await?;
        let offset = u64::from(k) * SLICE_BYTES;
        let want = self.size.saturating_sub(offset).min(SLICE_BYTES);
        if bytes.len() as u64 != want {
            return Err(TransferError::Short {
                id: self.id,
                read: offset + bytes.len() as u64,
                size: self.size,
            });
        }
        if k == 0 && !self.prefix.is_empty() {
            let mut with = Vec::with_capacity(self.prefix.len() + bytes.len());
            with.extend_from_slice(self.prefix);
            with.extend_from_slice(&bytes);
            return Ok(with);
        }
        Ok(bytes)
    }
}

/// Sends `body` (BDAT chunks if `chunking`, else DATA) and returns the
/// backend's reply about the message: the reply to the end of data, or the
/// 4xx/5xx that refused it on the way (to DATA, or to a BDAT chunk). The
/// backend's `command_timeout` (`client.timeout`) bounds the whole transfer.
/// After an `Err` the connection is in an unknown state: close it.
pub(super) async fn send(
    client: &mut SmtpClient<Stream>,
    chunking: bool,
    body: Body<'_>,
) -> Result<Response<String>, TransferError> {
    let timeout = client.timeout;
    if !chunking {
        let go = client.cmd(b"DATA\r\n").await?;
        if go.code != 354 {
            return refused(go);
        }
    }
    let transfer = async {
        if chunking {
            bdat(client, body).await
        } else {
            data(client, body).await
        }
    };
    tokio::time::timeout(timeout, transfer)
        .await
        .map_err(|_| mail_send::Error::Timeout)?
}

/// One BDAT chunk per slice, the last with LAST; each chunk's reply is read
/// before the next is sent.
async fn bdat(
    client: &mut SmtpClient<Stream>,
    body: Body<'_>,
) -> Result<Response<String>, TransferError> {
    let mut encoder = Encoder::new(Mode::Bdat, body.line_limit);
    let mut chunk = Vec::new();
    let slices = body.slices();
    for k in 0..slices {
        let bytes = body.slice(k).await?;
        chunk.clear();
        encoder.encode(&bytes, &mut chunk);
        drop(bytes);
        let last = k + 1 == slices;
        if last {
            encoder.finish(&mut chunk);
        }
        let cmd = format!(
            "BDAT {}{}\r\n",
            chunk.len(),
            if last { " LAST" } else { "" }
        );
        write(client, cmd.as_bytes()).await?;
        write(client, &chunk).await?;
        client.stream.flush().await.map_err(mail_send::Error::Io)?;
        let reply = client.read().await?;
        if last {
            return Ok(reply);
        }
        if !(200..300).contains(&reply.code) {
            // The transaction is over for the backend; RSET makes sure (RFC 3030 4.1).
            let _ = client.cmd(b"RSET\r\n").await;
            return refused(reply);
        }
    }
    unreachable!("a message has at least one slice")
}

/// The slices dot-stuffed after the 354, then `.` CR LF and the reply.
async fn data(
    client: &mut SmtpClient<Stream>,
    body: Body<'_>,
) -> Result<Response<String>, TransferError> {
    let mut encoder = Encoder::new(Mode::Data, body.line_limit);
    let mut out = Vec::new();
    let slices = body.slices();
    for k in 0..slices {
        // On a journal error nothing ends the data: the caller drops the
        // connection and the backend discards the partial message.
        let bytes = body.slice(k).await?;
        out.clear();
        encoder.encode(&bytes, &mut out);
        drop(bytes);
        if k + 1 == slices {
            encoder.finish(&mut out);
        }
        write(client, &out).await?;
    }
    client.stream.flush().await.map_err(mail_send::Error::Io)?;
    Ok(client.read().await?)
}

async fn write(client: &mut SmtpClient<Stream>, bytes: &[u8]) -> Result<(), TransferError> {
    client
        .stream
        .write_all(bytes)
        .await
        .map_err(|e| TransferError::Smtp(mail_send::Error::Io(e)))
}

/// A reply that stops the transfer early: a 4xx/5xx is the backend's answer
/// about the message, anything else is out of protocol.
fn refused(reply: Response<String>) -> Result<Response<String>, TransferError> {
    if (400..600).contains(&reply.code) {
        Ok(reply)
    } else {
        Err(TransferError::Unexpected(reply))
    }
}

#[cfg(test)]
mod tests;
