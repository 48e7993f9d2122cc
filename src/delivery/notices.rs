//! Notices to senders: failure and "relayed" DSNs after an attempt, and delay
//! warnings. Each is journaled as a message of its own (from `<>`, marked
//! `bounce`) before the recipients it reports on are marked, so a crash can
//! repeat a notice but never lose one. The null sender never gets a notice.

use super::Status;
use super::attempt::Report;
use super::dispatcher::Shared;
use super::drain::Signal;
use super::dsn;
use crate::journal::{self, Envelope, MailParams, Purpose, RcptState, Recipient, Record};
use tokio::time::Instant;

/// Queues the DSNs an attempt calls for: failures the sender wants to hear
/// about, and "relayed" notices. Marks the recipients so no DSN is sent twice.
/// A message from the null sender (itself a bounce) is never bounced.
pub(super) async fn notify(
    shared: &Shared,
    record: &mut Record,
    relayed: &[usize],
    remote: Option<&str>,
) -> Option<Record> {
    if !record.purpose.notifies_sender() {
        // A mirror copy or a replay that fails is the operator's business:
        // logged and counted, never reported to the sender.
        for r in record.rcpts.iter_mut() {
            if let RcptState::Failed { reply } = &r.state
                && !r.dsn_sent
            {
                r.dsn_sent = true;
                tracing::warn!(
                    "{} {} for <{}> failed: {reply} (no DSN: not the primary delivery)",
                    record.message,
                    record.purpose.label(),
                    r.address
                );
            }
        }
        return None;
    }
    let mut entries = Vec::new();
    let mut marked = Vec::new();
    for (i, r) in record.rcpts.iter_mut().enumerate() {
        let RcptState::Failed { reply } = &r.state else {
            continue;
        };
        if r.dsn_sent {
            continue;
        }
        r.dsn_sent = true;
        marked.push(i);
        if r.wants_failure_notice() {
            entries.push(entry(r, dsn::Action::Failed, reply.clone(), remote));
        } else {
            tracing::info!(
                "{} no DSN for <{}>: NOTIFY excludes FAILURE",
                record.id,
                r.address
            );
        }
    }
    for &i in relayed {
        let r = &record.rcpts[i];
        if let RcptState::Delivered { reply, .. } = &r.state {
            entries.push(entry(r, dsn::Action::Relayed, reply.clone(), remote));
        }
    }
    if entries.is_empty() {
        return None;
    }
    match queue_dsn(shared, record, &entries).await {
        Queued::Yes(notice) => Some(*notice),
        Queued::Never => None,
        Queued::Failed => {
            for i in marked {
                record.rcpts[i].dsn_sent = false;
            }
            None
        }
    }
}

/// What became of a DSN.
enum Queued {
    /// Journaled; to be scheduled.
    Yes(Box<Record>),
    /// Not to be sent, ever (the message came from the null sender).
    Never,
    /// The journal refused it; try again later.
    Failed,
}

/// Sends the delay warning for a message still queued after
/// `delivery.delay_warning` (RFC 3464 `Action: delayed`), to the recipients
/// whose NOTIFY allows it. Runs whether or not the backends can take mail: an
/// outage is exactly when senders want to hear. Never touches a backend.
pub(super) async fn warn(shared: &Shared, mut record: Record) -> Report {
    let started = Instant::now();
    record.delay_warned = true;
    let entries: Vec<dsn::Entry> = record
        .rcpts
        .iter()
        .filter(|r| r.state.is_open() && r.wants_delay_notice())
        .map(|r| {
            let reply = match &r.state {
                RcptState::Deferred { reply, .. } => reply.clone(),
                _ => "451 4.4.7 not delivered yet: the mail system is holding it".into(),
            };
            entry(r, dsn::Action::Delayed, reply, None)
        })
        .collect();
    let mut notice = None;
    if !entries.is_empty() {
        match queue_dsn(shared, &record, &entries).await {
            Queued::Yes(n) => notice = Some(n),
            Queued::Never => {}
            Queued::Failed => record.delay_warned = false,
        }
    }
    let status = match shared.journal.save(&record).await {
        Ok(()) => Status::Kept,
        Err(e) => {
            tracing::error!("{} state not saved after the delay warning: {e}", record.id);
            Status::Unsaved
        }
    };
    Report {
        record: Box::new(record),
        status,
        signal: Signal::Neutral,
        took: started.elapsed(),
        notice,
    }
}

/// Journals a DSN about `record` to its sender, with the original's headers
/// (or all of it for RET=FULL) read from the journal now. A message from the
/// null sender (a bounce itself) never gets one.
async fn queue_dsn(shared: &Shared, record: &Record, entries: &[dsn::Entry]) -> Queued {
    if record.envelope.mail_from.is_empty() || record.purpose.is_notice() {
        tracing::warn!(
            "{} no DSN: null sender (a bounce is never bounced); dropped",
            record.id
        );
        return Queued::Never;
    }
    let failed = entries.iter().any(|e| e.action == dsn::Action::Failed);
    let now =
        chrono::DateTime::from_timestamp_millis(shared.clock.now_ms() as i64).unwrap_or_default();
    let original = match returned_part(shared, record).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(
                "{} DSN not queued (retried later): cannot read the message: {e}",
                record.id
            );
            return Queued::Failed;
        }
    };
    let bytes = dsn::build(&shared.live().hostname, record, &original, entries, now);
    drop(original);
    let notice = dsn_record(shared, record, bytes.len() as u64);
    match shared.journal.enqueue(&notice, bytes).await {
        Ok(()) => {
            if failed {
                shared.metrics.messages_bounced.inc();
            }
            let kind = match entries[0].action {
                _ if failed => "bounced",
                dsn::Action::Delayed => "delay warning",
                _ => "relayed notice",
            };
            tracing::info!(
                "{} {kind}: DSN {} to <{}>",
                record.id,
                notice.id,
                record.envelope.mail_from
            );
            Queued::Yes(Box::new(notice))
        }
        Err(e) => {
            tracing::error!("{} DSN not queued (retried later): {e}", record.id);
            Queued::Failed
        }
    }
}

/// What of the original a DSN returns, read from the journal: the whole
/// message for RET=FULL, else only as much as holds its header section
/// ([`dsn::headers_of`] cuts it there).
async fn returned_part(shared: &Shared, record: &Record) -> Result<Vec<u8>, journal::Error> {
    let total = journal::parts(record.size);
    if record.envelope.params.ret_full == Some(true) {
        return shared.journal.read_parts(record.message, 0, total).await;
    }
    let mut head = Vec::new();
    let mut first = 0;
    while first < total {
        let searched = head.len().saturating_sub(3);
        head.extend(
            shared
                .journal
                .read_parts(record.message, first, HEADER_PARTS)
                .await?,
        );
        first = first.saturating_add(HEADER_PARTS);
        if head[searched..].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let n = dsn::headers_of(&head).len();
    head.truncate(n);
    Ok(head)
}

/// Parts read at a time while looking for the end of the header section.
const HEADER_PARTS: u32 = 4;

fn entry(
    r: &Recipient,
    action: dsn::Action,
    reply: journal::BackendReply,
    remote: Option<&str>,
) -> dsn::Entry {
    dsn::Entry {
        address: r.address.clone(),
        orcpt: r.orcpt.clone(),
        action,
        reply,
        remote_mta: remote.map(str::to_owned),
    }
}

/// The journal record of a DSN about `original`: from `<>` to its sender.
fn dsn_record(shared: &Shared, original: &Record, size: u64) -> Record {
    let now = shared.clock.now_ms();
    let id = shared.journal.next_id();
    Record {
        id,
        message: id,
        purpose: Purpose::Notice,
        envelope: Envelope {
            mail_from: String::new(),
            params: MailParams::default(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: shared.live().hostname.clone(),
            tls: None,
            arrived_ms: now,
        },
        rcpts: vec![Recipient {
            address: original.envelope.mail_from.clone(),
            orcpt: None,
            notify: 0,
            state: RcptState::Pending,
            dsn_sent: false,
        }],
        size,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        delay_warned: false,
        history: Vec::new(),
    }
}
