//! Every way a delivery attempt can end, classified in one place.

use super::transfer::TransferError;
use crate::journal::BackendReply;
use crate::smtp::reply::Reply;

/// The enhanced code of a deferral for a broken connection (RFC 3463: bad connection).
const CONNECTION_LOST: &str = "4.4.2";

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the backend took responsibility.
    Delivered(BackendReply),
    /// 4xx, or a connection/TLS/timeout problem: try again later.
    Deferred(BackendReply),
    /// 5xx: the backend refused for good.
    Failed(BackendReply),
}

impl Outcome {
    /// Classifies a backend reply.
    pub fn from_reply(r: &Reply) -> Outcome {
        let text = BackendReply::new(r.code, &r.enhanced, r.text.as_ref());
        match r.code {
            200..=299 => Outcome::Delivered(text),
            500..=599 => Outcome::Failed(text),
            _ => Outcome::Deferred(text),
        }
    }

    /// Classifies a client-side error. Anything that is not a parsed 5xx reply is
    /// temporary: a broken connection never bounces a message.
    pub fn from_error(e: &mail_send::Error) -> Outcome {
        match e {
            mail_send::Error::UnexpectedReply(r) => Outcome::from_reply(&Reply::from(r.clone())),
            mail_send::Error::Timeout => {
                Outcome::deferred(CONNECTION_LOST, "timeout talking to backend".to_owned())
            }
            mail_send::Error::Io(io) => Outcome::deferred(
                CONNECTION_LOST,
                format!("connection to backend failed: {io}"),
            ),
            mail_send::Error::Tls(t) => {
                Outcome::deferred("4.7.5", format!("TLS with backend failed: {t}"))
            }
            other => Outcome::deferred("4.4.0", format!("backend error: {other}")),
        }
    }

    /// Classifies a body transfer that ended without a reply about the message:
    /// a backend problem as [`Outcome::from_error`]; a journal that could not
    /// give the bytes is our trouble, temporary (RFC 3463 4.3.0).
    pub(crate) fn from_transfer(e: &TransferError) -> Outcome {
        match e {
            TransferError::Smtp(e) => Outcome::from_error(e),
            TransferError::Journal(_) | TransferError::Short { .. } => Outcome::deferred(
                "4.3.0",
                format!("message not readable from the journal: {e}"),
            ),
            TransferError::Unexpected(r) => Outcome::deferred(
                "4.4.0",
                format!(
                    "backend answered out of protocol: {}",
                    Reply::from(r.clone())
                ),
            ),
        }
    }

    /// A deferral for a connection that could not be made at all.
    pub fn unreachable(detail: &str) -> Outcome {
        Outcome::deferred("4.4.1", format!("no backend reachable: {detail}"))
    }

    /// A `451` deferral breakwater writes itself.
    pub fn deferred(enhanced: &str, text: String) -> Outcome {
        Outcome::Deferred(BackendReply::new(451, enhanced, text))
    }

    /// The reply, whatever the outcome.
    pub fn reply(&self) -> &BackendReply {
        match self {
            Outcome::Delivered(r) | Outcome::Deferred(r) | Outcome::Failed(r) => r,
        }
    }

    /// True if the attempt ended because the connection broke (I/O error,
    /// timeout) or the backend closed it (421): the connection is not reused and
    /// the backend's health counts a failure.
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, Outcome::Deferred(r) if r.code == 421 || (r.code == 451 && r.enhanced == CONNECTION_LOST))
    }

    /// The metric label: `delivered`, `deferred`, `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Deferred(_) => "deferred",
            Outcome::Failed(_) => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let r = |code, text: &'static str| Outcome::from_reply(&Reply::new(code, "", text));
        assert!(matches!(r(250, "ok"), Outcome::Delivered(_)));
        assert!(matches!(r(451, "later"), Outcome::Deferred(_)));
        assert!(matches!(r(421, "bye"), Outcome::Deferred(_)));
        assert!(matches!(r(550, "no"), Outcome::Failed(_)));
        assert!(matches!(r(354, "odd"), Outcome::Deferred(_)));
        let io = mail_send::Error::Io(std::io::Error::other("reset"));
        assert!(matches!(Outcome::from_error(&io), Outcome::Deferred(_)));
        assert!(matches!(
            Outcome::from_error(&mail_send::Error::UnparseableReply),
            Outcome::Deferred(_)
        ));
        assert!(Outcome::from_error(&io).is_connection_loss());
        assert!(Outcome::from_error(&mail_send::Error::Timeout).is_connection_loss());
        assert!(r(421, "closing").is_connection_loss());
        assert!(!r(451, "mailbox busy").is_connection_loss());
    }
}
