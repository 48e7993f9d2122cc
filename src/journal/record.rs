//! What the journal stores about a message: queue id, envelope and per-recipient state.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A queue id: microseconds since the Unix epoch at arrival, made unique and
/// monotonic within the process. Shown as 16 upper-case hex digits, so ids sort
/// by arrival both as numbers and as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(QueueId)
    }
}

/// Hands out queue ids that are unique and increase with arrival time.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    /// Never returns an id at or below `floor` (the largest id found at recovery).
    pub fn new(floor: u64) -> Self {
        IdGenerator {
            last: AtomicU64::new(floor),
        }
    }

    /// The next id: the current time in microseconds, or one more than the last id.
    pub fn next(&self, now_micros: u64) -> QueueId {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = now_micros.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return QueueId(id),
                Err(actual) => last = actual,
            }
        }
    }
}

/// The envelope as the client gave it, plus where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// MAIL FROM parameters we keep.
    pub params: MailParams,
    /// Client IP address.
    pub client_ip: IpAddr,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// The inbound session's TLS, if it used STARTTLS.
    #[serde(
        default,
        deserialize_with = "tls_compat",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls: Option<TlsInfo>,
    /// Arrival time, milliseconds since the Unix epoch.
    pub arrived_ms: u64,
}

/// The TLS of an inbound session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Reads `tls` as written by this release (an object or absent) or by earlier
/// ones (a boolean, always false: they had no inbound TLS).
fn tls_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TlsInfo>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Flag(bool),
        Info(TlsInfo),
    }
    Ok(match Option::<Stored>::deserialize(d)? {
        None | Some(Stored::Flag(false)) => None,
        Some(Stored::Flag(true)) => Some(TlsInfo {
            version: "unknown".into(),
            cipher: "unknown".into(),
        }),
        Some(Stored::Info(i)) => Some(i),
    })
}

/// MAIL FROM parameters (RFC 1652, 1870, 3461, 6531).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// SIZE= as declared.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// BODY=8BITMIME.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eight_bit: bool,
    /// SMTPUTF8.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    /// RET=FULL (`Some(true)`) or RET=HDRS (`Some(false)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret_full: Option<bool>,
    /// ENVID=.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One recipient and how far its delivery got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Forward path without angle brackets.
    pub address: String,
    /// ORCPT= as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// NOTIFY= flags (smtp-proto `RCPT_NOTIFY_*` bits); 0 if not given.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub notify: u64,
    /// Delivery state.
    pub state: RcptState,
    /// A DSN about this recipient has been queued (or was deliberately not sent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsn_sent: bool,
}

impl Recipient {
    /// True once nothing more will happen for this recipient: delivered, or
    /// failed and the sender told (or deliberately not told).
    pub fn is_settled(&self) -> bool {
        match self.state {
            RcptState::Delivered { .. } => true,
            RcptState::Failed { .. } => self.dsn_sent,
            _ => false,
        }
    }

    /// True if the sender wants a DSN when this recipient fails (RFC 3461:
    /// no NOTIFY means FAILURE and DELAY; NOTIFY=NEVER means none).
    pub fn wants_failure_notice(&self) -> bool {
        self.notify == 0 || self.notify & smtp_proto::RCPT_NOTIFY_FAILURE != 0
    }

    /// True if the sender wants a delay warning (no NOTIFY, or NOTIFY has DELAY).
    pub fn wants_delay_notice(&self) -> bool {
        self.notify == 0 || self.notify & smtp_proto::RCPT_NOTIFY_DELAY != 0
    }

    /// True if the sender asked to hear about success (NOTIFY=SUCCESS).
    pub fn wants_success_notice(&self) -> bool {
        self.notify & smtp_proto::RCPT_NOTIFY_SUCCESS != 0
    }
}

/// Per-recipient delivery state, saved after every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptState {
    /// Not tried yet.
    Pending,
    /// Accepted by a backend.
    Delivered { backend: String, reply: String },
    /// Temporarily refused; will be retried.
    Deferred { reply: String, attempts: u32 },
    /// Permanently refused.
    Failed { reply: String },
}

impl RcptState {
    /// True while the recipient still needs a delivery attempt.
    pub fn is_open(&self) -> bool {
        matches!(self, RcptState::Pending | RcptState::Deferred { .. })
    }
}

/// Everything but the message bytes: the journal's per-message metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Queue id.
    pub id: QueueId,
    /// Envelope.
    pub envelope: Envelope,
    /// Recipients with their states.
    pub rcpts: Vec<Recipient>,
    /// Size of the stored message bytes (including our `Received:` header).
    pub size: u64,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the next attempt is due, milliseconds since the Unix epoch.
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// Held by an admin: not delivered until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// A DSN we generated: it goes to the sender's mail server (or
    /// `bounce.relay`), not to the backends, and is never bounced itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounce: bool,
    /// The delay warning (`delivery.delay_warning`) has been sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
}

impl Record {
    /// True while any recipient still needs a delivery attempt.
    pub fn has_open_recipients(&self) -> bool {
        self.rcpts.iter().any(|r| r.state.is_open())
    }

    /// Serialized metadata as stored in the journal.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("record serializes")
    }

    /// Parses stored metadata.
    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_monotonic_and_sort_as_text() {
        let g = IdGenerator::new(0);
        let a = g.next(1_000);
        let b = g.next(1_000);
        let c = g.next(999);
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<QueueId>().unwrap(), a);
        let g = IdGenerator::new(5_000);
        assert_eq!(g.next(10), QueueId(5_001));
    }

    #[test]
    fn record_roundtrip() {
        let r = Record {
            id: QueueId(42),
            envelope: Envelope {
                mail_from: "a@b".into(),
                params: MailParams {
                    smtputf8: true,
                    ..Default::default()
                },
                client_ip: "127.0.0.1".parse().unwrap(),
                helo: "c".into(),
                tls: Some(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                }),
                arrived_ms: 7,
            },
            rcpts: vec![Recipient {
                address: "x@example.com".into(),
                orcpt: None,
                notify: 0,
                state: RcptState::Deferred {
                    reply: "451 4.0.0 later".into(),
                    attempts: 2,
                },
                dsn_sent: false,
            }],
            size: 10,
            attempts: 2,
            next_attempt_ms: 9,
            held: false,
            bounce: false,
            delay_warned: false,
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    /// A record written by the previous release (`"tls": false`) still reads.
    #[test]
    fn record_from_the_previous_release() {
        let old = br#"{"id":1,"envelope":{"mail_from":"a@b","params":{},"client_ip":"127.0.0.1","helo":"c","tls":false,"arrived_ms":7},"rcpts":[{"address":"x@example.com","state":{"state":"pending"}}],"size":10,"attempts":0,"next_attempt_ms":0}"#;
        let r = Record::decode(old).unwrap();
        assert_eq!(r.envelope.tls, None);
        assert_eq!(r.rcpts[0].state, RcptState::Pending);
    }
}
