//! Gauges are exact at scrape time: during an outage with nothing else
//! happening the oldest age grows with the clock; the state gauges add up to
//! the depth; after the drain everything is 0; after a restart the depth
//! equals the journal. The exposition parses (HELP and TYPE on every family,
//! and `promtool check metrics` where installed) and the delivery-duration
//! histogram counts every delivery.

mod common;
use common::*;
use std::time::Duration;

fn value(body: &str, name: &str) -> f64 {
    metric_value(body, name).unwrap_or_else(|| panic!("{name} missing in\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_age_grows_during_a_quiet_outage_and_depth_survives_restart() {
    let mut backend = Backend::start().await;
    backend.stop().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Retries far apart: nothing happens in the dispatcher while we watch.
    let extra = "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n";
    let mut relay = Relay::start_in(dir.path(), &[backend.addr()], extra).await;
    send_each(relay.smtp, &["a@example.com"; 3]).await;

    let (_, first) = relay.http("GET", "/metrics").await;
    assert_eq!(value(&first, "breakwater_queue_depth"), 3.0);
    let age0 = value(&first, "breakwater_queue_oldest_age_seconds");
    // Nothing else happens; only the wall clock moves.
    let mut later = 0.0;
    let grew = wait_until_async(Duration::from_secs(10), || {
        let body = scrape_blocking(relay.admin);
        later = metric_value(&body, "breakwater_queue_oldest_age_seconds").unwrap_or(0.0);
        later >= age0 + 2.0
    })
    .await;
    assert!(grew, "oldest age stuck at {later} (was {age0})");
    let (_, body) = relay.http("GET", "/metrics").await;
    let states: f64 = ["due", "deferred", "held", "in_flight"]
        .iter()
        .map(|s| {
            value(
                &body,
                &format!("breakwater_queue_messages{{state=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(states, 3.0, "states must add up to the depth:\n{body}");

    relay.stop().await;
    let relay = Relay::start_in(dir.path(), &[backend.addr()], extra).await;
    assert_eq!(
        relay.metric("breakwater_queue_depth").await,
        3.0,
        "depth after restart"
    );
    assert!(relay.metric("breakwater_queue_oldest_age_seconds").await >= later);

    backend.restart().await.expect("backend back");
    backend.wait_for(3, Duration::from_secs(15)).await;
    assert!(
        wait_metric(
            &relay,
            "breakwater_queue_depth",
            0.0,
            Duration::from_secs(10)
        )
        .await
    );
    let (_, body) = relay.http("GET", "/metrics").await;
    assert_eq!(value(&body, "breakwater_queue_oldest_age_seconds"), 0.0);
    assert_eq!(
        value(&body, "breakwater_delivery_duration_seconds_count"),
        value(&body, "breakwater_messages_delivered_total"),
        "the histogram counts every delivery"
    );
    assert_eq!(
        value(&body, "breakwater_delivery_duration_seconds_count"),
        3.0
    );
}

/// A blocking scrape (for use inside a polling closure).
fn scrape_blocking(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_is_valid_prometheus_text() {
    let backend = Backend::start().await;
    let relay = Relay::start(&[backend.addr()], "").await;
    send_each(relay.smtp, &["a@example.com"]).await;
    backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        wait_metric(
            &relay,
            "breakwater_messages_delivered_total",
            1.0,
            Duration::from_secs(10)
        )
        .await
    );
    let (_, body) = relay.http("GET", "/metrics").await;

    // Every family has HELP and TYPE, and every sample belongs to one.
    let mut help = std::collections::HashSet::new();
    let mut types = std::collections::HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            types.insert(w.next().unwrap().to_owned(), w.next().unwrap().to_owned());
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                help.contains(family) && types.contains_key(family),
                "{name} has no HELP/TYPE"
            );
        }
    }
    for (name, kind) in [
        ("breakwater_queue_depth", "gauge"),
        ("breakwater_queue_oldest_age_seconds", "gauge"),
        ("breakwater_queue_messages", "gauge"),
        ("breakwater_delivery_duration_seconds", "histogram"),
        ("breakwater_config_reload_failures_total", "counter"),
        (
            "breakwater_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("breakwater_build_info", "gauge"),
        ("breakwater_messages_delivered_total", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert!(
        body.contains("breakwater_delivery_duration_seconds_bucket{le=\"432000\"} 1"),
        "{body}"
    );
    assert!(body.contains(&format!(
        "breakwater_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    // A real Prometheus parser, where installed (CI installs Debian's prometheus).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(_) => eprintln!(
            "skipped promtool check metrics: promtool not installed (apt-get install prometheus)"
        ),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // promtool exits 1 for lint findings too; parse errors say "error while linting".
            assert!(!text.contains("error while linting"), "promtool: {text}");
            assert!(
                out.status.success() || !text.contains("error"),
                "promtool: {text}"
            );
        }
    }
}
