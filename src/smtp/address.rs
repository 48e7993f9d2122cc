//! Recipient checks: no open relay, no routing tricks.

use super::reply::Reply;

/// Accepts `address` if it is a plain `local@domain` in one of our domains.
///
/// Refused with `550 5.7.1`: domains we do not relay for, address literals,
/// source routes (`<@hop:user@domain>`, seen in the raw line because the parser
/// strips them), and local parts that try to route further: `%` (percent hack),
/// `!` (bang path) and an `@` inside a quoted local part. This is stricter than
/// RFC 5321's "accept and ignore source routes", on purpose: Postfix with
/// `allow_untrusted_routing = no` refuses the same tricks at a relay.
///
/// The empty address is the bare `<postmaster>` (RFC 5321 4.5.1), always accepted.
pub fn check_recipient(
    address: &str,
    raw_line: &[u8],
    is_relay_domain: impl Fn(&str) -> bool,
) -> Result<String, Reply> {
    if address.is_empty() {
        return Ok("postmaster".into());
    }
    if has_source_route(raw_line) {
        return Err(Reply::ROUTING_DENIED);
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(Reply::BAD_RECIPIENT);
    };
    if local.is_empty() || domain.is_empty() {
        return Err(Reply::BAD_RECIPIENT_ADDRESS);
    }
    if local.contains(['@', '%', '!']) {
        return Err(Reply::ROUTING_DENIED);
    }
    if domain.starts_with('[') || !is_relay_domain(domain) {
        return Err(Reply::RELAY_DENIED);
    }
    Ok(address.to_owned())
}

/// True unless a non-null reverse path has an `@` with nothing on one side of
/// it (`<a@>`, `<@b.test>`): a DSN could never reach it. A bare local part is
/// accepted, as Postfix does.
pub fn is_valid_sender(address: &str) -> bool {
    match address.rsplit_once('@') {
        None => true,
        Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
    }
}

/// True if the path in a `RCPT TO:` line ends in an address literal (`@[...]>`).
pub fn is_address_literal(raw: &[u8]) -> bool {
    raw.windows(2).any(|w| w == b"@[")
}

/// True if the path in a `RCPT TO:` line starts with a source route (`<@`).
fn has_source_route(raw: &[u8]) -> bool {
    raw.iter()
        .position(|&b| b == b'<')
        .is_some_and(|i| raw[i + 1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: &str, raw: &str) -> Result<String, u16> {
        check_recipient(addr, raw.as_bytes(), |d| {
            d.eq_ignore_ascii_case("example.com")
        })
        .map_err(|r| r.code)
    }

    #[test]
    fn table() {
        let ok = |a: &str| Ok(a.to_string());
        let cases: &[(&str, &str, Result<String, u16>)] = &[
            (
                "a@example.com",
                "RCPT TO:<a@example.com>",
                ok("a@example.com"),
            ),
            (
                "a@EXAMPLE.COM",
                "RCPT TO:<a@EXAMPLE.COM>",
                ok("a@EXAMPLE.COM"),
            ),
            ("", "RCPT TO:<postmaster>", ok("postmaster")),
            (
                "postmaster@example.com",
                "RCPT TO:<postmaster@example.com>",
                ok("postmaster@example.com"),
            ),
            ("a@other.com", "RCPT TO:<a@other.com>", Err(550)),
            (
                "a%other.com@example.com",
                "RCPT TO:<a%other.com@example.com>",
                Err(550),
            ),
            (
                "other!a@example.com",
                "RCPT TO:<other!a@example.com>",
                Err(550),
            ),
            (
                "a@other.com@example.com",
                "RCPT TO:<\"a@other.com\"@example.com>",
                Err(550),
            ),
            (
                "a@example.com",
                "RCPT TO:<@relay.net:a@example.com>",
                Err(550),
            ),
            ("a@[127.0.0.1]", "RCPT TO:<a@[127.0.0.1]>", Err(550)),
            ("a@", "RCPT TO:<a@>", Err(553)),
            ("@example.com", "RCPT TO:<@example.com>", Err(550)),
            (
                "ü@example.com",
                "RCPT TO:<ü@example.com>",
                ok("ü@example.com"),
            ),
        ];
        for (addr, raw, want) in cases {
            assert_eq!(&check(addr, raw), want, "{raw}");
        }
    }

    #[test]
    fn senders() {
        assert!(is_valid_sender(""));
        assert!(is_valid_sender("a@b.test"));
        assert!(is_valid_sender("postmaster"));
        assert!(!is_valid_sender("a@"));
        assert!(!is_valid_sender("@b.test"));
    }
}
