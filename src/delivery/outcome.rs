//! Every way a delivery attempt can end, classified in one place.

use super::transfer::TransferError;
use crate::smtp::reply::Reply;

/// How a deferral for a broken connection starts (RFC 3463 4.4.2, bad connection).
const CONNECTION_LOST: &str = "451 4.4.2";

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the backend took responsibility.
    Delivered(String),
    /// 4xx, or a connection/TLS/timeout problem: try again later.
    Deferred(String),
    /// 5xx: the backend refused for good.
    Failed(String),
}

impl Outcome {
    /// Classifies a backend reply.
    pub fn from_reply(r: &Reply) -> Outcome {
        let text = r.to_string();
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
                Outcome::Deferred(format!("{CONNECTION_LOST} timeout talking to backend"))
            }
            mail_send::Error::Io(io) => Outcome::Deferred(format!(
                "{CONNECTION_LOST} connection to backend failed: {io}"
            )),
            mail_send::Error::Tls(t) => {
                Outcome::Deferred(format!("451 4.7.5 TLS with backend failed: {t}"))
            }
            other => Outcome::Deferred(format!("451 4.4.0 backend error: {other}")),
        }
    }

    /// Classifies a body transfer that ended without a reply about the message:
    /// a backend problem as [`Outcome::from_error`]; a journal that could not
    /// give the bytes is our trouble, temporary (RFC 3463 4.3.0).
    pub(crate) fn from_transfer(e: &TransferError) -> Outcome {
        match e {
            TransferError::Smtp(e) => Outcome::from_error(e),
            TransferError::Journal(_) | TransferError::Short { .. } => Outcome::Deferred(format!(
                "451 4.3.0 message not readable from the journal: {e}"
            )),
            TransferError::Unexpected(r) => Outcome::Deferred(format!(
                "451 4.4.0 backend answered out of protocol: {}",
                Reply::from(r.clone())
            )),
        }
    }

    /// A deferral for a connection that could not be made at all.
    pub fn unreachable(detail: &str) -> Outcome {
        Outcome::Deferred(format!("451 4.4.1 no backend reachable: {detail}"))
    }

    /// True if the attempt ended because the connection broke (I/O error,
    /// timeout) or the backend closed it (421): the connection is not reused and
    /// the backend's health counts a failure.
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, Outcome::Deferred(t) if t.starts_with(CONNECTION_LOST) || t.starts_with("421"))
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
