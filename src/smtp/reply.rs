//! Typed SMTP replies: every reply the relay sends is a named constant or built here.

use std::borrow::Cow;
use std::fmt;

/// An SMTP reply: code, enhanced status code (RFC 3463) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code `class.subject.detail`, e.g. `5.7.1`.
    pub enhanced: Cow<'static, str>,
    /// Human-readable text.
    pub text: Cow<'static, str>,
}

macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident = $code:literal $esc:literal $text:literal;)*) => {
        impl Reply {
            $($(#[$doc])* pub const $name: Reply = Reply {
                code: $code,
                enhanced: Cow::Borrowed($esc),
                text: Cow::Borrowed($text),
            };)*
        }
    };
}

replies! {
    /// Generic success.
    OK = 250 "2.0.0" "Ok";
    /// MAIL FROM accepted.
    SENDER_OK = 250 "2.1.0" "Sender ok";
    /// RCPT TO accepted.
    RCPT_OK = 250 "2.1.5" "Recipient ok";
    /// RSET.
    RESET = 250 "2.0.0" "Reset";
    /// BDAT chunk received (not the last).
    CHUNK_OK = 250 "2.0.0" "Chunk received";
    /// VRFY: we never verify (RFC 5321 3.5.3).
    CANNOT_VRFY = 252 "2.5.0" "Cannot VRFY user, but will accept message and attempt delivery";
    /// HELP.
    HELP = 214 "2.0.0" "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP";
    /// QUIT.
    BYE = 221 "2.0.0" "Bye";
    /// DATA accepted, send the body.
    START_DATA = 354 "" "End data with <CR><LF>.<CR><LF>";
    /// Shutting down.
    SHUTTING_DOWN = 421 "4.3.0" "Service shutting down, try again later";
    /// Too many connections.
    TOO_MANY_CONNECTIONS = 421 "4.3.2" "Too many connections, try again later";
    /// Client was idle too long.
    IDLE_TIMEOUT = 421 "4.4.2" "Idle timeout, closing connection";
    /// A command or message line took longer than `smtp.idle_timeout` to arrive.
    LINE_TIMEOUT = 421 "4.4.2" "Timeout: a line took too long to arrive, closing connection";
    /// The message took longer than `smtp.data_timeout`.
    DATA_TIMEOUT = 421 "4.4.2" "Timeout: the message took too long to arrive, closing connection";
    /// `smtp.max_errors` reached.
    TOO_MANY_ERRORS = 421 "4.7.0" "Too many errors in this session, closing connection";
    /// `smtp.max_connections_per_ip` reached.
    TOO_MANY_FROM_IP = 421 "4.7.0" "Too many connections from your address, try again later";
    /// STARTTLS configured but the handshake cannot start now.
    TLS_NOT_AVAILABLE = 454 "4.7.0" "TLS not available due to temporary reason";
    /// STARTTLS accepted: the handshake follows.
    READY_TLS = 220 "2.0.0" "Ready to start TLS";
    /// Storage error.
    STORAGE_ERROR = 451 "4.3.0" "Temporary storage error, try again later";
    /// Journal full.
    STORAGE_FULL = 452 "4.3.1" "Insufficient system storage, try again later";
    /// `auth.max_memory`: too many messages held whole for their check now.
    MEMORY_BUSY = 452 "4.3.1" "Too much mail in verification at once, try again later";
    /// Too many recipients.
    TOO_MANY_RECIPIENTS = 452 "4.5.3" "Too many recipients";
    /// Unknown command.
    UNKNOWN_COMMAND = 500 "5.5.2" "Command not recognized";
    /// Line too long.
    LINE_TOO_LONG = 500 "5.5.6" "Line too long";
    /// Syntax error in parameters.
    SYNTAX_ERROR = 501 "5.5.4" "Syntax error in parameters or arguments";
    /// Bad sender address syntax.
    BAD_SENDER = 501 "5.1.7" "Bad sender address syntax";
    /// Bad recipient address syntax.
    BAD_RECIPIENT = 501 "5.1.3" "Bad recipient address syntax";
    /// Command we know but do not offer.
    NOT_IMPLEMENTED = 502 "5.5.1" "Command not implemented";
    /// Bad sequence.
    BAD_SEQUENCE = 503 "5.5.1" "Bad sequence of commands";
    /// MAIL before EHLO/HELO.
    NEED_HELO = 503 "5.5.1" "Send EHLO or HELO first";
    /// RCPT before MAIL.
    NEED_MAIL = 503 "5.5.1" "Need MAIL command first";
    /// DATA before RCPT.
    NEED_RCPT = 503 "5.5.1" "Need RCPT command first";
    /// Nested MAIL.
    NESTED_MAIL = 503 "5.5.1" "Sender already specified";
    /// BDAT then DATA or vice versa.
    MIXED_DATA = 503 "5.5.1" "DATA and BDAT cannot be mixed in one transaction";
    /// Unsupported parameter.
    PARAM_NOT_IMPLEMENTED = 555 "5.5.4" "Parameter not recognized or not implemented";
    /// BODY=BINARYMIME (not advertised).
    BINARYMIME_NOT_OFFERED = 555 "5.5.4" "BODY=BINARYMIME is not offered; use BODY=8BITMIME";
    /// Not a relay domain.
    RELAY_DENIED = 550 "5.7.1" "Relay access denied";
    /// Percent hack, bang path, source route, quoted @.
    ROUTING_DENIED = 550 "5.7.1" "Source routing and address tricks (%, !, quoted @) are not accepted";
    /// Declared size over the limit.
    SIZE_EXCEEDED = 552 "5.3.4" "Message size exceeds fixed maximum message size";
    /// A BDAT chunk that can never fit: answered at once, then the connection is
    /// closed (its bytes would follow and cannot be skipped).
    CHUNK_TOO_BIG = 552 "5.3.4" "BDAT chunk exceeds the maximum message size, closing connection";
    /// Bare CR or LF in DATA (SMTP smuggling defence).
    BARE_LINE_ENDING = 550 "5.6.0" "Bare CR or LF in message; lines must end with CRLF (RFC 5321 2.3.8)";
    /// `DATA` ending in a bare LF: the message would start mid-line.
    DATA_BARE_LF = 500 "5.5.2" "Bare LF after DATA; the command must end with CRLF (RFC 5321 2.3.8)";
    /// NUL in the message (some servers downstream end lines or strings at NUL).
    NUL_IN_MESSAGE = 550 "5.6.0" "NUL character in message is not accepted";
    /// More `Received:` headers than `smtp.max_received_headers`.
    MAIL_LOOP = 554 "5.4.6" "Too many Received: headers: mail forwarding loop";
    /// The client talked before the greeting (pregreet).
    PREGREET = 554 "5.5.0" "Protocol error: you talked before the greeting";
    /// A MAIL or RCPT parameter given twice.
    DUPLICATE_PARAM = 501 "5.5.4" "Parameter given more than once";
    /// A sender address that parses but cannot be mailed back (`<a@>`).
    BAD_SENDER_ADDRESS = 553 "5.1.7" "Sender address rejected: not a valid address";
    /// A recipient address that parses but is not local@domain (`<a@>`).
    BAD_RECIPIENT_ADDRESS = 553 "5.1.3" "Recipient address rejected: not a valid address";
    /// The recipient does not exist (static list or backend verification).
    UNKNOWN_USER = 550 "5.1.1" "Recipient address rejected: User unknown";
    /// STARTTLS while already under TLS, or not offered.
    TLS_ALREADY = 503 "5.5.1" "TLS already active";
    /// SMTPUTF8 address without the SMTPUTF8 parameter.
    NEED_SMTPUTF8 = 553 "5.6.7" "Non-ASCII address requires the SMTPUTF8 parameter";
    /// Transaction failed for an unclassified reason.
    TRANSACTION_FAILED = 554 "5.0.0" "Transaction failed";
}

impl Reply {
    /// A reply with owned text.
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Cow::Borrowed(enhanced),
            text: text.into(),
        }
    }

    /// `250 2.0.0 Ok: queued as <id>`.
    pub fn queued(id: impl fmt::Display) -> Reply {
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }

    /// True for 2xx and 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (`CODE ESC text\r\n`) to `out`; CR/LF in the text are
    /// replaced so a reply can never be split by its own contents.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{}", self.code);
        if !self.enhanced.is_empty() {
            let _ = write!(out, " {}", self.enhanced);
        }
        out.push(b' ');
        out.extend(
            self.text
                .bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

impl From<smtp_proto::Response<String>> for Reply {
    fn from(r: smtp_proto::Response<String>) -> Reply {
        let esc = r.esc;
        let enhanced = if esc[0] == 0 {
            Cow::Borrowed("")
        } else {
            Cow::Owned(format!("{}.{}.{}", esc[0], esc[1], esc[2]))
        };
        Reply {
            code: r.code,
            enhanced,
            text: Cow::Owned(r.message.replace(['\r', '\n'], " ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let mut out = Vec::new();
        Reply::RELAY_DENIED.write_to(&mut out);
        assert_eq!(out, b"550 5.7.1 Relay access denied\r\n");
        out.clear();
        Reply::START_DATA.write_to(&mut out);
        assert_eq!(out, b"354 End data with <CR><LF>.<CR><LF>\r\n");
        out.clear();
        Reply::new(250, "2.0.0", "a\r\nb").write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 a  b\r\n");
    }

    #[test]
    fn classes() {
        assert!(Reply::OK.is_positive());
        assert!(Reply::STORAGE_FULL.is_transient());
        assert!(Reply::RELAY_DENIED.is_permanent());
    }
}
