//! The envelope commands we send to a backend: `MAIL FROM` and `RCPT TO` with
//! the parameters the backend's EHLO says it understands (SIZE, BODY=8BITMIME,
//! SMTPUTF8, and the DSN parameters RET, ENVID, NOTIFY, ORCPT).

use crate::journal::{Recipient, Record};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_SIZE, EXT_SMTP_UTF8, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE,
    RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};

/// `MAIL FROM:<..>` with the parameters the backend understands.
pub(super) fn mail_command(caps: u32, record: &Record, size: usize) -> String {
    let p = &record.envelope.params;
    let mut cmd = format!("MAIL FROM:<{}>", record.envelope.mail_from);
    if caps & EXT_SIZE != 0 {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    if p.eight_bit && caps & EXT_8BIT_MIME != 0 {
        cmd.push_str(" BODY=8BITMIME");
    }
    if p.smtputf8 && caps & EXT_SMTP_UTF8 != 0 {
        cmd.push_str(" SMTPUTF8");
    }
    if caps & EXT_DSN != 0 {
        match p.ret_full {
            Some(true) => cmd.push_str(" RET=FULL"),
            Some(false) => cmd.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &p.envid {
            cmd.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

/// `RCPT TO:<..>` with NOTIFY/ORCPT passed on to a backend that offers DSN.
pub(super) fn rcpt_command(caps: u32, r: &Recipient) -> String {
    let mut cmd = format!("RCPT TO:<{}>", r.address);
    if caps & EXT_DSN != 0 {
        let n = r.notify;
        if n & RCPT_NOTIFY_NEVER != 0 {
            cmd.push_str(" NOTIFY=NEVER");
        } else if n != 0 {
            let words: Vec<&str> = [
                (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                (RCPT_NOTIFY_FAILURE, "FAILURE"),
                (RCPT_NOTIFY_DELAY, "DELAY"),
            ]
            .iter()
            .filter(|(bit, _)| n & bit != 0)
            .map(|(_, w)| *w)
            .collect();
            cmd.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
        if let Some((kind, addr)) = r.orcpt.as_deref().and_then(|o| o.split_once(';')) {
            cmd.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

/// xtext (RFC 3461 4): `+`, `=`, controls, space and non-ASCII as `+XX`.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RcptState;

    fn rcpt(notify: u64, orcpt: Option<&str>) -> Recipient {
        Recipient {
            address: "a@example.com".into(),
            orcpt: orcpt.map(str::to_owned),
            notify,
            state: RcptState::Pending,
            dsn_sent: false,
        }
    }

    #[test]
    fn xtext_encodes_what_it_must() {
        assert_eq!(xtext("a@example.com"), "a@example.com");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("ü"), "+C3+BC");
    }

    #[test]
    fn rcpt_parameters_only_for_dsn_backends() {
        let r = rcpt(
            RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE,
            Some("rfc822;a+b@example.com"),
        );
        assert_eq!(rcpt_command(0, &r), "RCPT TO:<a@example.com>\r\n");
        assert_eq!(
            rcpt_command(EXT_DSN, &r),
            "RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.com\r\n"
        );
        assert_eq!(
            rcpt_command(EXT_DSN, &rcpt(RCPT_NOTIFY_NEVER, None)),
            "RCPT TO:<a@example.com> NOTIFY=NEVER\r\n"
        );
        assert_eq!(
            rcpt_command(EXT_DSN, &rcpt(0, None)),
            "RCPT TO:<a@example.com>\r\n"
        );
    }
}
