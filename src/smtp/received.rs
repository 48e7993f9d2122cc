//! The `Received:` trace header we prepend (RFC 5321 section 4.4).

use crate::journal::QueueId;
use std::net::IpAddr;

/// Builds our `Received:` header, CRLF-terminated and folded under 78 columns
/// where it can be: from the HELO name and client IP, by our host name, with
/// `ESMTP`/`SMTP`/`UTF8SMTP`, our queue id, `for` the recipient when there is
/// exactly one, and the date.
pub fn header(
    helo: &str,
    client_ip: IpAddr,
    hostname: &str,
    protocol: &str,
    id: QueueId,
    single_rcpt: Option<&str>,
    date: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let literal = match client_ip {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let helo = sanitize(helo);
    let mut h = format!(
        "Received: from {helo} ({literal})\r\n\tby {hostname} (breakwater) with {protocol} id {id}"
    );
    if let Some(rcpt) = single_rcpt {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    h.push_str(&format!(
        ";\r\n\t{}\r\n",
        date.format("%a, %d %b %Y %H:%M:%S +0000")
    ));
    h.into_bytes()
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
    fn hostile_helo_cannot_inject_lines() {
        let date = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let h = header(
            "a\r\nX-Evil: 1 (x)",
            "::1".parse().unwrap(),
            "h",
            "SMTP",
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
