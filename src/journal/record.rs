//! What the journal stores about a message: queue id, envelope and per-recipient state.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A queue id: microseconds since the Unix epoch at arrival, made unique and
/// monotonic within the process. Shown as 16 upper-case hex digits, so ids sort
/// by arrival both as numbers and as text.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
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

/// A reply from a backend (or one breakwater wrote for a failure on its side),
/// typed from the socket to the journal, the admin API and the DSN: code,
/// enhanced status code (RFC 3463, empty if the server gave none) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendReply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code, e.g. `4.2.2`; empty if none was given.
    pub enhanced: String,
    /// The text, CR and LF replaced by spaces.
    pub text: String,
}

impl BackendReply {
    /// A reply from its parts.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> BackendReply {
        BackendReply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.into().replace(['\r', '\n'], " "),
        }
    }

    /// Reads the `CODE [ENHANCED] text` form earlier releases stored.
    pub fn parse(s: &str) -> BackendReply {
        let s = s.trim();
        let (first, rest) = s.split_once(' ').unwrap_or((s, ""));
        let Some(code) = first.parse::<u16>().ok().filter(|c| (200..600).contains(c)) else {
            return BackendReply::new(0, "", s);
        };
        let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
        if is_enhanced(word, code) {
            BackendReply::new(code, word, after)
        } else {
            BackendReply::new(code, "", rest)
        }
    }

    /// The enhanced status code, or the reply class's (`5.0.0`) when the
    /// server gave none (RFC 3464 needs one in every DSN).
    pub fn status(&self) -> String {
        if self.enhanced.is_empty() {
            match self.code / 100 {
                2 => "2.0.0".into(),
                4 => "4.0.0".into(),
                _ => "5.0.0".into(),
            }
        } else {
            self.enhanced.clone()
        }
    }
}

/// `class.subject.detail` (RFC 3463) whose class matches the reply code's.
fn is_enhanced(word: &str, code: u16) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0] == (code / 100).to_string()
}

impl fmt::Display for BackendReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.enhanced.is_empty()) {
            (0, _) => f.write_str(&self.text),
            (c, true) => write!(f, "{c} {}", self.text),
            (c, false) => write!(f, "{c} {} {}", self.enhanced, self.text),
        }
    }
}

impl From<&str> for BackendReply {
    fn from(s: &str) -> BackendReply {
        BackendReply::parse(s)
    }
}

impl From<String> for BackendReply {
    fn from(s: String) -> BackendReply {
        BackendReply::parse(&s)
    }
}

/// Reads a reply as this release writes it (an object) or as earlier ones did
/// (one string).
impl<'de> Deserialize<'de> for BackendReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Typed {
            code: u16,
            #[serde(default)]
            enhanced: String,
            #[serde(default)]
            text: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            Typed(Typed),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Text(s) => BackendReply::parse(&s),
            Stored::Typed(t) => BackendReply {
                code: t.code,
                enhanced: t.enhanced,
                text: t.text,
            },
        })
    }
}

/// Per-recipient delivery state, saved after every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptState {
    /// Not tried yet.
    Pending,
    /// Accepted by a backend.
    Delivered {
        backend: String,
        reply: BackendReply,
    },
    /// Temporarily refused; will be retried.
    Deferred { reply: BackendReply, attempts: u32 },
    /// Permanently refused.
    Failed { reply: BackendReply },
}

impl RcptState {
    /// True while the recipient still needs a delivery attempt.
    pub fn is_open(&self) -> bool {
        matches!(self, RcptState::Pending | RcptState::Deferred { .. })
    }
}

/// What a delivery job is for (DESIGN.md, "Journal model"). Each purpose has
/// its own lane and gate in the dispatcher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Purpose {
    /// Delivery to the backends (the message as it arrived).
    #[default]
    Primary,
    /// A copy for the `[[mirror]]` named `mirror` (gated by its health only).
    Mirror { mirror: String },
    /// A notice we generated (a DSN): to the sender's mail server or
    /// `bounce.relay`, never held by the backends' gate, never bounced itself.
    Notice,
    /// An alert we generated (`[alert]`: a silent flow, a backend down too
    /// long): to `alert.relay` or the recipients' MX, never through the
    /// backends, never held by their gate, never bounced.
    Alert,
    /// Re-delivery of a retained message to the backends (`breakwater replay`),
    /// to backend `to` only if set.
    Replay {
        replay: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// A synthetic message (`[canary]`) through backend `backend` only,
    /// carrying `token`; gated like mail unless `during_quiet_time`.
    Canary {
        backend: String,
        token: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        during_quiet_time: bool,
    },
}

impl Purpose {
    /// True for delivery to the backends as the message arrived.
    pub fn is_primary(&self) -> bool {
        matches!(self, Purpose::Primary)
    }

    /// True for a message we generated: a notice (DSN) or an alert.
    pub fn is_notice(&self) -> bool {
        matches!(self, Purpose::Notice | Purpose::Alert)
    }

    /// The mirror this job copies to, if it is a mirror copy.
    pub fn mirror(&self) -> Option<&str> {
        match self {
            Purpose::Mirror { mirror } => Some(mirror),
            _ => None,
        }
    }

    /// True for a canary (`[canary]`).
    pub fn is_canary(&self) -> bool {
        matches!(self, Purpose::Canary { .. })
    }

    /// True for jobs that count in the queue depth and age: not mirror
    /// copies (they have their own depth) nor canaries.
    pub fn counts_in_queue(&self) -> bool {
        !matches!(self, Purpose::Mirror { .. } | Purpose::Canary { .. })
    }

    /// True for jobs whose failures are reported to the sender (DSNs, delay
    /// warnings): primary delivery only. A mirror copy or a replay that fails
    /// is the operator's business, not the sender's.
    pub fn notifies_sender(&self) -> bool {
        self.is_primary()
    }

    /// A short label: `primary`, `mirror:NAME`, `notice`, `replay:ID`.
    pub fn label(&self) -> String {
        match self {
            Purpose::Primary => "primary".into(),
            Purpose::Mirror { mirror } => format!("mirror:{mirror}"),
            Purpose::Notice => "notice".into(),
            Purpose::Alert => "alert".into(),
            Purpose::Replay { replay, .. } => format!("replay:{replay}"),
            Purpose::Canary { backend, .. } => format!("canary:{backend}"),
        }
    }
}

/// A delivery job joined with its message's envelope and size: what the
/// dispatcher schedules and an attempt works on. The journal stores the two
/// apart ([`StoredMessage`] once, each job's state on its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Job id (for the primary job of a message: the message's queue id).
    pub id: QueueId,
    /// The message this job delivers (bytes and envelope).
    #[serde(default)]
    pub message: QueueId,
    /// What the job is for.
    #[serde(default, skip_serializing_if = "Purpose::is_primary")]
    pub purpose: Purpose,
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
    /// The delay warning (`delivery.delay_warning`) has been sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
    /// The last [`HISTORY`] attempts, oldest first (`breakwater queue show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptLog>,
}

/// How many attempts a record remembers.
pub const HISTORY: usize = 16;

/// One delivery attempt, as `breakwater queue show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The backend that answered, if any was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Recipients delivered, deferred and failed by this attempt.
    pub delivered: u32,
    pub deferred: u32,
    pub failed: u32,
    /// The reply that decided it: the first refusal, else the acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<BackendReply>,
}

/// A message as the journal keeps it, once, whatever jobs deliver it: its
/// envelope and size (the bytes are in the `bodies` table), the primary
/// delivery's outcome once it ended, and until when it is retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Queue id.
    pub id: QueueId,
    /// Envelope.
    pub envelope: Envelope,
    /// Size of the stored bytes (our `Received:` header included).
    pub size: u64,
    /// How the primary delivery ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
    /// Once no job needs the message: kept until then (milliseconds since
    /// the Unix epoch, `journal.retain_delivered` after the last job ended).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retain_until_ms: u64,
    /// Replays that made a job for this message (each replays it once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<String>,
}

/// How a message's primary delivery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Every recipient's final state.
    pub rcpts: Vec<Recipient>,
    /// The attempts, as the job remembered them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptLog>,
}

impl Finished {
    /// True if any recipient was delivered (only such messages are retained).
    pub fn any_delivered(&self) -> bool {
        self.rcpts
            .iter()
            .any(|r| matches!(r.state, RcptState::Delivered { .. }))
    }
}

/// A job's own state as stored (everything of a [`Record`] but the message's).
#[derive(Serialize)]
struct JobOut<'a> {
    id: QueueId,
    message: QueueId,
    #[serde(skip_serializing_if = "Purpose::is_primary")]
    purpose: &'a Purpose,
    rcpts: &'a [Recipient],
    attempts: u32,
    next_attempt_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    held: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delay_warned: bool,
    #[serde(skip_serializing_if = "<[AttemptLog]>::is_empty")]
    history: &'a [AttemptLog],
}

/// A stored job, read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StoredJob {
    pub id: QueueId,
    pub message: QueueId,
    #[serde(default)]
    pub purpose: Purpose,
    pub rcpts: Vec<Recipient>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub held: bool,
    #[serde(default)]
    pub delay_warned: bool,
    #[serde(default)]
    pub history: Vec<AttemptLog>,
}

impl StoredJob {
    /// Parses a stored job.
    pub fn decode(bytes: &[u8]) -> Result<StoredJob, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The job with its message's envelope and size.
    pub fn join(self, m: &StoredMessage) -> Record {
        Record {
            id: self.id,
            message: self.message,
            purpose: self.purpose,
            envelope: m.envelope.clone(),
            rcpts: self.rcpts,
            size: m.size,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            held: self.held,
            delay_warned: self.delay_warned,
            history: self.history,
        }
    }
}

impl StoredMessage {
    /// The message part of a job.
    pub fn of(r: &Record) -> StoredMessage {
        StoredMessage {
            id: r.message,
            envelope: r.envelope.clone(),
            size: r.size,
            finished: None,
            retain_until_ms: 0,
            replays: Vec::new(),
        }
    }

    /// Serialized as stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("message serializes")
    }

    /// Parses a stored message.
    pub fn decode(bytes: &[u8]) -> Result<StoredMessage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Record {
    /// The job's own state as stored (the message's envelope and size are
    /// stored once, with the message).
    pub fn encode_job(&self) -> Vec<u8> {
        serde_json::to_vec(&JobOut {
            id: self.id,
            message: self.message,
            purpose: &self.purpose,
            rcpts: &self.rcpts,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            held: self.held,
            delay_warned: self.delay_warned,
            history: &self.history,
        })
        .expect("job serializes")
    }

    /// True while any recipient still needs a delivery attempt.
    pub fn has_open_recipients(&self) -> bool {
        self.rcpts.iter().any(|r| r.state.is_open())
    }

    /// Remembers an attempt, forgetting the oldest beyond [`HISTORY`].
    pub fn log_attempt(&mut self, entry: AttemptLog) {
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(entry);
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
            message: QueueId(42),
            purpose: Purpose::Primary,
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
            delay_warned: false,
            history: Vec::new(),
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

    /// Replies are typed; records of earlier releases stored them as one
    /// string, which still reads (and the typed form round-trips).
    #[test]
    fn replies_typed_and_read_from_old_strings() {
        let old = br#"{"id":1,"envelope":{"mail_from":"a@b","params":{},"client_ip":"127.0.0.1","helo":"c","arrived_ms":7},"rcpts":[{"address":"x@example.com","state":{"state":"deferred","reply":"451 4.2.1 mailbox busy","attempts":2}},{"address":"y@example.com","state":{"state":"delivered","backend":"b0","reply":"250 ok"}}],"size":10,"attempts":2,"next_attempt_ms":0}"#;
        let r = Record::decode(old).unwrap();
        assert_eq!(
            r.rcpts[0].state,
            RcptState::Deferred {
                reply: BackendReply::new(451, "4.2.1", "mailbox busy"),
                attempts: 2
            }
        );
        let RcptState::Delivered { reply, .. } = &r.rcpts[1].state else {
            panic!("{:?}", r.rcpts[1].state)
        };
        assert_eq!(reply, &BackendReply::new(250, "", "ok"));
        let again = Record::decode(&r.encode()).unwrap();
        assert_eq!(again, r);
        let json = String::from_utf8(r.encode()).unwrap();
        assert!(
            json.contains(r#""reply":{"code":451,"enhanced":"4.2.1","text":"mailbox busy"}"#),
            "{json}"
        );
        for (text, code, enhanced, rest, status) in [
            (
                "550 5.1.1 no such user",
                550,
                "5.1.1",
                "no such user",
                "5.1.1",
            ),
            ("550 no enhanced code", 550, "", "no enhanced code", "5.0.0"),
            (
                "452 5.2.2 class mismatch",
                452,
                "",
                "5.2.2 class mismatch",
                "4.0.0",
            ),
            ("250", 250, "", "", "2.0.0"),
            ("garbage", 0, "", "garbage", "5.0.0"),
            ("", 0, "", "", "5.0.0"),
        ] {
            let r = BackendReply::parse(text);
            assert_eq!(
                (r.code, r.enhanced.as_str(), r.text.as_str()),
                (code, enhanced, rest),
                "{text}"
            );
            assert_eq!(r.status(), status, "{text}");
        }
        assert_eq!(
            BackendReply::new(451, "4.4.2", "a\r\nb").to_string(),
            "451 4.4.2 a  b"
        );
    }
}
