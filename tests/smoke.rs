//! The shortest path through the relay: one message in, the same message out.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn one_message_end_to_end() {
    let backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message(
            "s@client.test",
            &["a@example.com"],
            b"Subject: hi\r\n\r\nhello\r\n",
        )
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].data.ends_with(b"Subject: hi\r\n\r\nhello\r\n"));
    assert!(got[0].data.starts_with(b"Received: from client.test"));
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    relay.stop().await;
}
