//! Proves `journal.min_free_bytes`: below it new mail is refused at MAIL with
//! `452 4.3.1` (before the client sends a byte of the message), `/readyz` says
//! why, and delivery of what is queued goes on.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn with_min_free(text: String, min: u64) -> String {
    text.replace("[relay]", &format!("min_free_bytes = {min}\n[relay]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_free_space_refuses_at_mail_and_keeps_delivering() {
    let tmp = tempfile::tempdir().unwrap();
    let mut backend = Backend::start().await;
    let addr = backend.addr();
    backend.stop().await;

    // Queue two messages while there is room (and no backend).
    let text = config_text(tmp.path(), &[addr], "");
    let mut relay = Relay::start_with_text(tmp.path(), &with_min_free(text.clone(), 0)).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..2 {
        let msg = format!("Subject: queued {i}\r\n\r\nbody\r\n");
        let r = c
            .send_message("s@client.test", &["a@example.com"], msg.as_bytes())
            .await;
        assert!(r.matches("250 2.0.0"), "{r}");
    }
    c.quit().await;
    relay.stop().await;

    // Restart needing more free space than any disk has.
    let text = with_min_free(text, u64::MAX / 4);
    let mut relay = Relay::start_with_text(tmp.path(), &text).await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "452 4.3.1").await;
    c.cmd("MAIL FROM:<s@client.test> SIZE=100", "452 4.3.1")
        .await;
    let (status, why) = relay.http("GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(why.contains("journal.min_free_bytes"), "{why}");
    assert!(
        relay
            .metric("breakwater_smtp_rejections_total{reason=\"storage\"}")
            .await
            >= 2.0
    );

    // The queued mail still goes out.
    backend.restart().await.unwrap();
    let got = backend.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert!(wait_metric(&relay, "breakwater_queue_depth", 0.0, WAIT).await);
    c.cmd("NOOP", "250").await;
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
