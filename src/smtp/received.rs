//! The `Received:` trace header we prepend (RFC 5321 section 4.4).

use crate::journal::{QueueId, TlsInfo};
use std::net::IpAddr;

/// The protocol name of RFC 3848 / RFC 6531 for a session: `SMTP` after HELO,
/// `ESMTP` after EHLO, `UTF8SMTP` for an SMTPUTF8 transaction, each with an
/// `S` appended under TLS (there is no AUTH, so never `A`).
pub fn protocol(esmtp: bool, smtputf8: bool, tls: bool) -> &'static str {
    match (esmtp, smtputf8, tls) {
        (_, true, true) => "UTF8SMTPS",
        (_, true, false) => "UTF8SMTP",
        (true, false, true) => "ESMTPS",
        (true, false, false) => "ESMTP",
        (false, false, _) => "SMTP",
    }
}

/// Builds our `Received:` header, CRLF-terminated and folded under 78 columns
/// where it can be: from the HELO name and client IP, the TLS version and
/// cipher (as Postfix writes them), by our host name, with the [`protocol`],
/// our queue id, `for` the recipient when there is exactly one, and the date.
#[allow(clippy::too_many_arguments)]
pub fn header(
    helo: &str,
    client_ip: IpAddr,
    hostname: &str,
    protocol: &str,
    tls: Option<&TlsInfo>,
    id: QueueId,
    single_rcpt: Option<&str>,
    date: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let literal = match client_ip {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let helo = sanitize(helo);
    let mut h = format!("Received: from {helo} ({literal})");
    if let Some(t) = tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            sanitize(&t.version),
            sanitize(&t.cipher)
        ));
    }
    h.push_str(&format!(
        "\r\n\tby {hostname} (breakwater) with {protocol} id {id}"
    ));
    if let Some(rcpt) = single_rcpt {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    h.push_str(&format!(
        ";\r\n\t{}\r\n",
        date.format("%a, %d %b %Y %H:%M:%S +0000")
    ));
    h.into_bytes()
}

/// The header lines a replayed copy carries before the original bytes: our
/// `Received:` (by us, for the replay, dated when the replay job was made)
/// and `X-Breakwater-Replay: ID`, so the backend or a person can tell.
pub fn replay_headers(
    hostname: &str,
    replay: &str,
    job: QueueId,
    date: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let replay = sanitize(replay);
    format!(
        "Received: by {hostname} (breakwater replay {replay}) id {job};\r\n\t{}\r\nX-Breakwater-Replay: {replay}\r\n",
        date.format("%a, %d %b %Y %H:%M:%S +0000")
    )
    .into_bytes()
}

/// Keeps a client-supplied token from breaking the header: no controls, no
/// spaces, no parentheses (comments), bounded length.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn shape() {
        let date = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 19, 0, 0)
            .unwrap();
        let h = header(
            "client.test",
            "127.0.0.1".parse().unwrap(),
            "mx.example.com",
            "ESMTP",
            None,
            QueueId(0xABC),
            Some("a@example.com"),
            date,
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.example.com (breakwater) \
             with ESMTP id 0000000000000ABC\r\n\tfor <a@example.com>;\r\n\tMon, 23 Nov 2026 19:00:00 +0000\r\n"
        );
    }

    #[test]
    fn tls_sessions_say_esmtps_with_version_and_cipher() {
        let date = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let h = header(
            "c.test",
            "192.0.2.1".parse().unwrap(),
            "mx.example.com",
            protocol(true, false, true),
            Some(&tls),
            QueueId(1),
            None,
            date,
        );
        let s = String::from_utf8(h).unwrap();
        assert!(
            s.contains("\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tby mx.example.com (breakwater) with ESMTPS id"),
            "{s}"
        );
        assert_eq!(protocol(true, true, true), "UTF8SMTPS");
        assert_eq!(protocol(false, false, false), "SMTP");
        assert_eq!(protocol(true, false, false), "ESMTP");
    }

    #[test]
    fn hostile_helo_cannot_inject_lines() {
        let date = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let h = header(
            "a\r\nX-Evil: 1 (x)",
            "::1".parse().unwrap(),
            "h",
            "SMTP",
            None,
            QueueId(1),
            None,
            date,
        );
        let s = String::from_utf8(h).unwrap();
        assert!(
            s.starts_with("Received: from aX-Evil:1x ([IPv6:::1])"),
            "{s}"
        );
        assert_eq!(s.matches("\r\n").count(), 3);
    }
}
