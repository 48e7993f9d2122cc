//! SIGHUP (and `POST /api/reload`) re-read the config file: a backend's new
//! address takes the mail with nothing lost in flight; a quiet window added by
//! a reload holds delivery and removing it resumes; a broken file changes
//! nothing, is counted, and the relay keeps serving.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

const LOOK: Duration = Duration::from_millis(1500);

fn config_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("breakwater.toml")
}

fn edit(dir: &std::path::Path, f: impl FnOnce(String) -> String) {
    let path = config_path(dir);
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, f(text)).expect("write config");
}

async fn metric(d: &Daemon, name: &str) -> f64 {
    let (_, body) = http(d.admin, "GET", "/metrics").await;
    metric_value(&body, name).unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_address_takes_the_mail_and_nothing_in_flight_is_lost() {
    let old = Backend::start().await;
    let new = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), &[old.addr()], "", "").await;
    send_each(d.smtp, &["a@example.com"; 2]).await;
    assert_eq!(old.wait_for(2, Duration::from_secs(10)).await.len(), 2);

    // A delivery in flight (slow DATA at the old address) while the reload
    // moves the backend.
    old.set_data_delay(Duration::from_millis(1500));
    send_each(d.smtp, &["a@example.com"; 1]).await;
    assert!(
        wait_until_async(Duration::from_secs(5), || old
            .commands()
            .iter()
            .filter(|c| c.to_ascii_uppercase().starts_with("MAIL FROM"))
            .count()
            >= 3)
        .await
    );
    edit(tmp.path(), |t| {
        t.replace(&old.addr().to_string(), &new.addr().to_string())
    });
    d.hup();
    send_each(d.smtp, &["a@example.com"; 3]).await;
    assert_eq!(new.wait_for(3, Duration::from_secs(15)).await.len(), 3);
    assert_eq!(
        old.wait_for(3, Duration::from_secs(10)).await.len(),
        3,
        "the delivery in flight was lost"
    );
    assert!(
        !wait_until_async(LOOK, || new.count() > 3 || old.count() > 3).await,
        "something was delivered twice"
    );
    assert!(d.is_running());
    assert!(d.log().contains("backend b0 moved"), "{}", d.log());
    let (_, body) = http(d.admin, "GET", "/api/backends").await;
    assert!(body.contains(&new.addr().to_string()), "{body}");
    assert!(
        metric(
            &d,
            "breakwater_config_last_reload_success_timestamp_seconds"
        )
        .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_added_by_reload_holds_and_removing_it_resumes() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), &[backend.addr()], "", "").await;
    edit(tmp.path(), |t| {
        t + "\n[[quiet_time]]\nname = \"emergency\"\nfrom = \"2020-01-01T00:00:00Z\"\nuntil = \"2099-01-01T00:00:00Z\"\n"
    });
    d.hup();
    assert!(
        wait_until_async(Duration::from_secs(5), || d
            .log()
            .contains("config reloaded"))
        .await,
        "{}",
        d.log()
    );
    send_each(d.smtp, &["a@example.com"; 2]).await;
    assert!(
        !wait_until_async(LOOK, || backend.count() > 0).await,
        "delivered inside the window"
    );
    assert_eq!(metric(&d, "breakwater_quiet_time_active").await, 1.0);

    edit(tmp.path(), |t| {
        t.split("\n[[quiet_time]]").next().unwrap().to_owned()
    });
    d.hup();
    assert_eq!(backend.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    assert_eq!(metric(&d, "breakwater_quiet_time_active").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_is_counted() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), &[backend.addr()], "", "").await;
    let good = std::fs::read_to_string(config_path(tmp.path())).unwrap();
    let since = metric(
        &d,
        "breakwater_config_last_reload_success_timestamp_seconds",
    )
    .await;
    // A value of the wrong type, and an unknown backend in a window.
    edit(tmp.path(), |t| {
        t.replace("[delivery]\n", "[delivery]\nconcurrency = \"many\"\n")
    });
    d.hup();
    assert!(
        wait_until_async(Duration::from_secs(5), || d
            .log()
            .contains("config reload refused"))
        .await,
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("delivery.concurrency"),
        "the key path is named:\n{}",
        d.log()
    );
    assert_eq!(
        metric(&d, "breakwater_config_reload_failures_total").await,
        1.0
    );
    assert!(d.is_running());
    send_each(d.smtp, &["a@example.com"; 1]).await;
    assert_eq!(backend.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    std::fs::write(
        config_path(tmp.path()),
        good.clone() + "\n[[quiet_time]]\nname = \"w\"\nbackends = [\"nosuch\"]\nfrom = \"2020-01-01T00:00:00Z\"\nuntil = \"2099-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    let (code, body) = http(d.admin, "POST", "/api/reload").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("quiet_time[0].backends[0]"), "{body}");
    assert_eq!(
        metric(&d, "breakwater_config_reload_failures_total").await,
        2.0
    );
    send_each(d.smtp, &["a@example.com"; 1]).await;
    assert_eq!(
        backend.wait_for(2, Duration::from_secs(10)).await.len(),
        2,
        "the refused window was applied"
    );
    assert_eq!(
        metric(
            &d,
            "breakwater_config_last_reload_success_timestamp_seconds"
        )
        .await,
        since
    );

    // And a good file through the API works.
    std::fs::write(config_path(tmp.path()), good).unwrap();
    let (code, body) = http(d.admin, "POST", "/api/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("reloaded"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_window_by_reload_sends_the_deferred_backlog_now_and_a_plain_reload_does_not() {
    let backend = Backend::start().await;
    backend.set_rcpt_reply("a@", "451 4.2.1 try later");
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n";
    let mut d = Daemon::start(tmp.path(), &[backend.addr()], "", extra).await;
    send_each(d.smtp, &["a@example.com"; 1]).await;
    assert!(
        wait_until_async(Duration::from_secs(10), || backend
            .commands()
            .iter()
            .any(|c| c.contains("RCPT")))
        .await
    );
    backend.clear_rcpt_replies();
    // A reload that changes nothing keeps the retry schedule (an hour away).
    d.hup();
    assert!(
        wait_until_async(Duration::from_secs(5), || d
            .log()
            .contains("config reloaded"))
        .await
    );
    assert!(
        !wait_until_async(LOOK, || backend.count() > 0).await,
        "a plain reload flushed the queue"
    );
    // A window comes and goes by reload: its end sends the backlog at once.
    let plain = std::fs::read_to_string(config_path(tmp.path())).unwrap();
    std::fs::write(
        config_path(tmp.path()),
        plain.clone() + "\n[[quiet_time]]\nname = \"w\"\nfrom = \"2020-01-01T00:00:00Z\"\nuntil = \"2099-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    d.hup();
    assert!(wait_until_async(Duration::from_secs(5), || metric_now(&d) == 1.0).await);
    std::fs::write(config_path(tmp.path()), plain).unwrap();
    d.hup();
    assert_eq!(
        backend.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "the backlog waited for its retry time"
    );
}

fn metric_now(d: &Daemon) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(d.admin) else {
        return -1.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", d.admin);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    metric_value(&out, "breakwater_quiet_time_active").unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_s_mail_goes_to_the_others() {
    let mut first = Backend::start().await;
    let second = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), &[first.addr(), second.addr()], "", "").await;
    // b0 (preferred) stops answering: mail waits for it... then b0 is removed.
    first.stop().await;
    edit(tmp.path(), |t| {
        let start = t.find("[[backend]]\nname = \"b0\"").expect("b0 section");
        let end = start
            + t[start..]
                .find("[[backend]]\nname = \"b1\"")
                .expect("b1 section");
        format!("{}{}", &t[..start], &t[end..])
    });
    d.hup();
    assert!(
        wait_until_async(Duration::from_secs(5), || d
            .log()
            .contains("backend b0 removed"))
        .await,
        "{}",
        d.log()
    );
    send_each(d.smtp, &["a@example.com"; 3]).await;
    assert_eq!(second.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    let (_, body) = http(d.admin, "GET", "/metrics").await;
    assert!(
        !body.contains("backend=\"b0\""),
        "b0 still exported:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_flows_and_keeps_what_a_kept_flow_has_seen() {
    let backend = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let flow = |name: &str| {
        format!(
            "[[flow]]\nname = \"{name}\"\nfrom = \"*@audit.example.com\"\nmax_silence = \"2h\"\n"
        )
    };
    let mut d = Daemon::start(tmp.path(), &[backend.addr()], "", &flow("audit")).await;
    let mut c = Client::connect(d.smtp).await;
    c.ehlo("siem.test").await;
    let r = c
        .send_message(
            "siem@audit.example.com",
            &["soc@example.com"],
            b"Subject: a\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    c.quit().await;
    let audit = "breakwater_flow_messages_total{flow=\"audit\"}";
    assert!(wait_metric_at(d.admin, audit, 1.0, Duration::from_secs(5)).await);

    edit(tmp.path(), |t| format!("{t}{}", flow("orders")));
    d.hup();
    let orders = "breakwater_flow_silent{flow=\"orders\"}";
    assert!(
        wait_metric_at(d.admin, orders, 0.0, Duration::from_secs(10)).await,
        "the new flow is watched"
    );
    assert_eq!(
        metric(&d, audit).await,
        1.0,
        "the kept flow keeps its count"
    );

    edit(tmp.path(), |t| t.replace(&flow("audit"), ""));
    d.hup();
    let mut removed = false;
    for _ in 0..100 {
        let (_, body) = http(d.admin, "GET", "/metrics").await;
        if !body.contains("flow=\"audit\"") && body.contains("flow=\"orders\"") {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "a removed flow's labels go");
}
