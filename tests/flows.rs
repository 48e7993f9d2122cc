//! `[[flow]]` and `[alert]` on a live relay, with its clock moved forward by
//! hand (no test waits hours, or even seconds, for a silence): a flow that goes
//! silent turns its gauge to 1 and sends exactly one alert mail, through
//! `alert.relay` while the backend is down; a matching message turns it back
//! and sends one recovery mail; a restart keeps the last-seen time and neither
//! hides nor invents a silence; the webhook is retried until it answers 2xx.

mod common;
use breakwater::delivery::Clock;
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SILENT: &str = "breakwater_flow_silent{flow=\"audit\"}";
const SEEN: &str = "breakwater_flow_last_seen_timestamp_seconds{flow=\"audit\"}";
const COUNT: &str = "breakwater_flow_messages_total{flow=\"audit\"}";
const WAIT: Duration = Duration::from_secs(15);

fn extra(sink: SocketAddr, more: &str) -> String {
    format!(
        "[[flow]]\nname = \"audit\"\nfrom = \"*@audit.example.com\"\nmax_silence = \"2h\"\n\
         [alert]\nto = [\"oncall@example.net\"]\nrelay = \"{sink}\"\n{more}"
    )
}

async fn send_audit(relay: &Relay, from: &str) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("siem.audit.example.com").await;
    let reply = c
        .send_message(
            from,
            &["soc@example.com"],
            b"Subject: [AUDIT] login failures\r\n\r\n3 failures\r\n",
        )
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    c.quit().await;
}

/// Starts a relay on `clock` and waits until it runs (its flows are watched
/// from then on, so the test's clock moves only after).
async fn start(dir: &std::path::Path, text: &str, clock: Clock) -> Relay {
    let relay = Relay::start_on_clock(dir, text, clock).await;
    let (status, _) = relay.http("GET", "/healthz").await;
    assert_eq!(status, 200);
    relay
}

fn alert_header(m: &Received) -> String {
    m.header("X-Breakwater-Alert").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_flow_alerts_once_through_the_alert_relay_with_the_backend_down_and_once_when_it_resumes()
 {
    let sink = Backend::start().await;
    let dead_backend = loopback(free_port());
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), &[dead_backend], &extra(sink.addr(), ""));
    let (clock, time) = Clock::controlled();
    let mut relay = start(tmp.path(), &text, clock).await;

    assert_eq!(relay.metric(SILENT).await, 0.0);
    assert_eq!(relay.metric(SEEN).await, 0.0, "never seen");
    // Mail of other senders is not the flow.
    send_audit(&relay, "someone@elsewhere.example").await;
    assert_eq!(relay.metric(COUNT).await, 0.0);

    time.advance(Duration::from_secs(2 * 3600 + 1));
    assert!(
        wait_metric(&relay, SILENT, 1.0, WAIT).await,
        "silent after 2h"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let alert = &got[0];
    assert_eq!(alert_header(alert), "flow_silent audit firing");
    assert_eq!(alert.rcpts, ["oncall@example.net"]);
    let subject = alert.header("Subject").unwrap();
    assert!(
        subject.contains("FIRING") && subject.contains("audit"),
        "{subject}"
    );
    let body = alert.data_str();
    assert!(body.contains("What to check"), "{body}");
    assert!(
        body.contains("*@audit.example.com"),
        "says what the flow is: {body}"
    );

    // `breakwater status` says so too (for sites without Prometheus).
    let admin = format!("http://{}", relay.admin);
    let run = cli(&["status", "--admin", &admin], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("audit "))
        .unwrap_or_default();
    assert!(
        line.contains("SILENT") && line.contains("never"),
        "{}",
        run.stdout
    );
    let json = cli(&["status", "--admin", &admin, "--json"], &[])
        .await
        .json();
    assert_eq!(json["flows"][0]["name"], "audit");
    assert_eq!(json["flows"][0]["silent"], true);
    assert_eq!(json["flows"][0]["last_seen"], serde_json::Value::Null);

    // More time, more evaluations: still one alert.
    time.advance(Duration::from_secs(3600));
    send_audit(&relay, "someone@elsewhere.example").await; // a turn's worth of real time
    assert_eq!(relay.metric(SILENT).await, 1.0);

    send_audit(&relay, "siem@audit.example.com").await;
    assert!(wait_metric(&relay, SILENT, 0.0, WAIT).await, "resumed");
    assert_eq!(relay.metric(COUNT).await, 1.0);
    let seen = relay.metric(SEEN).await;
    assert!(seen > 0.0);
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "exactly one alert and one recovery");
    let json = cli(&["status", "--admin", &admin, "--json"], &[])
        .await
        .json();
    assert_eq!(json["flows"][0]["silent"], false);
    assert_eq!(json["flows"][0]["messages"], 1);
    assert_eq!(alert_header(&got[1]), "flow_silent audit resolved");

    // A restart keeps last-seen: no silence invented, none hidden.
    relay.stop().await;
    // The new process's clock reads what the old one did (3 h 1 s ahead).
    let (clock, time) = Clock::controlled();
    time.advance(Duration::from_secs(3 * 3600 + 1));
    let relay = start(tmp.path(), &text, clock).await;
    assert_eq!(
        relay.metric(SEEN).await,
        seen,
        "last-seen survives the restart"
    );
    assert_eq!(relay.metric(COUNT).await, 1.0);
    send_audit(&relay, "someone@elsewhere.example").await;
    assert_eq!(
        relay.metric(SILENT).await,
        0.0,
        "a restart is not a silence"
    );
    time.advance(Duration::from_secs(2 * 3600 + 1));
    assert!(
        wait_metric(&relay, SILENT, 1.0, WAIT).await,
        "nor does it hide one"
    );
    let got = sink.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    assert_eq!(alert_header(&got[2]), "flow_silent audit firing");
    // The backend never existed: the alerts did not need it.
    assert!(
        sink.messages()
            .iter()
            .all(|m| !m.data_str().contains("3 failures"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_before_a_restart_is_not_sent_again() {
    let sink = Backend::start().await;
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), &[backend.addr()], &extra(sink.addr(), ""));
    let (clock, time) = Clock::controlled();
    let mut relay = start(tmp.path(), &text, clock).await;
    time.advance(Duration::from_secs(3 * 3600));
    assert!(wait_metric(&relay, SILENT, 1.0, WAIT).await);
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    relay.stop().await;

    let (clock, time) = Clock::controlled();
    time.advance(Duration::from_secs(3 * 3600));
    let relay = start(tmp.path(), &text, clock).await;
    assert!(wait_metric(&relay, SILENT, 1.0, WAIT).await, "still silent");
    // A message through the backend proves a few monitor turns went by.
    send_audit(&relay, "other@elsewhere.example").await;
    assert_eq!(backend.wait_for(1, WAIT).await.len(), 1);
    send_audit(&relay, "other@elsewhere.example").await;
    assert_eq!(backend.wait_for(2, WAIT).await.len(), 2);
    assert_eq!(
        sink.count(),
        1,
        "the silence was announced once, before the restart"
    );
}

/// The backend is down, the journal is full (`journal.max_bytes`) and every
/// client gets `452`, so the audit flow goes silent: that alert is exactly
/// the one that must get out, so `journal.max_bytes` does not refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_still_lets_the_silence_alert_out() {
    let sink = Backend::start().await;
    let dead_backend = loopback(free_port());
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), &[dead_backend], &extra(sink.addr(), "")).replacen(
        "[journal]\n",
        "[journal]\nmax_bytes = 20000\n",
        1,
    );
    let (clock, time) = Clock::controlled();
    let relay = start(tmp.path(), &text, clock).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let mut body = b"Subject: filler\r\n\r\n".to_vec();
    body.extend(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n".repeat(64));
    // 4 KiB messages until one is refused, then tiny ones: the room left
    // is smaller than an alert mail.
    let tiny = b"Subject: tiny\r\n\r\nx\r\n".to_vec();
    for m in [&body, &tiny] {
        let mut full = false;
        for _ in 0..200 {
            let reply = c
                .try_send_message("s@client.test", &["a@example.com"], m)
                .await;
            if reply.code != 250 {
                assert!(reply.matches("452 4.3.1"), "{reply}");
                full = true;
                break;
            }
        }
        assert!(full, "the journal of 20000 bytes never filled up");
    }
    c.quit().await;

    time.advance(Duration::from_secs(2 * 3600 + 1));
    assert!(wait_metric(&relay, SILENT, 1.0, WAIT).await);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "the alert got out of a full journal");
    assert_eq!(alert_header(&got[0]), "flow_silent audit firing");
    // Clients still get 452 (at MAIL while the alert is still in the
    // journal, past max_bytes; at the end of DATA once it is delivered): the
    // alert's room is not theirs.
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .try_send_message("s@client.test", &["a@example.com"], &body)
        .await;
    assert!(reply.matches("452 4.3.1"), "{reply}");
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_hours_flow_stays_quiet_out_of_hours() {
    let sink = Backend::start().await;
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // Active only in a one-off window that ended a day ago: never active now.
    let ended_from = (chrono::Utc::now() - chrono::TimeDelta::days(2)).to_rfc3339();
    let ended_until = (chrono::Utc::now() - chrono::TimeDelta::days(1)).to_rfc3339();
    let flows = format!(
        "[[flow]]\nname = \"audit\"\nfrom = \"*@audit.example.com\"\nmax_silence = \"2h\"\n\
         active = [{{ days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\"], start = \"08:00\", end = \"18:00\", timezone = \"Europe/Berlin\" }}]\n\
         [[flow]]\nname = \"past\"\nfrom = \"*@past.example.com\"\nmax_silence = \"1h\"\n\
         active = [{{ from = \"{ended_from}\", until = \"{ended_until}\" }}]\n\
         [alert]\nto = [\"oncall@example.net\"]\nrelay = \"{}\"\n",
        sink.addr()
    );
    let text = config_text(tmp.path(), &[backend.addr()], &flows);
    // The relay's clock starts at the coming Saturday 00:00 in Berlin.
    let (clock, time) = Clock::controlled();
    time.advance(until_next_saturday_berlin());
    let relay = start(tmp.path(), &text, clock).await;
    // The whole weekend, in 8 h steps: no business hours, no silence.
    for _ in 0..6 {
        time.advance(Duration::from_secs(8 * 3600));
        send_audit(&relay, "other@elsewhere.example").await; // lets the monitor turn
        assert_eq!(relay.metric(SILENT).await, 0.0, "quiet over the weekend");
    }
    // Monday 08:00 + 2 h of business time, and one minute more.
    time.advance(Duration::from_secs(8 * 3600 + 2 * 3600 + 60));
    assert!(
        wait_metric(&relay, SILENT, 1.0, WAIT).await,
        "silent Monday 10:01"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(alert_header(&got[0]), "flow_silent audit firing");
    let past = "breakwater_flow_silent{flow=\"past\"}";
    assert_eq!(
        relay.metric(past).await,
        0.0,
        "out of its window, never silent"
    );
}

/// From now to the coming Saturday 00:00 Europe/Berlin.
fn until_next_saturday_berlin() -> Duration {
    use chrono::{Datelike, TimeZone};
    let tz = chrono_tz::Europe::Berlin;
    let now = chrono::Utc::now().with_timezone(&tz);
    let days = (7 + 5 - now.weekday().num_days_from_monday() as i64) % 7;
    let days = if days == 0 { 7 } else { days };
    let date = now.date_naive() + chrono::TimeDelta::days(days);
    let midnight = tz
        .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap();
    (midnight.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap()
}

/// A one-connection-at-a-time HTTP server on loopback recording POST bodies;
/// answers 500 to the first `fail` requests, then 200.
async fn webhook_sink(fail: usize) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body (bounded).
            for _ in 0..100 {
                let Ok(k) = s.read(&mut chunk).await else {
                    break;
                };
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            n += 1;
            let status = if n <= fail { "500 Oops" } else { "200 OK" };
            if n > fail {
                let text = String::from_utf8_lossy(&buf).to_string();
                g.lock().unwrap().push(
                    text.split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_owned())
                        .unwrap_or_default(),
                );
            }
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_the_alert_as_json_and_is_retried() {
    let sink = Backend::start().await;
    let (hook, posts) = webhook_sink(1).await;
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let more = format!("webhook = \"http://{hook}/alerts\"\n");
    let text = config_text(tmp.path(), &[backend.addr()], &extra(sink.addr(), &more));
    let (clock, time) = Clock::controlled();
    let relay = start(tmp.path(), &text, clock).await;
    time.advance(Duration::from_secs(2 * 3600 + 1));
    assert!(wait_metric(&relay, SILENT, 1.0, WAIT).await);
    // First answer 500, retried after a second of relay time.
    let ok = wait_until_async(WAIT, || !posts.lock().unwrap().is_empty()).await;
    assert!(ok, "the webhook was retried after its 500");
    let body: serde_json::Value = serde_json::from_str(&posts.lock().unwrap()[0]).unwrap();
    assert_eq!(body["kind"], "flow_silent");
    assert_eq!(body["name"], "audit");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["relay"], "relay.test");
    assert!(body["summary"].as_str().unwrap().contains("audit"));
    // The resolution comes after the alert it resolves, once each.
    send_audit(&relay, "siem@audit.example.com").await;
    let ok = wait_until_async(WAIT, || posts.lock().unwrap().len() >= 2).await;
    assert!(ok, "the resolution was posted");
    send_audit(&relay, "other@elsewhere.example").await; // a few more turns
    let posts = posts.lock().unwrap().clone();
    let status: Vec<String> = posts
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(status, ["firing", "resolved"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_too_long_and_an_old_queue_alert_without_prometheus() {
    let sink = Backend::start().await;
    let mut backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let more = "backend_down = \"5s\"\nqueue_age = \"1h\"\n";
    let text = config_text(
        tmp.path(),
        &[backend.addr()],
        &extra(sink.addr(), more).replace(
            "[[flow]]\nname = \"audit\"\nfrom = \"*@audit.example.com\"\nmax_silence = \"2h\"\n",
            "",
        ),
    );
    let (clock, time) = Clock::controlled();
    let relay = start(tmp.path(), &text, clock).await;
    assert!(wait_metric(&relay, "breakwater_backend_up{backend=\"b0\"}", 1.0, WAIT).await);
    backend.stop().await;
    assert!(wait_metric(&relay, "breakwater_backend_up{backend=\"b0\"}", 0.0, WAIT).await);
    send_audit(&relay, "someone@elsewhere.example").await; // queued while it is down
    time.advance(Duration::from_secs(3601));
    let got = sink.wait_for(2, WAIT).await;
    let kinds: Vec<String> = got.iter().map(alert_header).collect();
    assert!(
        kinds.contains(&"backend_down b0 firing".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"queue_age queue firing".to_string()),
        "{kinds:?}"
    );
    backend.restart().await.unwrap();
    let got = sink.wait_for(4, Duration::from_secs(30)).await;
    let kinds: Vec<String> = got.iter().map(alert_header).collect();
    assert!(
        kinds.contains(&"backend_down b0 resolved".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"queue_age queue resolved".to_string()),
        "{kinds:?}"
    );
    assert_eq!(got.len(), 4, "{kinds:?}");
}
