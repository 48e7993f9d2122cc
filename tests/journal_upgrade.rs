//! A journal written by the release before the journal split (one record per
//! message; `tests/fixtures/previous-release`) opens with this release,
//! is migrated into messages and delivery jobs, and everything in it is
//! delivered: the deferred recipients (and not the one delivered before), the
//! large message byte for byte, the held message once released, the DSN to
//! its sender's server. Nothing is left in the queue afterwards.

mod common;
use common::*;
use std::time::Duration;

const PARTIAL: &str = "0006619DD89B75CD";
const HELD: &str = "0006619DD89BD56C";

fn subject(m: &Received) -> String {
    m.header("Subject").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_release_journal_migrates_and_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/previous-release/journal.redb"
        ),
        dir.join("journal.redb"),
    )
    .unwrap();
    // The backend is down while the migrated states are read: the fixture's
    // retry times are long past, so a live backend would race the reads
    // (a delivered message is gone from /api/queue).
    let backend_addr = loopback(free_port());
    let dsn_server = Backend::start().await;
    let extra = format!("[bounce]\nrelay = \"{}\"\n", dsn_server.addr());
    let mut relay = Relay::start_in(&dir, &[backend_addr], &extra).await;

    // The held message stays held across the upgrade, and shows as one message.
    let (code, body) = relay.http("GET", &format!("/api/queue/{HELD}")).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["held"], true, "{v}");
    assert_eq!(v["recipients"][0]["address"], "defer3@example.com");
    // The partly delivered message keeps its delivered recipient's state.
    let (_, body) = relay.http("GET", &format!("/api/queue/{PARTIAL}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let states: Vec<(String, String)> = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&("ok2@example.com".into(), "delivered".into())),
        "{states:?}"
    );

    // The backend comes up. Retry times after the failed attempts may not
    // have come yet: a flush makes them due, as `breakwater queue flush` would.
    let backend = Backend::start_on(backend_addr).await.unwrap();
    let (code, body) = relay.http("POST", "/api/queue/flush").await;
    assert_eq!(code, 200, "{body}");
    let got = backend.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let partial = got
        .iter()
        .find(|m| subject(m) == "partial")
        .expect("partial");
    assert_eq!(partial.rcpts, vec!["defer1@example.com".to_owned()]);
    let large = got.iter().find(|m| subject(m) == "large").expect("large");
    assert_eq!(large.rcpts, vec!["defer2@example.com".to_owned()]);
    assert_eq!(large.data.len(), 29_865, "the large message byte for byte");
    let line = "line of a large message ".repeat(3) + "\r\n";
    assert!(
        large
            .after_trace()
            .ends_with(format!("{line}\r\n").as_bytes())
    );

    let dsn = dsn_server.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, vec!["carol@elsewhere.test".to_owned()]);
    assert!(dsn[0].data_str().contains("fail1@example.com"));

    let (code, body) = relay
        .http("POST", &format!("/api/queue/release/{HELD}"))
        .await;
    assert_eq!(code, 200, "{body}");
    let got = backend.wait_for(3, Duration::from_secs(20)).await;
    let held = got.iter().find(|m| subject(m) == "to hold").expect("held");
    assert_eq!(held.rcpts, vec!["defer3@example.com".to_owned()]);

    assert!(
        wait_metric(
            &relay,
            "breakwater_queue_depth",
            0.0,
            Duration::from_secs(10)
        )
        .await,
        "everything delivered"
    );
    let (_, body) = relay.http("GET", "/api/queue").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "{v}");
    relay.stop().await;

    // Opened again (nothing left to migrate): still empty, nothing sent twice.
    let mut relay = Relay::start_in(&dir, &[backend.addr()], &extra).await;
    assert_eq!(relay.metric("breakwater_queue_depth").await, 0.0);
    let (_, body) = relay.http("GET", "/api/messages").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(backend.count(), 3);
    assert_eq!(dsn_server.count(), 1);
    relay.stop().await;
}
