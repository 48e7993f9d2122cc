//! Command lines: arbitrary bytes cut into lines (each keeps its `\n`), every
//! line through everything the session applies to a command line without a
//! `Session`: smtp-proto's `Request::parse`, our raw-line checks
//! (`params::check` with the MAIL and RCPT parameter lists, `params::bdat`),
//! the address checks on what the parser returned, the `Received:` header
//! built from a HELO name and recipient, and the log sanitiser.
//!
//! Properties: no panic; a HELO/EHLO name never holds CR or LF (the EHLO
//! reply puts it on the wire unescaped); the `Received:` header is one header
//! (CRLF line ends, continuation lines start with a tab, no other CR or LF);
//! a log field holds no control character.
#![no_main]

use breakwater::journal::QueueId;
use breakwater::smtp::connection::printable;
use breakwater::smtp::{address, params, received};
use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        command_line(line);
    }
});

fn command_line(line: &[u8]) {
    let _ = params::check(line, params::MAIL_PARAMS);
    let _ = params::check(line, params::RCPT_PARAMS);
    let _ = params::bdat(line);
    let _ = address::is_address_literal(line);
    let logged = printable(&String::from_utf8_lossy(line));
    assert!(
        !logged.chars().any(char::is_control),
        "log field {logged:?}"
    );
    match Request::parse(&mut line.iter()) {
        Ok(Request::Ehlo { host } | Request::Helo { host } | Request::Lhlo { host }) => {
            assert!(
                !host.contains(['\r', '\n']),
                "HELO name {host:?} from {line:?}"
            );
            header_is_one_header(&host, None);
        }
        Ok(Request::Mail { from }) => {
            let _ = address::is_valid_sender(&from.address);
            header_is_one_header("client.test", Some(&from.address));
        }
        Ok(Request::Rcpt { to }) => {
            let checked = address::check_recipient(&to.address, line, |d| {
                d.eq_ignore_ascii_case("example.com")
            });
            if let Ok(a) = &checked {
                assert!(!a.contains(['\r', '\n']), "recipient {a:?} from {line:?}");
            }
            header_is_one_header("client.test", Some(&to.address));
        }
        Ok(_) | Err(_) => {}
    }
}

fn header_is_one_header(helo: &str, rcpt: Option<&str>) {
    let h = received::header(
        helo,
        "192.0.2.1".parse().unwrap(),
        "relay.test",
        received::protocol(true, false, false),
        None,
        QueueId(1),
        rcpt,
        chrono::DateTime::UNIX_EPOCH,
    );
    assert!(h.ends_with(b"\r\n"), "{h:?}");
    for (i, line) in h.split_inclusive(|&b| b == b'\n').enumerate() {
        let Some(line) = line.strip_suffix(b"\r\n") else {
            panic!("line {i} of the Received: header ends without CR LF: {h:?}");
        };
        assert!(
            !line.contains(&b'\r'),
            "bare CR in the Received: header: {h:?}"
        );
        assert!(
            i == 0 || line.starts_with(b"\t"),
            "line {i} is not folded: {h:?}"
        );
    }
}
