//! Every `breakwater queue` / `quiet` / `status` verb through the real binary
//! against a running relay (the binary too): list, show with typed last
//! replies, flush before the retry time, delete for good, hold one message
//! while the rest flows, release, ad-hoc quiet windows across a crash, and the
//! exit codes (1 unknown id or usage, 2 no daemon).

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

/// Longer than the test config's health interval: long enough to see a wrong delivery.
const LOOK: Duration = Duration::from_millis(1500);

fn admin(d: &Daemon) -> String {
    format!("http://{}", d.admin)
}

async fn bw(d: &Daemon, args: &[&str]) -> Run {
    let url = admin(d);
    let mut all = args.to_vec();
    all.extend(["--admin", &url]);
    cli(&all, &[]).await
}

fn ids_in(list: &serde_json::Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_flush_delete_and_exit_codes() {
    let backend = Backend::start().await;
    backend.set_rcpt_reply("busy", "451 4.2.1 mailbox busy, try later");
    let tmp = tempfile::tempdir().expect("tempdir");
    // One retry step of an hour: a deferred message stays deferred unless flushed.
    let d = Daemon::start(
        tmp.path(),
        &[backend.addr()],
        "",
        "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n",
    )
    .await;
    let ids = send_each(d.smtp, &["busy1@example.com", "busy2@example.com"]).await;
    let (a, b) = (&ids[0], &ids[1]);

    // Both deferred with the backend's reply, typed.
    let mut shown = serde_json::Value::Null;
    let typed = wait_until_async(Duration::from_secs(10), || {
        let r = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["queue", "show", a, "--json", "--admin", &admin(&d)])
            .output()
            .expect("run show");
        shown = serde_json::from_slice(&r.stdout).unwrap_or_default();
        shown["recipients"][0]["state"] == "deferred"
    })
    .await;
    assert!(typed, "not deferred: {shown}");
    let rcpt = &shown["recipients"][0];
    assert_eq!(rcpt["address"], "busy1@example.com");
    assert_eq!(rcpt["attempts"], 1);
    assert_eq!(
        rcpt["last_reply"],
        serde_json::json!({"code": 451, "enhanced": "4.2.1", "text": "mailbox busy, try later"})
    );
    assert!(rcpt["next_attempt"].is_string(), "{rcpt}");
    assert_eq!(shown["from"], "s@client.test");
    assert_eq!(shown["held"], false);
    let attempts = shown["attempts"].as_array().expect("attempt history");
    assert_eq!(attempts.len(), 1, "{shown}");
    assert_eq!(attempts[0]["backend"], "b0");
    assert_eq!(attempts[0]["deferred"], 1);
    assert_eq!(attempts[0]["reply"]["code"], 451);

    let table = bw(&d, &["queue", "show", a]).await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains("deferred") && table.stdout.contains("451 4.2.1 mailbox busy"),
        "{}",
        table.stdout
    );

    // list: both, oldest first, in JSON and as a table; filters.
    let list = bw(&d, &["queue", "list", "--json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    let json = list.json();
    assert_eq!(ids_in(&json), vec![a.clone(), b.clone()]);
    assert!(json["next"].is_null());
    let m = &json["messages"][0];
    for key in ["id", "from", "arrived", "size", "held", "recipients"] {
        assert!(!m[key].is_null(), "{key} missing in {m}");
    }
    let table = bw(&d, &["queue", "list"]).await;
    assert!(
        table.stdout.contains(a.as_str()) && table.stdout.contains(b.as_str()),
        "{}",
        table.stdout
    );
    let deferred = bw(
        &d,
        &[
            "queue",
            "list",
            "--state",
            "deferred",
            "--domain",
            "example.com",
            "--json",
        ],
    )
    .await;
    assert_eq!(ids_in(&deferred.json()).len(), 2);
    let other = bw(&d, &["queue", "list", "--domain", "other.test", "--json"]).await;
    assert!(ids_in(&other.json()).is_empty());
    let paged = bw(&d, &["queue", "list", "--limit", "1", "--json"])
        .await
        .json();
    assert_eq!(ids_in(&paged), vec![a.clone()]);
    assert!(paged["next"].is_string(), "a cursor to the rest: {paged}");
    let older = bw(&d, &["queue", "list", "--older-than", "1h", "--json"]).await;
    assert!(ids_in(&older.json()).is_empty(), "nothing is an hour old");

    // flush ID: delivered now, an hour before its retry time.
    backend.clear_rcpt_replies();
    let flush = bw(&d, &["queue", "flush", a]).await;
    assert_eq!(flush.code, 0, "{flush:?}");
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["busy1@example.com".to_string()]);

    // delete ID: gone for good, logged with the reason, counted.
    let del = bw(&d, &["queue", "delete", b, "--reason", "customer asked"]).await;
    assert_eq!(del.code, 0, "{del:?}");
    let gone = bw(&d, &["queue", "show", b]).await;
    assert_eq!(gone.code, 1, "deleted message still shown: {gone:?}");
    assert!(gone.stderr.contains("not in the queue"), "{}", gone.stderr);
    assert!(
        wait_until_async(Duration::from_secs(5), || d
            .log()
            .contains("deleted by admin"))
        .await
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("deleted by admin"))
        .unwrap();
    assert!(
        line.contains(b.as_str()) && line.contains("customer asked"),
        "{line}"
    );
    let flushed = bw(&d, &["queue", "flush"]).await;
    assert_eq!(flushed.code, 0);
    assert!(
        !wait_until_async(LOOK, || backend.count() != 1).await,
        "a deleted message was delivered"
    );
    let (_, metrics) = http(d.admin, "GET", "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "breakwater_messages_deleted_total"),
        Some(1.0)
    );
    assert_eq!(metric_value(&metrics, "breakwater_queue_depth"), Some(0.0));

    // Exit codes: unknown id 1, malformed id 1, usage 1, no daemon 2.
    assert_eq!(bw(&d, &["queue", "show", "00000000000000AB"]).await.code, 1);
    let bad = bw(&d, &["queue", "delete", "not-an-id"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("not a queue id"), "{}", bad.stderr);
    assert_eq!(
        cli(&["queue"], &[]).await.code,
        1,
        "usage error must exit 1"
    );
    assert_eq!(cli(&["queue", "list", "--bogus"], &[]).await.code, 1);
    assert_eq!(cli(&["--help"], &[]).await.code, 0);
    let closed = format!("http://{}", loopback(free_port()));
    let down = cli(&["queue", "list", "--admin", &closed], &[]).await;
    assert_eq!(down.code, 2, "{down:?}");
    assert!(
        down.stderr.contains("cannot reach the daemon"),
        "{}",
        down.stderr
    );
    let status = bw(&d, &["status"]).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stdout.contains("b0") && status.stdout.contains("up"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_one_while_the_rest_flows_then_release() {
    let mut backend = Backend::start().await;
    backend.stop().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), &[backend.addr()], "", "").await;
    let ids = send_each(d.smtp, &["a@example.com", "b@example.com", "c@example.com"]).await;
    let hold = bw(&d, &["queue", "hold", &ids[1]]).await;
    assert_eq!(hold.code, 0, "{hold:?}");
    let list = bw(&d, &["queue", "list", "--state", "held", "--json"])
        .await
        .json();
    assert_eq!(ids_in(&list), vec![ids[1].clone()]);

    backend.restart().await.expect("backend back");
    let got = backend.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2);
    assert!(
        !wait_until_async(LOOK, || backend.count() > 2).await,
        "the held message was delivered"
    );
    assert!(
        got.iter()
            .all(|m| m.rcpts != vec!["b@example.com".to_string()])
    );

    let release = bw(&d, &["queue", "release", &ids[1]]).await;
    assert_eq!(release.code, 0, "{release:?}");
    let got = backend.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(bw(&d, &["queue", "hold", "00000000000000AB"]).await.code, 1);

    // The whole queue: held (mail still accepted), then released.
    assert_eq!(bw(&d, &["queue", "hold"]).await.code, 0);
    send_each(d.smtp, &["d@example.com"]).await;
    assert!(
        !wait_until_async(LOOK, || backend.count() > 3).await,
        "delivered while the queue is held"
    );
    let status = bw(&d, &["status"]).await;
    assert!(status.stdout.contains("HELD"), "{}", status.stdout);
    assert_eq!(bw(&d, &["queue", "release"]).await.code, 0);
    assert_eq!(backend.wait_for(4, Duration::from_secs(10)).await.len(), 4);
    let backends = bw(&d, &["status", "--json"]).await.json();
    assert_eq!(backends["backends"][0]["last_probe_ok"], true, "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_window_from_the_cli_survives_a_crash_and_stop_releases() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), &[backend.addr()], "", "").await;
    let start = bw(&d, &["quiet", "start", "db-upgrade", "--for", "2h"]).await;
    assert_eq!(start.code, 0, "{start:?}");
    assert!(start.stdout.contains("db-upgrade"), "{}", start.stdout);
    send_each(d.smtp, &["a@example.com"]).await;
    assert!(
        !wait_until_async(LOOK, || backend.count() > 0).await,
        "delivered during a quiet window"
    );
    let (_, metrics) = http(d.admin, "GET", "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "breakwater_quiet_time_active"),
        Some(1.0)
    );
    let list = bw(&d, &["quiet", "list", "--json"]).await.json();
    let w = &list["windows"][0];
    assert_eq!(w["name"], "db-upgrade");
    assert_eq!(w["source"], "adhoc");
    assert_eq!(w["active"], true);

    // A crash keeps the window (it is in the journal).
    d.kill9();
    let d = Daemon::start(tmp.path(), &[backend.addr()], "", "").await;
    assert!(
        !wait_until_async(LOOK, || backend.count() > 0).await,
        "the window was lost in the crash"
    );
    let table = bw(&d, &["quiet", "list"]).await;
    assert!(
        table.stdout.contains("db-upgrade") && table.stdout.contains("YES"),
        "{}",
        table.stdout
    );

    let stop = bw(&d, &["quiet", "stop", "db-upgrade"]).await;
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(backend.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let (_, metrics) = http(d.admin, "GET", "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "breakwater_quiet_time_active"),
        Some(0.0)
    );

    // Refusals: unknown window, unknown backend, a time in the past, usage.
    assert_eq!(bw(&d, &["quiet", "stop", "db-upgrade"]).await.code, 1);
    let nosuch = bw(
        &d,
        &["quiet", "start", "x", "--for", "1h", "--backend", "nosuch"],
    )
    .await;
    assert_eq!(nosuch.code, 1);
    assert!(
        nosuch.stderr.contains("no backend named"),
        "{}",
        nosuch.stderr
    );
    let past = bw(
        &d,
        &["quiet", "start", "x", "--until", "2001-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(past.code, 1, "{past:?}");
    assert_eq!(
        cli(&["quiet", "start", "x"], &[]).await.code,
        1,
        "--for or --until is required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_window_scoped_to_one_backend_sends_mail_to_the_other() {
    let primary = Backend::start().await;
    let secondary = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), &[primary.addr(), secondary.addr()], "", "").await;
    let start = bw(
        &d,
        &[
            "quiet",
            "start",
            "primary-patch",
            "--for",
            "1h",
            "--backend",
            "b0",
        ],
    )
    .await;
    assert_eq!(start.code, 0, "{start:?}");
    send_each(d.smtp, &["a@example.com", "b@example.com"]).await;
    assert_eq!(
        secondary.wait_for(2, Duration::from_secs(10)).await.len(),
        2
    );
    assert_eq!(primary.count(), 0, "the primary got mail during its window");
    let status = bw(&d, &["status", "--json"]).await.json();
    let b0 = &status["backends"][0];
    assert_eq!(b0["name"], "b0");
    assert_eq!(b0["windows"], serde_json::json!(["primary-patch"]));
    assert_eq!(b0["open"], false);
}
