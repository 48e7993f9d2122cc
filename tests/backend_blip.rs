//! A backend that fails a delivery but comes back before it counts as down
//! (fewer than `health.fall` failures): the next successful probe makes the
//! deferred mail due at once, instead of leaving it to its retry time (1 h here).

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_mail_goes_when_a_failing_backend_answers_again() {
    let addr = loopback(free_port()); // nothing listens yet
    let extra = "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n\
                 [health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nfall = 100\n";
    let mut relay = Relay::start(&[addr], extra).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: blip\r\n\r\nx\r\n",
        )
        .await;
    assert!(reply.matches("250"), "{reply}");
    c.quit().await;
    let deferred = "breakwater_delivery_attempts_total{backend=\"none\",result=\"deferred\"}";
    let mut failed = false;
    for _ in 0..500 {
        let (_, body) = relay.http("GET", "/metrics").await;
        failed = metric_value(&body, deferred).unwrap_or(0.0) >= 1.0;
        if failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "no failed attempt within 10 s");
    // With fall = 100 the backend never counts as down: the gate stays open.
    assert_eq!(
        relay.metric("breakwater_backend_up{backend=\"b0\"}").await,
        1.0
    );

    let backend = Backend::start_on(addr).await.expect("backend on its port");
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].data_str().contains("Subject: blip"));
    assert!(
        wait_metric(
            &relay,
            "breakwater_queue_depth",
            0.0,
            Duration::from_secs(10)
        )
        .await
    );
    relay.stop().await;
}
