//! The SMTP session state machine. Handlers take a parsed command and return what
//! to answer; they do no I/O, so every verb is testable without a socket. The I/O
//! loop lives in [`super::connection`].

use super::reply::Reply;
use super::{Context, address, params};
use crate::journal::{Envelope, MailParams, RcptState, Recipient, TlsInfo};
use smtp_proto::{MailFrom, RcptTo, Request};
use std::borrow::Cow;
use std::net::IpAddr;

/// What the I/O loop should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write this reply and read the next command.
    Reply(Reply),
    /// Write these raw bytes (a multi-line reply) and read the next command.
    Raw(Vec<u8>),
    /// Write `354` and switch to reading DATA.
    StartData,
    /// Read a BDAT chunk of this many bytes.
    Bdat { size: u64, last: bool },
    /// Check this recipient (static list, backend verification), then call
    /// [`Session::add_recipient`] with the verdict.
    Verify(Recipient),
    /// Write `220 Ready to start TLS` and do the handshake.
    StartTls,
    /// Write this reply and close the connection.
    Close(Reply),
}

/// How the message body is arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Not yet known.
    None,
    /// DATA.
    Data,
    /// BDAT chunks.
    Bdat,
}

/// One mail transaction: from MAIL to the end of the message.
#[derive(Debug)]
pub struct Transaction {
    /// Reverse path (empty for `<>`).
    pub mail_from: String,
    /// Kept MAIL parameters.
    pub params: MailParams,
    /// Accepted recipients.
    pub rcpts: Vec<Recipient>,
    /// DATA or BDAT.
    pub mode: BodyMode,
    /// BDAT chunks received so far.
    pub body: Option<super::incoming::Incoming>,
}

/// Recipients a client may try past `smtp.max_recipients` before the
/// refusals count as errors (Postfix `smtpd_recipient_overshoot_limit`).
const RECIPIENT_OVERSHOOT: usize = 1000;

/// Per-connection state.
pub struct Session {
    pub(super) ctx: std::sync::Arc<Context>,
    /// The config in force when the session started: a reload applies to
    /// the sessions that start after it (like Postfix's smtpd processes).
    pub(super) cfg: std::sync::Arc<crate::config::Config>,
    /// Client address.
    pub client_ip: IpAddr,
    /// HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// True after EHLO (extensions allowed).
    pub esmtp: bool,
    /// The open transaction, if any.
    pub tx: Option<Transaction>,
    /// The session's TLS, after STARTTLS.
    pub tls: Option<TlsInfo>,
    /// The client talked before the greeting.
    pub pregreeted: bool,
    /// Error replies so far (what `smtp.max_errors` limits).
    pub errors: usize,
    /// The `[[dnsbl]]` lookups started at connect, until the first command.
    pub dnsbl: Option<tokio::task::JoinHandle<Vec<super::dnsbl::Hit>>>,
    /// The zones that list the client.
    pub dnsbl_hits: Vec<super::dnsbl::Hit>,
    overshoot: usize,
    /// The session's places in the connection limits; given back before the
    /// last reply is written, so a client that reconnects on reading it finds
    /// its slot free.
    slots: Vec<Box<dyn Send>>,
}

impl Session {
    /// A new session for a client at `client_ip`.
    pub fn new(ctx: std::sync::Arc<Context>, client_ip: IpAddr) -> Session {
        Session {
            cfg: ctx.config(),
            ctx,
            client_ip,
            helo: None,
            esmtp: false,
            tx: None,
            tls: None,
            pregreeted: false,
            errors: 0,
            dnsbl: None,
            dnsbl_hits: Vec::new(),
            overshoot: 0,
            slots: Vec::new(),
        }
    }

    /// Keeps `slot` (a connection-limit permit) until [`Session::release_slots`].
    pub fn hold_slot(&mut self, slot: Box<dyn Send>) {
        self.slots.push(slot);
    }

    /// Gives the connection-limit slots back (the session is ending).
    pub fn release_slots(&mut self) {
        self.slots.clear();
    }

    /// The greeting banner.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP breakwater", self.cfg.hostname))
    }

    /// Handles one command line: `raw` as received, `parsed` as smtp-proto read
    /// it. A few things are decided on the raw bytes, which the parser
    /// normalises or gets wrong: source routes, parameters, BDAT sizes.
    pub fn on_command(
        &mut self,
        raw: &[u8],
        parsed: Result<Request<Cow<'_, str>>, smtp_proto::Error>,
    ) -> Next {
        if let Some(bdat) = params::bdat(raw) {
            return match bdat {
                Ok((size, last)) => self.on_bdat(size, last),
                Err(reply) => Next::Reply(reply),
            };
        }
        match parsed {
            Ok(req) => self.on_request(req, raw),
            Err(e) => Next::Reply(self.on_parse_error(&e, raw)),
        }
    }

    /// Handles one parsed command. `raw` is the command line as received (for
    /// checks the parser normalises away, such as source routes).
    pub fn on_request(&mut self, req: Request<Cow<'_, str>>, raw: &[u8]) -> Next {
        match req {
            Request::Ehlo { host } => Next::Raw(self.on_ehlo(&host)),
            Request::Helo { host } => Next::Reply(self.on_helo(&host)),
            Request::Mail { from } => Next::Reply(self.on_mail(from, raw)),
            Request::Rcpt { to } => self.on_rcpt(to, raw),
            // Other commands may end in a bare LF, as Postfix allows by default;
            // DATA may not: the message starts right after it, and only
            // CR LF . CR LF may end it, counting the CR LF of the DATA line.
            Request::Data if !raw.ends_with(b"\r\n") => Next::Reply(Reply::DATA_BARE_LF),
            Request::Data => self.on_data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.on_bdat(chunk_size as u64, is_last),
            Request::Rset => {
                self.tx = None;
                Next::Reply(Reply::RESET)
            }
            Request::Noop { .. } => Next::Reply(Reply::OK),
            Request::Vrfy { .. } => Next::Reply(Reply::CANNOT_VRFY),
            Request::Help { .. } => Next::Reply(Reply::HELP),
            Request::Quit => Next::Close(Reply::BYE),
            Request::StartTls if !params::is_bare(raw) => Next::Reply(Reply::new(
                501,
                "5.5.4",
                "Syntax: STARTTLS (no parameters allowed, RFC 3207)",
            )),
            Request::StartTls => self.on_starttls(),
            Request::Lhlo { .. } => Next::Reply(Reply::UNKNOWN_COMMAND),
            _ => Next::Reply(Reply::NOT_IMPLEMENTED),
        }
    }

    /// Maps a parser error on the command line `raw` to its reply.
    pub fn on_parse_error(&self, err: &smtp_proto::Error, raw: &[u8]) -> Reply {
        use smtp_proto::Error as E;
        match err {
            E::UnknownCommand => Reply::UNKNOWN_COMMAND,
            // The parser refuses address literals (`a@[192.0.2.1]`), which are valid
            // RFC 5321 syntax: we never relay to them, so say so.
            E::InvalidRecipientAddress if address::is_address_literal(raw) => Reply::RELAY_DENIED,
            E::InvalidSenderAddress => Reply::BAD_SENDER,
            E::InvalidRecipientAddress => Reply::BAD_RECIPIENT,
            E::UnsupportedParameter { .. } => Reply::PARAM_NOT_IMPLEMENTED,
            E::ResponseTooLong => Reply::LINE_TOO_LONG,
            E::SyntaxError { syntax } => {
                Reply::new(501, "5.5.4", format!("Syntax error, expected: {syntax}"))
            }
            // smtp-proto refuses SIZE values that saturate its number parser,
            // which are well-formed (RFC 1870 allows 20 digits), just too big.
            E::InvalidParameter { param: "SIZE" }
                if params::check(raw, params::MAIL_PARAMS)
                    .is_ok_and(|s| s.is_some_and(|n| n > self.cfg.smtp.max_message_size)) =>
            {
                Reply::SIZE_EXCEEDED
            }
            E::InvalidParameter { param } => {
                Reply::new(501, "5.5.4", format!("Invalid value for parameter {param}"))
            }
            _ => Reply::SYNTAX_ERROR,
        }
    }

    /// Counts `reply` against `smtp.max_errors`; true once the limit is reached
    /// (the caller answers `421 4.7.0` and closes). Like Postfix, our own
    /// trouble (storage) does not count, nor do the first refusals of recipients
    /// past `smtp.max_recipients`.
    pub fn count_error(&mut self, reply: &Reply) -> bool {
        if reply.code < 400 || reply.enhanced.starts_with("4.3.") {
            return false;
        }
        if *reply == Reply::TOO_MANY_RECIPIENTS {
            self.overshoot += 1;
            if self.overshoot <= RECIPIENT_OVERSHOOT {
                return false;
            }
        }
        self.errors += 1;
        self.errors >= self.cfg.smtp.max_errors
    }

    fn on_ehlo(&mut self, host: &str) -> Vec<u8> {
        self.helo = Some(host.to_owned());
        self.esmtp = true;
        self.tx = None;
        let mut lines = vec![
            format!("{} greets {}", self.cfg.hostname, host),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.ctx.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        lines.push("HELP".into());
        let mut out = Vec::with_capacity(200);
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
        out
    }

    fn on_helo(&mut self, host: &str) -> Reply {
        self.helo = Some(host.to_owned());
        self.esmtp = false;
        self.tx = None;
        Reply::new(250, "", self.cfg.hostname.clone())
    }

    fn on_starttls(&mut self) -> Next {
        match (&self.ctx.tls, &self.tls) {
            (None, _) => Next::Reply(Reply::NOT_IMPLEMENTED),
            (Some(_), Some(_)) => Next::Reply(Reply::TLS_ALREADY),
            (Some(_), None) => {
                self.tx = None;
                Next::StartTls
            }
        }
    }

    /// The session after a completed TLS handshake: everything the client said
    /// before is forgotten (RFC 3207 4.2), it starts again with EHLO.
    pub fn start_over_with_tls(&mut self, info: TlsInfo) {
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.tls = Some(info);
    }

    fn on_mail(&mut self, from: MailFrom<Cow<'_, str>>, raw: &[u8]) -> Reply {
        if self.helo.is_none() {
            return Reply::NEED_HELO;
        }
        if self.tx.is_some() {
            return Reply::NESTED_MAIL;
        }
        let has_params = from.flags != 0 || from.size != 0 || from.env_id.is_some();
        if has_params && !self.esmtp {
            return Reply::PARAM_NOT_IMPLEMENTED;
        }
        let size = match params::check(raw, params::MAIL_PARAMS) {
            Ok(size) => size.unwrap_or(0),
            Err(reply) => return reply,
        };
        if size > self.cfg.smtp.max_message_size {
            return Reply::SIZE_EXCEEDED;
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return Reply::NEED_SMTPUTF8;
        }
        if !address::is_valid_sender(&from.address) {
            return Reply::BAD_SENDER_ADDRESS;
        }
        // Refuse early, before the client sends the message, when it cannot be
        // stored: storage trouble is always a 4xx.
        if !self.ctx.journal.is_healthy() {
            return Reply::STORAGE_ERROR;
        }
        if let Err(e) = self.ctx.journal.check_space(size) {
            tracing::warn!(client = %self.client_ip, "MAIL refused: {e}");
            return Reply::STORAGE_FULL;
        }
        let ret_full = match from.flags {
            f if f & smtp_proto::MAIL_RET_FULL != 0 => Some(true),
            f if f & smtp_proto::MAIL_RET_HDRS != 0 => Some(false),
            _ => None,
        };
        self.tx = Some(Transaction {
            mail_from: from.address.into_owned(),
            params: MailParams {
                size,
                eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
                smtputf8,
                ret_full,
                envid: from.env_id.map(Cow::into_owned),
            },
            rcpts: Vec::new(),
            mode: BodyMode::None,
            body: None,
        });
        Reply::SENDER_OK
    }

    fn on_rcpt(&mut self, to: RcptTo<Cow<'_, str>>, raw: &[u8]) -> Next {
        let max = self.cfg.smtp.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return Next::Reply(Reply::NEED_MAIL);
        };
        if tx.mode != BodyMode::None {
            return Next::Reply(Reply::BAD_SEQUENCE);
        }
        if tx.rcpts.len() >= max {
            return Next::Reply(Reply::TOO_MANY_RECIPIENTS);
        }
        if let Err(reply) = params::check(raw, params::RCPT_PARAMS) {
            return Next::Reply(reply);
        }
        if !tx.params.smtputf8 && !to.address.is_ascii() {
            return Next::Reply(Reply::NEED_SMTPUTF8);
        }
        let address =
            match address::check_recipient(&to.address, raw, |d| self.cfg.is_relay_domain(d)) {
                Ok(a) => a,
                Err(reply) => return Next::Reply(reply),
            };
        Next::Verify(Recipient {
            address,
            // smtp-proto accepts only the rfc822 type and hands over the decoded
            // address; keep the type so DSNs and backends get `rfc822;addr`.
            orcpt: to.orcpt.map(|a| format!("rfc822;{a}")),
            notify: to.flags
                & (smtp_proto::RCPT_NOTIFY_SUCCESS
                    | smtp_proto::RCPT_NOTIFY_FAILURE
                    | smtp_proto::RCPT_NOTIFY_DELAY
                    | smtp_proto::RCPT_NOTIFY_NEVER),
            state: RcptState::Pending,
            dsn_sent: false,
        })
    }

    /// Adds a recipient [`Next::Verify`] asked about, once it was found to
    /// exist (`known`), or refuses it with `550 5.1.1`.
    pub fn add_recipient(&mut self, rcpt: Recipient, known: bool) -> Reply {
        if !known {
            return Reply::UNKNOWN_USER;
        }
        match self.tx.as_mut() {
            Some(tx) => {
                tx.rcpts.push(rcpt);
                Reply::RCPT_OK
            }
            None => Reply::NEED_MAIL,
        }
    }

    fn on_data(&mut self) -> Next {
        let Some(tx) = self.tx.as_mut() else {
            return Next::Reply(Reply::NEED_MAIL);
        };
        if tx.rcpts.is_empty() {
            return Next::Reply(Reply::NEED_RCPT);
        }
        if tx.mode == BodyMode::Bdat {
            return Next::Reply(Reply::MIXED_DATA);
        }
        tx.mode = BodyMode::Data;
        Next::StartData
    }

    fn on_bdat(&mut self, size: u64, last: bool) -> Next {
        // The chunk follows the command whatever we answer, so the I/O loop always
        // reads it; an error here makes it discard the chunk.
        if let Some(tx) = self.tx.as_mut()
            && !tx.rcpts.is_empty()
            && tx.mode != BodyMode::Data
        {
            tx.mode = BodyMode::Bdat;
        }
        Next::Bdat { size, last }
    }

    /// True if a BDAT chunk just announced belongs to a valid transaction.
    pub fn bdat_allowed(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.mode == BodyMode::Bdat)
    }

    /// The reply for a BDAT chunk that arrived outside a valid transaction.
    pub fn bdat_refusal(&self) -> Reply {
        match &self.tx {
            None => Reply::NEED_MAIL,
            Some(tx) if tx.rcpts.is_empty() => Reply::NEED_RCPT,
            Some(_) => Reply::MIXED_DATA,
        }
    }

    /// The envelope of the open transaction for the journal.
    pub fn envelope(&self, tx: &Transaction, arrived_ms: u64) -> Envelope {
        Envelope {
            mail_from: tx.mail_from.clone(),
            params: tx.params.clone(),
            client_ip: self.client_ip,
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.clone(),
            arrived_ms,
        }
    }
}
