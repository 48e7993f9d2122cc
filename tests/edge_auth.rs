//! Edge authentication (`[auth]`, `[[dnsbl]]`): SPF, DKIM, DMARC and the
//! `Authentication-Results:` header, against a loopback test DNS server
//! (tests/common/dns.rs), a real relay and a real backend. No internet.

mod common;

use common::{Backend, Client, Dns, Relay};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const RCPT: &str = "user@example.com";
const WAIT: Duration = Duration::from_secs(10);

/// The zone every test uses.
fn zone(dns: &Dns) {
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("soft.test", "v=spf1 ~all")
        .txt("helo-pass.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("helo-fail.test", "v=spf1 -all")
        .txt("helo-soft.test", "v=spf1 ?mx ~all")
        .a("helo-none.test", Ipv4Addr::LOCALHOST)
        .txt("_dmarc.signed.test", "v=DMARC1; p=reject")
        .txt("_dmarc.strict.test", "v=DMARC1; p=reject")
        .txt("_dmarc.pass.test", "v=DMARC1; p=quarantine")
        .silent("slow.test")
        .silent("_dmarc.slow.test");
}

struct Setup {
    dns: Dns,
    backend: Backend,
    relay: Relay,
    key: Ed25519Key,
}

/// A DNS server with [`zone`] and a DKIM key for `sel._domainkey.signed.test`,
/// a backend, and a relay with `[auth]` (plus `extra` lines in it) using them.
async fn setup(auth: &str, extra: &str) -> Setup {
    let dns = Dns::start().await;
    zone(&dns);
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("ed25519 key");
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).expect("key");
    let public = breakwater::smtp::auth::base64(&key.public_key());
    dns.txt(
        "sel._domainkey.signed.test",
        &format!("v=DKIM1; k=ed25519; p={public}"),
    );
    let backend = Backend::start().await;
    let text = format!(
        "{auth}\nresolver = \"{}\"\ndns_timeout = \"1s\"\n{extra}",
        dns.addr
    );
    let relay = Relay::start(&[backend.addr()], &text).await;
    Setup {
        dns,
        backend,
        relay,
        key,
    }
}

async fn setup_auth(dmarc_reject: bool) -> Setup {
    setup(
        &format!("[auth]\nenabled = true\ndmarc_reject = {dmarc_reject}"),
        "",
    )
    .await
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@edge.test>\r\n\r\nHello,\r\nthis is {subject}.\r\n"
    )
    .into_bytes()
}

/// `msg` with an ed25519 DKIM signature of signed.test, selector sel.
fn sign(key: Ed25519Key, msg: &[u8]) -> Vec<u8> {
    let sig = DkimSigner::from_key(key)
        .domain("signed.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Message-ID"])
        .sign(msg)
        .expect("sign");
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(msg);
    out
}

/// The first 8 characters of the `b=` tag of the DKIM-Signature in `msg`.
fn b_tag(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let unfolded: String = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let at = unfolded.find(";b=").expect("b= tag") + 3;
    unfolded[at..at + 8].to_owned()
}

/// Sends `data` from `mail_from` after EHLO `helo`; the final reply.
async fn send(relay: &Relay, helo: &str, mail_from: &str, data: &[u8]) -> common::Reply {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo(helo).await;
    let r = c.try_send_message(mail_from, &[RCPT], data).await;
    let _ = c.quit().await;
    r
}

/// The first header field of `data` (with its continuation lines) and the rest.
fn first_field(data: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    for _ in 0..64 {
        let eol = data[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("line end")
            + end
            + 2;
        end = eol;
        if !matches!(data.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&data[..end]).into_owned(),
        &data[end..],
    )
}

/// A stored message split into (Authentication-Results, Received, the rest).
fn split(data: &[u8]) -> (String, String, Vec<u8>) {
    let (ar, rest) = first_field(data);
    assert!(
        ar.starts_with("Authentication-Results: relay.test;\r\n"),
        "{}",
        String::from_utf8_lossy(data)
    );
    let (received, rest) = first_field(rest);
    (ar, received, rest.to_vec())
}

/// Sends one message and returns its Authentication-Results header and the
/// bytes after our Received (checked to be the client's bytes).
async fn results_of(s: &Setup, helo: &str, mail_from: &str, data: &[u8]) -> String {
    s.backend.clear_messages();
    let r = send(&s.relay, helo, mail_from, data).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.backend.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let (ar, received, rest) = split(&got[0].data);
    assert!(received.starts_with("Received: from "), "{received}");
    assert_eq!(rest, data, "the client's bytes stay byte for byte");
    ar
}

fn spf_lines(ar: &str) -> (String, String) {
    let line = |prop: &str| {
        ar.lines()
            .find(|l| l.contains(prop))
            .unwrap_or_else(|| panic!("{prop} in {ar}"))
            .trim()
            .trim_end_matches(';')
            .to_owned()
    };
    (line("smtp.mailfrom="), line("smtp.helo="))
}

#[tokio::test]
async fn spf_mail_from_and_helo_results() {
    let mut s = setup_auth(false).await;
    let cases = [
        ("helo-pass.test", "a@pass.test", "pass", "pass"),
        ("helo-fail.test", "a@fail.test", "fail", "fail"),
        ("helo-soft.test", "a@soft.test", "softfail", "softfail"),
        ("helo-none.test", "a@none.test", "none", "none"),
    ];
    for (helo, from, mf, h) in cases {
        let ar = results_of(&s, helo, from, &message(from, "spf")).await;
        let (mf_line, helo_line) = spf_lines(&ar);
        assert_eq!(mf_line, format!("spf={mf} smtp.mailfrom={from}"), "{ar}");
        assert_eq!(helo_line, format!("spf={h} smtp.helo={helo}"), "{ar}");
    }
    assert_eq!(
        s.relay
            .counter("breakwater_auth_results_total{method=\"spf\",result=\"softfail\"}")
            .await,
        1.0
    );
    s.relay.stop().await;
}

#[tokio::test]
async fn null_sender_is_checked_as_postmaster_at_helo() {
    let mut s = setup_auth(false).await;
    let ar = results_of(
        &s,
        "helo-pass.test",
        "",
        &message("mailer@pass.test", "dsn"),
    )
    .await;
    let (mf_line, helo_line) = spf_lines(&ar);
    assert_eq!(mf_line, "spf=pass smtp.mailfrom=postmaster@helo-pass.test");
    assert_eq!(helo_line, "spf=pass smtp.helo=helo-pass.test");
    s.relay.stop().await;
}

#[tokio::test]
async fn whole_header_is_exact_for_dkim_and_dmarc_pass() {
    let mut s = setup_auth(true).await;
    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let key = std::mem::replace(&mut s.key, key);
    let data = sign(key, &message("alice@signed.test", "signed"));
    let b = b_tag(&data);
    let ar = results_of(&s, "helo-none.test", "bounce@fail.test", &data).await;
    assert_eq!(
        ar,
        format!(
            "Authentication-Results: relay.test;\r\n\
             \tspf=fail smtp.mailfrom=bounce@fail.test;\r\n\
             \tspf=none smtp.helo=helo-none.test;\r\n\
             \tdkim=pass header.d=signed.test header.s=sel header.b={b};\r\n\
             \tdmarc=pass header.from=signed.test\r\n"
        )
    );
    // The same over BDAT.
    s.backend.clear_messages();
    let mut c = Client::connect(s.relay.smtp).await;
    c.ehlo("helo-none.test").await;
    let r = c.send_bdat("bounce@fail.test", &[RCPT], &data, 37).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.backend.wait_for(1, WAIT).await;
    let (ar_bdat, _, rest) = split(&got[0].data);
    assert_eq!(ar_bdat, ar);
    assert_eq!(rest, data);
    s.relay.stop().await;
}

#[tokio::test]
async fn dkim_fails_when_the_body_changed_after_signing() {
    let mut s = setup_auth(false).await;
    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let key = std::mem::replace(&mut s.key, key);
    let mut data = sign(key, &message("alice@signed.test", "altered"));
    let b = b_tag(&data);
    let at = data.len() - 3;
    data.splice(at..at, b" (changed)".iter().copied());
    let ar = results_of(&s, "helo-pass.test", "alice@pass.test", &data).await;
    assert!(
        ar.contains(&format!(
            "\tdkim=fail header.d=signed.test header.s=sel header.b={b};\r\n"
        )),
        "{ar}"
    );
    // signed.test publishes p=reject, SPF passes for pass.test (not aligned).
    assert!(
        ar.ends_with("\tdmarc=fail header.from=signed.test\r\n"),
        "{ar}"
    );
    s.relay.stop().await;
}

#[tokio::test]
async fn dmarc_reject_refuses_with_550_and_stores_nothing() {
    let mut s = setup_auth(true).await;
    let r = send(
        &s.relay,
        "helo-pass.test",
        "a@fail.test",
        &message("ceo@strict.test", "spoof"),
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().contains("5.7.1"), "{r:?}");
    // A quarantine policy is tagged, not refused, even with dmarc_reject.
    let ar = results_of(
        &s,
        "helo-pass.test",
        "a@soft.test",
        &message("x@pass.test", "quarantine"),
    )
    .await;
    assert!(
        ar.ends_with("\tdmarc=fail header.from=pass.test\r\n"),
        "{ar}"
    );
    assert_eq!(s.backend.count(), 1, "only the second message was stored");
    assert_eq!(
        s.relay
            .counter("breakwater_smtp_rejections_total{reason=\"dmarc\"}")
            .await,
        1.0
    );
    s.relay.stop().await;
}

#[tokio::test]
async fn dmarc_fail_without_dmarc_reject_is_accepted_and_tagged() {
    let mut s = setup_auth(false).await;
    let ar = results_of(
        &s,
        "helo-pass.test",
        "a@fail.test",
        &message("ceo@strict.test", "spoof"),
    )
    .await;
    assert!(
        ar.contains("\tspf=fail smtp.mailfrom=a@fail.test;\r\n"),
        "{ar}"
    );
    assert!(ar.contains("\tdkim=none;\r\n"), "{ar}");
    assert!(
        ar.ends_with("\tdmarc=fail header.from=strict.test\r\n"),
        "{ar}"
    );
    s.relay.stop().await;
}

#[tokio::test]
async fn silent_dns_gives_temperror_within_the_timeout() {
    let mut s = setup_auth(true).await;
    let data = message("a@slow.test", "slow");
    let mut c = Client::connect(s.relay.smtp).await;
    c.ehlo("helo-pass.test").await;
    c.cmd("MAIL FROM:<a@slow.test>", "250").await;
    c.cmd(&format!("RCPT TO:<{RCPT}>"), "250").await;
    c.cmd("DATA", "354").await;
    let mut body = common::dot_stuff(&data);
    body.extend_from_slice(b".\r\n");
    let started = Instant::now();
    c.send_raw(&body).await;
    let r = c.read_reply().await;
    let took = started.elapsed();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let _ = c.quit().await;
    let got = s.backend.wait_for(1, WAIT).await;
    let (ar, _, rest) = split(&got[0].data);
    assert_eq!(rest, data);
    assert_eq!(
        ar,
        "Authentication-Results: relay.test;\r\n\
         \tspf=temperror smtp.mailfrom=a@slow.test;\r\n\
         \tspf=pass smtp.helo=helo-pass.test;\r\n\
         \tdkim=none;\r\n\
         \tdmarc=temperror header.from=slow.test\r\n"
    );
    assert!(s.dns.queries() > 0);
    s.relay.stop().await;
}

#[tokio::test]
async fn forged_results_of_ours_are_removed_others_kept() {
    let mut s = setup_auth(false).await;
    let original = message("a@pass.test", "forged");
    let mut data = b"Authentication-Results: relay.test; spf=pass smtp.mailfrom=a@pass.test\r\n\
Authentication-Results: other.example;\r\n\tdkim=pass header.d=pass.test\r\n\
AUTHENTICATION-RESULTS: (ours) RELAY.TEST;\r\n\tdmarc=pass\r\n"
        .to_vec();
    data.extend_from_slice(&original);
    s.backend.clear_messages();
    let r = send(&s.relay, "helo-pass.test", "a@pass.test", &data).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.backend.wait_for(1, WAIT).await;
    let (ar, _, rest) = split(&got[0].data);
    assert!(ar.contains("spf=pass smtp.mailfrom=a@pass.test"), "{ar}");
    let mut kept =
        b"Authentication-Results: other.example;\r\n\tdkim=pass header.d=pass.test\r\n".to_vec();
    kept.extend_from_slice(&original);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&kept)
    );
    s.relay.stop().await;
}

#[tokio::test]
async fn disabled_auth_changes_nothing_and_asks_no_dns() {
    let mut s = setup("[auth]\nenabled = false", "").await;
    let mut data = b"Authentication-Results: relay.test; spf=pass\r\n".to_vec();
    data.extend_from_slice(&message("a@pass.test", "off"));
    let r = send(&s.relay, "helo-pass.test", "a@pass.test", &data).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.backend.wait_for(1, WAIT).await;
    let stored = &got[0];
    assert!(stored.data.starts_with(b"Received: from helo-pass.test"));
    assert_eq!(stored.after_trace(), &data[..], "byte for byte");
    assert_eq!(s.dns.queries(), 0, "no DNS when [auth] is off");
    s.relay.stop().await;
}

#[tokio::test]
async fn dnsbl_reject_refuses_at_the_first_command() {
    let mut s = setup(
        "[auth]\nenabled = false",
        "[[dnsbl]]\nzone = \"block.test\"\naction = \"reject\"\n\
         [[dnsbl]]\nzone = \"clean.test\"\naction = \"reject\"\n",
    )
    .await;
    s.dns.a("1.0.0.127.block.test", Ipv4Addr::new(127, 0, 0, 2));
    let mut c = Client::connect(s.relay.smtp).await;
    assert_eq!(c.greeting().code, 220);
    c.send("EHLO helo-pass.test").await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().contains("5.7.1"), "{r:?}");
    assert!(r.text().contains("block.test"), "{r:?}");
    assert!(c.is_closed().await);
    assert_eq!(
        s.relay
            .counter("breakwater_smtp_rejections_total{reason=\"dnsbl\"}")
            .await,
        1.0
    );
    // QUIT as the first command is still answered.
    let mut c = Client::connect(s.relay.smtp).await;
    c.quit().await;
    assert_eq!(s.backend.count(), 0);
    s.relay.stop().await;
}

#[tokio::test]
async fn dnsbl_tag_adds_a_header_and_accepts() {
    let mut s = setup(
        "[auth]\nenabled = true",
        "[[dnsbl]]\nzone = \"tag.test\"\naction = \"tag\"\n\
         [[dnsbl]]\nzone = \"clean.test\"\naction = \"reject\"\n",
    )
    .await;
    s.dns.a("1.0.0.127.tag.test", Ipv4Addr::new(127, 0, 0, 2));
    let data = message("a@pass.test", "tagged");
    let r = send(&s.relay, "helo-pass.test", "a@pass.test", &data).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.backend.wait_for(1, WAIT).await;
    let (ar, rest) = first_field(&got[0].data);
    assert!(
        ar.starts_with("Authentication-Results: relay.test;"),
        "{ar}"
    );
    let (tag, rest) = first_field(rest);
    assert_eq!(
        tag,
        "X-Breakwater-DNSBL: tag.test; client=127.0.0.1; answer=127.0.0.2\r\n"
    );
    let (received, rest) = first_field(rest);
    assert!(received.starts_with("Received: from "), "{received}");
    assert_eq!(rest, &data[..]);
    s.relay.stop().await;
}

#[tokio::test]
async fn config_errors_name_their_keys() {
    let text = "[relay]\ndomains = [\"example.com\"]\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:25\"\n\
        [auth]\nenabled = true\ndns_timeout = \"0s\"\nresolver = \"nameserver\"\n\
        [[dnsbl]]\nzone = \"bad zone\"\naction = \"reject\"\n";
    let err = breakwater::config::Config::parse(text)
        .unwrap_err()
        .to_string();
    for key in ["auth.dns_timeout", "auth.resolver", "dnsbl[0].zone"] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let bad_action = "[auth]\nenabled = true\n[[dnsbl]]\nzone = \"z.test\"\naction = \"drop\"\n";
    let err = breakwater::config::Config::parse(bad_action)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dnsbl[0].action"), "{err}");
    let unknown = "[auth]\nenable = true\n";
    let err = breakwater::config::Config::parse(unknown)
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth"), "{err}");
}

/// A DMARC "fail" built on an SPF check the DNS could not answer (SERVFAIL)
/// is no fail: never a 550 for it, even with dmarc_reject and p=reject.
#[tokio::test]
async fn a_dns_error_never_turns_into_a_dmarc_reject() {
    // SPF fails, and the DKIM key of the aligned signature cannot be fetched
    // (SERVFAIL): the signature might have passed, so DMARC is temperror.
    let mut s = setup_auth(true).await;
    s.dns.txt("_dmarc.keyless.test", "v=DMARC1; p=reject");
    s.dns.txt("keyless.test", "v=spf1 -all");
    s.dns.servfail("sel._domainkey.keyless.test");
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("ed25519 key");
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).expect("key");
    let msg = message("billing@keyless.test", "keyless");
    let sig = DkimSigner::from_key(key)
        .domain("keyless.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Message-ID"])
        .sign(&msg)
        .expect("sign");
    let mut signed = sig.to_header().into_bytes();
    signed.extend_from_slice(&msg);
    let ar = results_of(&s, "helo-pass.test", "billing@keyless.test", &signed).await;
    assert!(ar.contains("dkim=temperror"), "{ar}");
    assert!(
        ar.ends_with("\tdmarc=temperror header.from=keyless.test\r\n"),
        "{ar}"
    );

    s.dns.txt("_dmarc.flaky.test", "v=DMARC1; p=reject");
    s.dns.servfail("flaky.test");
    let ar = results_of(
        &s,
        "helo-pass.test",
        "orders@flaky.test",
        &message("orders@flaky.test", "flaky"),
    )
    .await;
    assert!(
        ar.contains("spf=temperror smtp.mailfrom=orders@flaky.test"),
        "{ar}"
    );
    assert!(
        ar.ends_with("\tdmarc=temperror header.from=flaky.test\r\n"),
        "{ar}"
    );
    s.relay.stop().await;
}
