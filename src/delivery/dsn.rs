//! Delivery status notifications (RFC 3464, in a multipart/report of RFC 6522):
//! the bounce we send to the envelope sender when recipients failed for good or
//! outlived `delivery.max_queue_lifetime`, and the "relayed" notice for
//! NOTIFY=SUCCESS through a backend that cannot pass DSN requests on.

use crate::journal::{BackendReply, Record};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// What happened to a recipient (RFC 3464 2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up on.
    Failed,
    /// Handed to a backend that does not do DSN.
    Relayed,
    /// Still queued after `delivery.delay_warning`; retries go on.
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Relayed => "relayed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient's line in the report.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The recipient address.
    pub address: String,
    /// ORCPT as the client gave it (`rfc822;addr`), if any.
    pub orcpt: Option<String>,
    /// Failed or relayed.
    pub action: Action,
    /// The SMTP reply that decided it, e.g. `550 5.1.1 no such user`.
    pub reply: BackendReply,
    /// The backend that answered, if one did.
    pub remote_mta: Option<String>,
}

/// Builds the whole notification message (headers and body, CRLF line ends).
/// `original` is the stored message (for RET=HDRS, its header section is
/// enough); its headers are returned, or all of it when the sender asked for
/// RET=FULL.
pub fn build(
    hostname: &str,
    record: &Record,
    original: &[u8],
    entries: &[Entry],
    now: DateTime<Utc>,
) -> Vec<u8> {
    let failed = entries.iter().any(|e| e.action == Action::Failed);
    let boundary = format!("{}/{}", record.id, hostname);
    let subject = match entries.first().map(|e| e.action) {
        _ if failed => "Undelivered Mail Returned to Sender",
        Some(Action::Delayed) => "Delayed Mail (still being retried)",
        _ => "Successful Mail Relay Notification",
    };
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{stamp}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\r\n\
         This is a MIME-encapsulated message.\r\n\r\n",
        to = record.envelope.mail_from,
        date = now.format("%a, %d %b %Y %H:%M:%S +0000"),
        id = record.id,
        stamp = now.timestamp_millis(),
    );
    human_part(&mut m, &boundary, hostname, entries);
    status_part(&mut m, &boundary, hostname, record, entries);
    let full = record.envelope.params.ret_full == Some(true);
    let (kind, what) = if full {
        ("message/rfc822", "Undelivered Message")
    } else {
        ("text/rfc822-headers", "Undelivered Message Headers")
    };
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: {what}\r\nContent-Type: {kind}\r\n\r\n"
    );
    let mut out = m.into_bytes();
    let returned = if full { original } else { headers_of(original) };
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_part(m: &mut String, boundary: &str, hostname: &str, entries: &[Entry]) {
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is the mail system at host {hostname}.\r\n\r\n"
    );
    let failed = entries.iter().any(|e| e.action == Action::Failed);
    m.push_str(match entries.first().map(|e| e.action) {
        _ if failed => {
            "Your message could not be delivered to one or more recipients.\r\n\
             It is attached below.\r\n\r\n"
        }
        Some(Action::Delayed) => {
            "Your message has not been delivered yet to the recipients below.\r\n\
             It stays queued and delivery will be retried; you will hear again\r\n\
             only if it finally fails. No action is needed.\r\n\r\n"
        }
        _ => {
            "Your message was relayed to a system that does not send delivery\r\n\
             notifications; no further notice will follow.\r\n\r\n"
        }
    });
    for e in entries {
        let _ = write!(m, "<{}>: {}\r\n", e.address, e.reply);
    }
    m.push_str("\r\n");
}

fn status_part(m: &mut String, boundary: &str, hostname: &str, record: &Record, entries: &[Entry]) {
    let arrival =
        DateTime::from_timestamp_millis(record.envelope.arrived_ms as i64).unwrap_or_default();
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; {hostname}\r\nX-Breakwater-Queue-ID: {}\r\n",
        record.id
    );
    if let Some(envid) = &record.envelope.params.envid {
        let _ = write!(m, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(
        m,
        "Arrival-Date: {}\r\n",
        arrival.format("%a, %d %b %Y %H:%M:%S +0000")
    );
    for e in entries {
        let _ = write!(m, "\r\nFinal-Recipient: rfc822; {}\r\n", e.address);
        if let Some(orcpt) = &e.orcpt {
            let _ = write!(m, "Original-Recipient: {orcpt}\r\n");
        }
        let _ = write!(
            m,
            "Action: {}\r\nStatus: {}\r\n",
            e.action.as_str(),
            e.reply.status()
        );
        if let Some(mta) = &e.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {mta}\r\n");
        }
        let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", e.reply);
    }
    m.push_str("\r\n");
}

/// The header block of a message (up to and including the CRLF that ends the
/// last header line); the whole message if it has no body.
pub fn headers_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Envelope, MailParams, QueueId, RcptState, Recipient};

    fn record(ret_full: Option<bool>) -> Record {
        Record {
            id: QueueId(0xABC),
            message: QueueId(0xABC),
            envelope: Envelope {
                mail_from: "sender@client.test".into(),
                params: MailParams {
                    ret_full,
                    envid: Some("env-1".into()),
                    ..Default::default()
                },
                client_ip: "127.0.0.1".parse().unwrap(),
                helo: "client.test".into(),
                tls: None,
                arrived_ms: 1_700_000_000_000,
            },
            rcpts: vec![Recipient {
                address: "c@example.com".into(),
                orcpt: Some("rfc822;c@example.com".into()),
                notify: 0,
                state: RcptState::Failed {
                    reply: "550 5.1.1 no such user".into(),
                },
                dsn_sent: false,
            }],
            size: 0,
            attempts: 1,
            next_attempt_ms: 0,
            held: false,
            purpose: crate::journal::Purpose::Primary,
            delay_warned: false,
            history: Vec::new(),
        }
    }

    #[test]
    fn status_codes() {
        for (reply, want) in [
            ("550 5.1.1 no such user", "5.1.1"),
            ("451 4.4.7 expired", "4.4.7"),
            ("550 no enhanced code", "5.0.0"),
            ("452 x.y.z nonsense", "4.0.0"),
            ("", "5.0.0"),
        ] {
            assert_eq!(BackendReply::parse(reply).status(), want, "{reply}");
        }
    }

    #[test]
    fn failed_report_has_every_part() {
        let original = b"Subject: order 42\r\nFrom: s@client.test\r\n\r\nsecret body\r\n";
        let entry = Entry {
            address: "c@example.com".into(),
            orcpt: Some("rfc822;c@example.com".into()),
            action: Action::Failed,
            reply: "550 5.1.1 no such user".into(),
            remote_mta: Some("b0".into()),
        };
        let now = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let text = String::from_utf8(build(
            "relay.test",
            &record(None),
            original,
            std::slice::from_ref(&entry),
            now,
        ))
        .unwrap();
        for want in [
            "To: <sender@client.test>",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status",
            "Reporting-MTA: dns; relay.test",
            "Original-Envelope-Id: env-1",
            "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
            "Final-Recipient: rfc822; c@example.com",
            "Original-Recipient: rfc822;c@example.com",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; b0",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: text/rfc822-headers",
            "Subject: order 42",
            "--0000000000000ABC/relay.test--",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("secret body"), "RET=HDRS by default");
        assert!(
            !text.contains("\n\n") && !text.replace("\r\n", "").contains('\n'),
            "CRLF only"
        );
        let full = String::from_utf8(build(
            "relay.test",
            &record(Some(true)),
            original,
            &[entry],
            now,
        ))
        .unwrap();
        assert!(full.contains("Content-Type: message/rfc822") && full.contains("secret body"));
    }
}
