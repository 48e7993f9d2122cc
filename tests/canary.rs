//! Canaries (`[canary]`): one synthetic message per backend and interval,
//! through that backend only, with metrics; given up after an interval when
//! the backend is down (no DSN, nothing piles up); out of the queue listing
//! unless asked for; held by quiet time unless `during_quiet_time`; and with
//! `[canary.imap]` found in a real IMAP mailbox (dovecot) and deleted.

mod common;
mod process;
use chrono::{SecondsFormat, TimeDelta, Utc};
use common::dovecot::Dovecot;
use common::*;
use process::Daemon;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

const HEADER: &str = "X-Breakwater-Canary";
const LAST: &str = "breakwater_canary_last_success_timestamp_seconds";
const DURATION: &str = "breakwater_canary_duration_seconds";
const E2E: &str = "breakwater_canary_e2e_seconds";

fn series(name: &str, backend: &str) -> String {
    format!("{name}{{backend=\"{backend}\"}}")
}

/// The canaries among `msgs`: (token, backend header).
fn canaries(msgs: &[Received]) -> Vec<(String, String)> {
    msgs.iter()
        .filter_map(|m| {
            Some((
                m.header(HEADER)?,
                m.header("X-Breakwater-Canary-Backend").unwrap_or_default(),
            ))
        })
        .collect()
}

/// Waits (bounded) until `f` holds for the relay's metrics page.
async fn wait_metrics(relay: &Relay, timeout: Duration, mut f: impl FnMut(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..10_000 {
        let (_, body) = relay.http("GET", "/metrics").await;
        if f(&body) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The canaries listed by `GET /api/queue?canaries=true`: (id, kind).
async fn queued_canaries(relay: &Relay) -> Vec<(String, String)> {
    let (status, body) = relay.http("GET", "/api/queue?canaries=true").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn default_listing_len(relay: &Relay) -> usize {
    let (status, body) = relay.http("GET", "/api/queue").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["messages"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_canary_per_backend_through_that_backend_and_metrics_move() {
    let mut b0 = Backend::start().await;
    let mut b1 = Backend::start().await;
    let mut relay = Relay::start(
        &[b0.addr(), b1.addr()],
        "[canary]\ninterval = \"2s\"\nto = \"canary@example.com\"\n",
    )
    .await;
    // Two rounds: each backend gets its own canaries, none of the other's.
    assert!(
        wait_until_async(Duration::from_secs(15), || {
            canaries(&b0.messages()).len() >= 2 && canaries(&b1.messages()).len() >= 2
        })
        .await,
        "b0 {:?} b1 {:?}",
        canaries(&b0.messages()),
        canaries(&b1.messages())
    );
    let (c0, c1) = (canaries(&b0.messages()), canaries(&b1.messages()));
    assert!(c0.iter().all(|(_, b)| b == "b0"), "{c0:?}");
    assert!(c1.iter().all(|(_, b)| b == "b1"), "{c1:?}");
    let tokens: BTreeSet<&String> = c0.iter().chain(&c1).map(|(t, _)| t).collect();
    assert_eq!(tokens.len(), c0.len() + c1.len(), "every token is unique");
    for m in b0.messages() {
        let token = m.header(HEADER).unwrap();
        assert_eq!(m.rcpts, ["canary@example.com"]);
        assert_eq!(m.mail_from, "breakwater-canary@relay.test");
        assert!(m.header("Subject").unwrap().contains(&token));
    }
    // Metrics: last success set, the histogram counts each acceptance.
    let first = relay.metric(&series(LAST, "b0")).await;
    assert!(first > 1e9, "a Unix time: {first}");
    let count = relay
        .metric(&format!("{DURATION}_count{{backend=\"b0\"}}"))
        .await;
    assert!(count >= 1.0, "{count}");
    assert!(
        wait_metrics(&relay, Duration::from_secs(10), |body| {
            metric_value(body, &format!("{DURATION}_count{{backend=\"b0\"}}")).unwrap_or(0.0)
                > count
                && metric_value(body, &series(LAST, "b0")).unwrap_or(0.0) > first
        })
        .await,
        "the next canary moves the metrics"
    );
    assert!(relay.counter(&series(LAST, "b1")).await > 1e9);
    // Canaries are not received mail, and do not make the queue deep.
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        0.0
    );
    assert_eq!(
        relay.metric("breakwater_messages_delivered_total").await,
        0.0
    );
    let (_, body) = relay.http("GET", "/metrics").await;
    assert!(!body.contains("backend=\"none\""), "{body}");
    relay.stop().await;
    b0.stop().await;
    b1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_canary_given_up_after_an_interval_no_dsn_no_pile_up() {
    let mut b0 = Backend::start().await;
    let mut relay = Relay::start(
        &[b0.addr()],
        "[canary]\ninterval = \"2s\"\nto = \"canary@example.com\"\n",
    )
    .await;
    assert!(
        wait_metrics(&relay, Duration::from_secs(10), |b| metric_value(
            b,
            &series(LAST, "b0")
        )
        .is_some())
        .await
    );
    b0.stop().await;
    assert!(
        wait_metric(
            &relay,
            "breakwater_backend_up{backend=\"b0\"}",
            0.0,
            Duration::from_secs(10)
        )
        .await,
        "the relay notices the outage"
    );
    let last = relay.metric(&series(LAST, "b0")).await;
    // For three intervals: never more than one canary queued, never a DSN,
    // nothing in the default listing or the queue depth; the canary is
    // replaced (given up, a new one queued) every interval.
    let mut seen = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(7);
    for _ in 0..1_000 {
        if Instant::now() >= end {
            break;
        }
        let queued = queued_canaries(&relay).await;
        assert!(
            queued.len() <= 1,
            "at most one canary outstanding: {queued:?}"
        );
        assert!(
            queued.iter().all(|(_, k)| k == "canary"),
            "no DSN: {queued:?}"
        );
        seen.extend(queued.into_iter().map(|(id, _)| id));
        assert_eq!(
            default_listing_len(&relay).await,
            0,
            "canaries are not listed by default"
        );
        assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.len() >= 2, "canaries given up and replaced: {seen:?}");
    assert_eq!(
        relay.metric(&series(LAST, "b0")).await,
        last,
        "no success while down"
    );
    assert_eq!(relay.metric("breakwater_messages_bounced_total").await, 0.0);
    assert_eq!(relay.metric("breakwater_messages_deleted_total").await, 0.0);
    // A given-up canary is gone for good: the backend back, it gets only
    // the current one (not the backlog), and success moves again.
    b0.clear_messages();
    b0.restart().await.unwrap();
    assert!(
        wait_metrics(&relay, Duration::from_secs(15), |b| {
            metric_value(b, &series(LAST, "b0")).unwrap_or(0.0) > last
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = canaries(&b0.messages());
    assert!(
        got.len() <= 2,
        "no backlog of canaries after the outage: {got:?}"
    );
    relay.stop().await;
    b0.stop().await;
}

fn window() -> String {
    let now = Utc::now();
    let fmt = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        "[[quiet_time]]\nname = \"maint\"\nfrom = \"{}\"\nuntil = \"{}\"\n",
        fmt(now - TimeDelta::seconds(60)),
        fmt(now + TimeDelta::seconds(3600))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_time_holds_canaries_unless_during_quiet_time() {
    let mut held = Backend::start().await;
    let mut through = Backend::start().await;
    let canary = |during: bool| {
        format!(
            "{}[canary]\ninterval = \"2s\"\nto = \"canary@example.com\"\nduring_quiet_time = {during}\n",
            window()
        )
    };
    let mut r_held = Relay::start(&[held.addr()], &canary(false)).await;
    let mut r_through = Relay::start(&[through.addr()], &canary(true)).await;
    assert!(
        wait_until_async(Duration::from_secs(10), || !canaries(&through.messages())
            .is_empty())
        .await,
        "during_quiet_time = true: canaries go through the window"
    );
    assert!(
        wait_metrics(&r_through, Duration::from_secs(5), |b| metric_value(
            b,
            &series(LAST, "b0")
        )
        .is_some_and(|t| t > 1e9))
        .await
    );
    // The other relay's canary waits in the journal: queued, not delivered.
    let mut queued = Vec::new();
    for _ in 0..50 {
        queued = queued_canaries(&r_held).await;
        if !queued.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        queued.len(),
        1,
        "one canary held in the journal: {queued:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(canaries(&held.messages()).is_empty(), "held by quiet time");
    assert_eq!(r_held.counter(&series(LAST, "b0")).await, 0.0);
    assert_eq!(r_held.metric("breakwater_queue_depth").await, 0.0);
    r_held.stop().await;
    r_through.stop().await;
    held.stop().await;
    through.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_end_to_end_found_measured_and_deleted() {
    if !Dovecot::installed() {
        eprintln!(
            "\n\n*** SKIPPED imap_end_to_end_found_measured_and_deleted: {} not found. \
             Install it (Debian: apt-get install dovecot-imapd); .ci/run does. ***\n\n",
            common::dovecot::DOVECOT
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imap_dir = tmp.path().join("imap");
    std::fs::create_dir(&imap_dir).unwrap();
    let mut dovecot = Dovecot::start(&imap_dir, "canary", "s3cret \"pw\"");
    let mut b0 = Backend::start().await;
    b0.deliver_to_maildir("canary@example.com", &dovecot.maildir);
    let extra = format!(
        "[canary]\ninterval = \"3s\"\nto = \"canary@example.com\"\n[canary.imap]\nhost = \"{}\"\nuser = \"canary\"\npassword_file = {:?}\ntls = \"none\"\n",
        dovecot.addr,
        dovecot.password_file.display().to_string()
    );
    let mut relay = Relay::start(&[b0.addr()], &extra).await;
    let e2e = format!("{E2E}_count{{backend=\"b0\"}}");
    let found = wait_metrics(&relay, Duration::from_secs(20), |b| {
        metric_value(b, &e2e).unwrap_or(0.0) >= 1.0
    })
    .await;
    let (_, body) = relay.http("GET", "/metrics").await;
    let measured = metric_value(&body, &e2e).unwrap_or(0.0);
    let sum = metric_value(&body, &format!("{E2E}_sum{{backend=\"b0\"}}")).unwrap_or(-1.0);
    relay.stop().await;
    assert!(found, "e2e measured; dovecot log:\n{}", dovecot.log());
    assert!(
        sum > 0.0 && sum < 20.0 * measured,
        "latency {sum} for {measured}"
    );
    // Each canary found was deleted: the first one is gone, and no more
    // remain than were delivered minus found.
    let delivered: Vec<String> = canaries(&b0.messages())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(!delivered.is_empty());
    let files = dovecot.messages();
    let left: HashMap<&String, usize> = delivered
        .iter()
        .map(|t| {
            (
                t,
                files
                    .iter()
                    .filter(|(_, text)| text.contains(t.as_str()))
                    .count(),
            )
        })
        .collect();
    assert_eq!(
        left[&delivered[0]], 0,
        "the first canary was deleted: {files:?}"
    );
    let remaining: usize = left.values().sum();
    assert!(
        remaining as f64 <= delivered.len() as f64 - measured,
        "delivered {delivered:?}, found {measured}, still there {files:?}"
    );
    assert!(dovecot.log().contains("expunged="), "{}", dovecot.log());
    dovecot.stop();
    b0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_turns_canaries_on_and_off() {
    let b0 = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path(), &[b0.addr()], "", "").await;
    let config = tmp.path().join("breakwater.toml");
    let plain = std::fs::read_to_string(&config).unwrap();
    let reloads = |d: &Daemon| d.log().matches("config reloaded").count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        canaries(&b0.messages()).is_empty(),
        "no [canary], no canaries"
    );

    std::fs::write(
        &config,
        format!("{plain}\n[canary]\ninterval = \"1s\"\nto = \"canary@example.com\"\n"),
    )
    .unwrap();
    d.hup();
    assert!(
        wait_until_async(Duration::from_secs(10), || canaries(&b0.messages()).len()
            >= 2)
        .await,
        "{}",
        d.log()
    );
    assert!(d.log().contains("canary every 1s"), "{}", d.log());
    let (_, body) = http(d.admin, "GET", "/metrics").await;
    assert!(metric_value(&body, &series(LAST, "b0")).is_some(), "{body}");

    std::fs::write(&config, &plain).unwrap();
    d.hup();
    assert!(wait_until_async(Duration::from_secs(5), || reloads(&d) >= 2).await);
    assert!(d.log().contains("canaries off"), "{}", d.log());
    tokio::time::sleep(Duration::from_millis(1500)).await; // one in flight may land
    b0.clear_messages();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        canaries(&b0.messages()).is_empty(),
        "canaries stop with [canary] removed"
    );
    let (_, body) = http(d.admin, "GET", "/metrics").await;
    assert!(
        !body.contains(LAST),
        "no series for canaries no longer configured"
    );
    d.term();
    assert!(d.wait_exit(Duration::from_secs(20)).await.is_some());
}
