use super::*;
use chrono::TimeZone;
use std::time::Duration;

const H: u64 = 3_600_000;
const M: u64 = 60_000;

fn flow(extra: &str) -> config::Flow {
    let text = format!(
        "hostname = \"relay.test\"\n[relay]\ndomains=[\"example.com\"]\n[[backend]]\nname=\"b\"\naddress=\"127.0.0.1:1\"\n[[flow]]\nname = \"audit\"\n{extra}\n"
    );
    Config::parse(&text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .flow
        .remove(0)
}

fn rule(extra: &str) -> Rule {
    Rule::from_config(&flow(extra)).expect("valid flow")
}

fn problems(extra: &str) -> Vec<String> {
    let text = format!(
        "hostname = \"relay.test\"\n[relay]\ndomains=[\"example.com\"]\n[[backend]]\nname=\"b\"\naddress=\"127.0.0.1:1\"\n[[flow]]\nname = \"audit\"\n{extra}\n"
    );
    match Config::parse(&text) {
        Err(crate::config::Error::Invalid(ps)) => ps.into_iter().map(|p| p.key).collect(),
        Err(e) => vec![e.to_string()],
        Ok(_) => Vec::new(),
    }
}

/// A config with one flow: `audit`, from `*@audit.example.com`, 2 h of silence.
fn audit_config() -> Config {
    Config::parse(
        "hostname = \"relay.test\"\n[relay]\ndomains=[\"example.com\"]\n[[backend]]\nname=\"b\"\naddress=\"127.0.0.1:1\"\n[[flow]]\nname = \"audit\"\nfrom = \"*@audit.example.com\"\nmax_silence = \"2h\"\n",
    )
    .unwrap()
}

fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
    chrono_tz::Europe::Berlin
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("unambiguous local time")
        .timestamp_millis() as u64
}

#[test]
fn envelope_matchers_all_must_match() {
    let r = rule(
        "from = \"*@audit.example.com\"\nto = [\"soc@example.com\", \"*@ops.example.com\"]\nmax_silence = \"2h\"",
    );
    assert!(r.matches("siem@audit.example.com", &["soc@example.com"], b""));
    assert!(r.matches(
        "SIEM@Audit.Example.com",
        &["x@other.com", "a@ops.example.com"],
        b""
    ));
    assert!(
        !r.matches("siem@audit.example.com", &["x@other.com"], b""),
        "recipient"
    );
    assert!(
        !r.matches("x@example.com", &["soc@example.com"], b""),
        "sender"
    );
    assert!(!r.matches("", &["soc@example.com"], b""), "null sender");
}

#[test]
fn header_matches_unfold_decode_and_ignore_the_body() {
    let r = rule(
        "header = { name = \"Subject\", regex = \"^\\\\[AUDIT\\\\] daily\" }\nmax_silence = \"1d\"",
    );
    assert!(r.needs_headers());
    let msg = b"From: a@b\r\nsubject: [AUDIT]\r\n daily report\r\n\r\nSubject: [AUDIT] daily\r\n";
    assert!(r.matches("a@b", &[], msg), "folded, case-insensitive name");
    assert!(
        !r.matches(
            "a@b",
            &[],
            b"Subject: hello\r\n\r\nSubject: [AUDIT] daily\r\n"
        ),
        "body ignored"
    );
    let encoded = b"Subject: =?UTF-8?B?W0FVRElUXSBkYWlseSByw6lzdW3DqQ==?=\r\n\r\n";
    assert!(r.matches("a@b", &[], encoded), "RFC 2047 decoded");
    // Odd inputs: no CRLF at all, bare LF, cut short, no colon, binary.
    for odd in [
        &b"Subject: [AUDIT] daily"[..],
        b"Subject: [AUDIT] daily\n\n",
        b"X: y\r\nSubj",
        b"no colon here\r\n\r\n",
        b"\xff\xfe: \x00\r\n",
        b"",
    ] {
        let _ = r.matches("a@b", &[], odd);
    }
    assert!(r.matches("a@b", &[], b"Subject: [AUDIT] daily"));
}

#[test]
fn header_values_lists_every_occurrence() {
    let h = b"A: 1\r\nB: x\r\nA:\t2\r\n\r\nA: body\r\n";
    let v: Vec<String> = header_values(h, "a").collect();
    assert_eq!(v, ["1", "2"]);
}

#[test]
fn silence_counts_from_the_last_message_or_from_watching() {
    let r = rule("from = \"*@audit.example.com\"\nmax_silence = \"2h\"");
    let mut s = State::new(0);
    assert_eq!(
        verdict(&r, &s, 2 * H),
        None,
        "exactly max_silence is allowed"
    );
    assert_eq!(
        verdict(&r, &s, 2 * H + 1),
        Some(Shortfall::Silent {
            since_ms: 0,
            ever_seen: false
        })
    );
    s.saw(&r, 2 * H + 1);
    assert_eq!(verdict(&r, &s, 3 * H), None);
    assert_eq!(
        verdict(&r, &s, 4 * H + 2),
        Some(Shortfall::Silent {
            since_ms: 2 * H + 1,
            ever_seen: true
        })
    );
}

#[test]
fn business_hours_flows_stay_quiet_out_of_hours() {
    // Mon-Fri 08:00-18:00 Berlin; last message Friday 17:30.
    let r = rule(
        "from = \"*@audit.example.com\"\nmax_silence = \"2h\"\nactive = [{ days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\"], start = \"08:00\", end = \"18:00\", timezone = \"Europe/Berlin\" }]",
    );
    let mut s = State::new(berlin(2026, 11, 27, 9, 0));
    s.saw(&r, berlin(2026, 11, 27, 17, 30)); // Friday
    for t in [
        berlin(2026, 11, 27, 23, 0),
        berlin(2026, 11, 28, 12, 0), // Saturday
        berlin(2026, 11, 29, 23, 59),
        berlin(2026, 11, 30, 9, 29), // Monday: 30 min Friday + 89 min
    ] {
        assert_eq!(verdict(&r, &s, t), None, "quiet at {t}");
        assert!(t < berlin(2026, 11, 30, 8, 0) || r.is_active(t));
    }
    assert!(!r.is_active(berlin(2026, 11, 28, 12, 0)));
    assert!(
        verdict(&r, &s, berlin(2026, 11, 30, 9, 31)).is_some(),
        "Monday 09:31: 2h01 of business time"
    );
    assert_eq!(
        r.active_ms(berlin(2026, 11, 27, 17, 30), berlin(2026, 11, 30, 9, 30)),
        2 * H
    );
}

#[test]
fn active_time_across_a_dst_change() {
    // Sunday 29 March 2026 Berlin springs forward at 02:00; a 00:00-06:00 window is 5 h long.
    let r = rule(
        "from = \"*@a.example\"\nmax_silence = \"1d\"\nactive = [{ start = \"00:00\", end = \"06:00\", timezone = \"Europe/Berlin\" }]",
    );
    assert_eq!(
        r.active_ms(berlin(2026, 3, 28, 12, 0), berlin(2026, 3, 29, 12, 0)),
        5 * H
    );
    assert_eq!(
        r.active_ms(berlin(2026, 3, 29, 12, 0), berlin(2026, 3, 30, 12, 0)),
        6 * H
    );
}

#[test]
fn fewer_than_min_count_in_the_period() {
    let r = rule("from = \"*@shop.example\"\nmax_silence = \"1h\"\nmin_count = 3\nperiod = \"1h\"");
    let mut s = State::new(0);
    s.saw(&r, 10 * M);
    s.saw(&r, 20 * M);
    assert_eq!(
        verdict(&r, &s, 50 * M),
        None,
        "the first period is not over"
    );
    assert_eq!(verdict(&r, &s, 61 * M), Some(Shortfall::TooFew { seen: 2 }));
    s.saw(&r, 62 * M);
    assert_eq!(verdict(&r, &s, 65 * M), None, "3 within the last hour");
    assert_eq!(s.recent.len(), 3, "only min_count arrivals are kept");
    assert_eq!(
        verdict(&r, &s, 81 * M),
        Some(Shortfall::TooFew { seen: 1 }),
        "10 and 20 min fell out"
    );
}

#[test]
fn each_episode_is_reported_once_and_resumption_once() {
    let config = audit_config();
    let (clock, handle) = crate::delivery::Clock::controlled();
    let registry = Registry::new();
    let flows = Flows::new(&config, &[], &registry, clock);
    let t0 = clock.now_ms();
    assert!(flows.evaluate(t0).is_empty());
    let changes = flows.evaluate(t0 + 2 * H + 1);
    assert!(matches!(&changes[..], [Change::WentSilent { rule, .. }] if rule == "audit"));
    assert!(flows.evaluate(t0 + 3 * H).is_empty(), "no second alert");
    handle.advance(Duration::from_millis(3 * H));
    flows.observe("x@audit.example.com", &["a@example.com"], b"");
    let changes = flows.evaluate(clock.now_ms());
    assert!(matches!(&changes[..], [Change::Resumed { rule, .. }] if rule == "audit"));
    assert!(flows.evaluate(clock.now_ms()).is_empty());
    // What a restart reads back from the journal restores the same view.
    let saved = flows.take_dirty().expect("dirty");
    assert!(flows.take_dirty().is_none());
    let again = Flows::new(&config, &saved, &Registry::new(), clock);
    assert!(
        again.evaluate(clock.now_ms()).is_empty(),
        "a restart is not a silence"
    );
    let later = clock.now_ms() + 2 * H + 1;
    assert_eq!(again.evaluate(later).len(), 1, "nor does it hide one");
}

#[test]
fn a_silence_alerted_before_a_restart_is_not_alerted_again() {
    let config = audit_config();
    let (clock, _) = crate::delivery::Clock::controlled();
    let flows = Flows::new(&config, &[], &Registry::new(), clock);
    let t = clock.now_ms() + 3 * H;
    assert_eq!(flows.evaluate(t).len(), 1);
    let saved = flows.take_dirty().unwrap();
    let again = Flows::new(&config, &saved, &Registry::new(), clock);
    assert!(again.evaluate(t + H).is_empty());
}

#[test]
fn flow_config_problems_name_their_keys() {
    assert_eq!(problems("max_silence = \"2h\""), ["flow[0].from"]);
    assert_eq!(
        problems("from = \"nobody\"\nto = [\"a@*.example\"]\nmax_silence = \"0s\""),
        ["flow[0].from[0]", "flow[0].to[0]", "flow[0].max_silence"]
    );
    assert_eq!(
        problems("header = { name = \"Sub ject\", regex = \"(\" }\nmax_silence = \"1h\""),
        ["flow[0].header.name", "flow[0].header.regex"]
    );
    assert_eq!(
        problems("from = \"*@a.example\"\nmax_silence = \"1h\"\nperiod = \"1h\""),
        ["flow[0].period"]
    );
    assert_eq!(
        problems("from = \"*@a.example\"\nmax_silence = \"1h\"\nmin_count = 0"),
        ["flow[0].min_count"]
    );
    assert_eq!(
        problems(
            "from = \"*@a.example\"\nmax_silence = \"1h\"\nactive = [{ start = \"25:00\", end = \"18:00\", timezone = \"Mars/Olympus\" }]"
        ),
        ["flow[0].active[0].timezone", "flow[0].active[0].start"]
    );
    assert_eq!(
        problems(
            "from = \"*@a.example\"\nmax_silence = \"1h\"\n[[flow]]\nname = \"audit\"\nfrom = \"*@b.example\"\nmax_silence = \"1h\""
        ),
        ["flow[1].name"]
    );
    let unknown = problems("from = \"*@a.example\"\nmax_silence = \"1h\"\nsilence = \"2h\"");
    assert!(
        unknown[0].contains("flow") && unknown[0].contains("silence"),
        "{unknown:?}"
    );
}

#[test]
fn removed_flows_lose_their_labels() {
    let with = |names: &[&str]| {
        let mut t = String::from(
            "hostname = \"relay.test\"\n[relay]\ndomains=[\"example.com\"]\n[[backend]]\nname=\"b\"\naddress=\"127.0.0.1:1\"\n",
        );
        for n in names {
            t.push_str(&format!(
                "[[flow]]\nname = \"{n}\"\nfrom = \"*@a.example\"\nmax_silence = \"1h\"\n"
            ));
        }
        Config::parse(&t).unwrap()
    };
    let registry = Registry::new();
    let flows = Flows::new(
        &with(&["one", "two"]),
        &[],
        &registry,
        crate::delivery::Clock::new(),
    );
    let labels = |r: &Registry| {
        let mut v: Vec<String> = r
            .gather()
            .iter()
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_label()[0].value().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(labels(&registry), ["one", "two"]);
    flows.reconfigure(&with(&["two"]), 0);
    assert_eq!(labels(&registry), ["two"]);
}

#[test]
fn a_clock_set_back_does_not_postpone_a_silence() {
    let config = audit_config();
    let (clock, handle) = crate::delivery::Clock::controlled();
    let flows = Flows::new(&config, &[], &Registry::new(), clock);
    let t0 = clock.now_ms();
    // A message while the clock ran 5 h fast; then the clock is corrected.
    handle.advance(Duration::from_millis(5 * H));
    flows.observe("x@audit.example.com", &["a@example.com"], b"");
    assert!(flows.evaluate(t0).is_empty());
    assert!(flows.take_dirty().is_some(), "the corrected state is saved");
    // Silence counts from the correction: 2 h later, not 7.
    let changes = flows.evaluate(t0 + 2 * H + 1);
    assert!(matches!(&changes[..], [Change::WentSilent { rule, .. }] if rule == "audit"));
}
