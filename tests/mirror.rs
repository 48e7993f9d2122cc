//! `[[mirror]]`: every message's copy for an independent standby is its own
//! job, journaled with the message, delivered and retried on its own. A dead
//! standby never holds up the backends (its depth grows, and it gets every
//! copy when it returns); a dead backend never holds up the standby; a
//! `kill -9` with both down loses nothing on either side.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 30;

fn mirror_section(addr: std::net::SocketAddr, filter: &str) -> String {
    format!(
        "[[mirror]]\nname = \"standby\"\naddress = \"{addr}\"\nconnect_timeout = \"1s\"\ncommand_timeout = \"5s\"\n{filter}"
    )
}

fn subjects(msgs: &[Received]) -> HashMap<String, usize> {
    count_by_header(msgs, "Subject")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_standby_never_holds_up_the_backends_and_gets_every_copy_later() {
    let backend = Backend::start().await;
    let standby_addr = loopback(free_port());
    let relay = Relay::start(&[backend.addr()], &mirror_section(standby_addr, "")).await;
    let rcpts: Vec<String> = (0..N).map(|i| format!("u{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send_each(relay.smtp, &refs).await;

    // The backends get everything while the standby is down.
    let got = backend.wait_for(N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), N);
    assert!(
        wait_metric(
            &relay,
            "breakwater_messages_delivered_total",
            N as f64,
            Duration::from_secs(10)
        )
        .await
    );
    let depth = "breakwater_mirror_queue_depth{mirror=\"standby\"}";
    assert_eq!(
        relay.metric(depth).await,
        N as f64,
        "copies wait for the standby"
    );
    assert!(
        wait_metric(
            &relay,
            "breakwater_mirror_up{mirror=\"standby\"}",
            0.0,
            Duration::from_secs(10)
        )
        .await
    );
    // Delivered as far as the backends go: the queue is empty and young; the
    // standby's backlog has its own gauge.
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    assert_eq!(
        relay.metric("breakwater_queue_oldest_age_seconds").await,
        0.0
    );
    // The copies are in the message's job list.
    let (_, body) = relay.http("GET", "/api/queue?state=delivered").await;
    assert!(body.contains("mirror:standby"), "{body}");

    // The standby returns: it gets every copy, the original bytes.
    let standby = Backend::start_on(standby_addr).await.expect("standby");
    let copies = standby.wait_for(N, Duration::from_secs(30)).await;
    assert_eq!(copies.len(), N);
    let by_subject: HashMap<String, &Received> = got
        .iter()
        .map(|m| (m.header("Subject").unwrap(), m))
        .collect();
    for c in &copies {
        let original = by_subject[&c.header("Subject").unwrap()];
        assert_eq!(
            c.data, original.data,
            "the copy is the message byte for byte"
        );
        assert_eq!(c.rcpts, original.rcpts);
    }
    assert!(subjects(&copies).values().all(|&n| n == 1));
    assert!(wait_metric(&relay, depth, 0.0, Duration::from_secs(10)).await);
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    assert_eq!(
        relay
            .counter("breakwater_mirror_deliveries_total{mirror=\"standby\",result=\"delivered\"}")
            .await,
        N as f64
    );
    // No DSN, no second delivery to the backends.
    assert_eq!(backend.count(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_gets_copies_while_the_backend_is_down_or_in_quiet_time() {
    let standby = Backend::start().await;
    let backend_addr = loopback(free_port());
    let quiet = "[[quiet_time]]\nname = \"all-day\"\nfrom = \"2000-01-01T00:00:00Z\"\nuntil = \"2100-01-01T00:00:00Z\"\n";
    let filter = "recipients = [\"*@example.com\"]\n";
    let extra = format!(
        "{}{quiet}[relay]\ndomains = [\"example.com\", \"other.test\"]\n",
        mirror_section(standby.addr(), filter)
    );
    let relay = Relay::start(&[backend_addr], &extra).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..N {
        let data = format!("Subject: q{i}\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message(
                "s@client.test",
                &["a@example.com", "b@other.test"],
                data.as_bytes(),
            )
            .await;
        assert!(reply.matches("250 "), "{reply}");
    }
    c.quit().await;
    // The copies go although the backend is down and in a quiet window,
    // only to the recipients the mirror's filter takes.
    let copies = standby.wait_for(N, Duration::from_secs(30)).await;
    assert_eq!(copies.len(), N);
    assert!(
        copies
            .iter()
            .all(|m| m.rcpts == vec!["a@example.com".to_owned()])
    );
    assert_eq!(
        relay.metric("breakwater_queue_depth").await,
        N as f64,
        "the primary jobs wait"
    );
    assert_eq!(relay.metric("breakwater_quiet_time_active").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_with_both_down_loses_nothing_on_either_side() {
    let tmp = tempfile::tempdir().unwrap();
    let backend_addr = loopback(free_port());
    let standby_addr = loopback(free_port());
    let extra = mirror_section(standby_addr, "");
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", &extra).await;
    let rcpts: Vec<String> = (0..N).map(|i| format!("k{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send_each(relay.smtp, &refs).await;
    relay.kill9();

    let backend = Backend::start_on(backend_addr).await.expect("backend");
    let standby = Backend::start_on(standby_addr).await.expect("standby");
    let mut relay = Daemon::start(tmp.path(), &[backend_addr], "", &extra).await;
    let got = backend.wait_for(N, Duration::from_secs(30)).await;
    let copies = standby.wait_for(N, Duration::from_secs(30)).await;
    assert_eq!(subjects(&got).len(), N);
    assert_eq!(subjects(&copies).len(), N);
    // Killed again once everything is recorded as done: after the restart the
    // journal holds nothing, so nothing can be sent twice.
    let depth = "breakwater_mirror_queue_depth{mirror=\"standby\"}";
    for name in ["breakwater_queue_depth", depth] {
        assert!(
            wait_metric_at(relay.admin, name, 0.0, Duration::from_secs(10)).await,
            "{name} reaches 0"
        );
    }
    relay.kill9();
    let relay = Daemon::start(tmp.path(), &[backend_addr], "", &extra).await;
    let (code, body) = http(relay.admin, "GET", "/api/messages").await;
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(0), "{page}");
    assert_eq!(backend.count(), N);
    assert_eq!(standby.count(), N);
    drop(relay);
}
