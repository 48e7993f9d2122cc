//! Checks on the raw command line that the parser does not make: MAIL and RCPT
//! parameters (only those we advertise, each at most once, sizes without
//! overflow) and BDAT's chunk size.
//!
//! smtp-proto 0.2.5 accepts parameters we never advertised (BY, HOLDFOR,
//! MT-PRIORITY, AUTH, BODY=BINARYMIME ...), keeps the last of duplicates, and
//! its number parser wraps around past `usize::MAX` (`SIZE=99999999999999999999999`
//! reads as 999), so these are decided here, on the bytes the client sent.

use super::reply::Reply;

/// Parameters a MAIL command may carry (RFC 1870, 1652, 6531, 3461).
pub const MAIL_PARAMS: &[&str] = &["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"];
/// Parameters a RCPT command may carry (RFC 3461).
pub const RCPT_PARAMS: &[&str] = &["NOTIFY", "ORCPT"];

/// Checks the parameters after the path of a MAIL or RCPT line: each one in
/// `allowed`, none twice, `BODY` only `7BIT` or `8BITMIME`. Returns the `SIZE=`
/// value if there is one (`u64::MAX` when it does not fit).
pub fn check(raw: &[u8], allowed: &[&str]) -> Result<Option<u64>, Reply> {
    let mut seen: Vec<String> = Vec::new();
    let mut size = None;
    for token in after_path(raw)
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let (key, value) = match token.iter().position(|&b| b == b'=') {
            Some(i) => (&token[..i], Some(&token[i + 1..])),
            None => (token, None),
        };
        let key = String::from_utf8_lossy(key).to_ascii_uppercase();
        if !allowed.contains(&key.as_str()) {
            return Err(Reply::PARAM_NOT_IMPLEMENTED);
        }
        if seen.contains(&key) {
            return Err(Reply::DUPLICATE_PARAM);
        }
        match (key.as_str(), value) {
            ("BODY", Some(v)) if v.eq_ignore_ascii_case(b"BINARYMIME") => {
                return Err(Reply::BINARYMIME_NOT_OFFERED);
            }
            ("SIZE", Some(v)) => size = Some(number(v).ok_or(Reply::SYNTAX_ERROR)?),
            _ => {}
        }
        seen.push(key);
    }
    Ok(size)
}

/// A decimal number; `u64::MAX` if it has too many digits to fit.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

/// The bytes after the path's closing `>` (outside a quoted local part), line
/// ending removed.
fn after_path(raw: &[u8]) -> &[u8] {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return &[];
    };
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in line.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return &line[i + 1..],
            _ => {}
        }
    }
    &[]
}

/// True if `raw` is a verb alone: nothing but white space after the first word
/// (STARTTLS, DATA, QUIT take no parameters; smtp-proto ignores any given).
pub fn is_bare(raw: &[u8]) -> bool {
    let line = raw.trim_ascii();
    !line.iter().any(|b| b.is_ascii_whitespace())
}

/// A parsed `BDAT size [LAST]` line, or `None` if `raw` is not a BDAT command.
/// A size too large for `u64` reads as `u64::MAX` (the caller refuses it).
pub fn bdat(raw: &[u8]) -> Option<Result<(u64, bool), Reply>> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty());
    if !words.next()?.eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    let syntax = || {
        Reply::new(
            501,
            "5.5.4",
            "Syntax error, expected: BDAT chunk-size [LAST]",
        )
    };
    let Some(size) = words.next().and_then(number) else {
        return Some(Err(syntax()));
    };
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Some(Err(syntax())),
    };
    if words.next().is_some() {
        return Some(Err(syntax()));
    }
    Some(Ok((size, last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters() {
        let ok = |l: &str| check(l.as_bytes(), MAIL_PARAMS);
        assert_eq!(ok("MAIL FROM:<a@b.test>\r\n"), Ok(None));
        assert_eq!(
            ok("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n"),
            Ok(Some(1000))
        );
        assert_eq!(ok("MAIL FROM:<\"x>y\"@b.test> size=5\r\n"), Ok(Some(5)));
        assert_eq!(
            ok("MAIL FROM:<a@b.test> SIZE=99999999999999999999999\r\n"),
            Ok(Some(u64::MAX))
        );
        let err = |l: &str| check(l.as_bytes(), MAIL_PARAMS).unwrap_err().code;
        assert_eq!(err("MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n"), 501);
        assert_eq!(err("MAIL FROM:<a@b.test> size=1 SIZE=1\r\n"), 501);
        assert_eq!(err("MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n"), 555);
        assert_eq!(err("MAIL FROM:<a@b.test> BY=120;R\r\n"), 555);
        assert_eq!(err("MAIL FROM:<a@b.test> AUTH=<>\r\n"), 555);
        assert_eq!(err("MAIL FROM:<a@b.test> SIZE=12x\r\n"), 501);
        let rcpt = |l: &str| check(l.as_bytes(), RCPT_PARAMS);
        assert_eq!(
            rcpt("RCPT TO:<a@example.com> NOTIFY=SUCCESS ORCPT=rfc822;a@example.com\r\n"),
            Ok(None)
        );
        assert_eq!(
            rcpt("RCPT TO:<a@example.com> NOTIFY=NEVER NOTIFY=NEVER\r\n")
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(
            rcpt("RCPT TO:<a@example.com> SIZE=1\r\n").unwrap_err().code,
            555
        );
    }

    #[test]
    fn bare_verbs() {
        assert!(is_bare(b"STARTTLS\r\n"));
        assert!(is_bare(b"starttls \r\n"));
        assert!(!is_bare(b"STARTTLS +0000\r\n"));
        assert!(!is_bare(b"STARTTLS x\n"));
    }

    #[test]
    fn bdat_lines() {
        let p = |l: &str| bdat(l.as_bytes());
        assert_eq!(p("BDAT 100 LAST\r\n"), Some(Ok((100, true))));
        assert_eq!(p("bdat 0\r\n"), Some(Ok((0, false))));
        assert_eq!(
            p("BDAT 99999999999999999999999 LAST\r\n"),
            Some(Ok((u64::MAX, true)))
        );
        assert!(matches!(p("BDAT\r\n"), Some(Err(_))));
        assert!(matches!(p("BDAT -1\r\n"), Some(Err(_))));
        assert!(matches!(p("BDAT 10 FIRST\r\n"), Some(Err(_))));
        assert!(matches!(p("BDAT 10 LAST x\r\n"), Some(Err(_))));
        assert_eq!(p("DATA\r\n"), None);
        assert_eq!(p("BDATX 1\r\n"), None);
    }
}
