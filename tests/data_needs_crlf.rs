//! Proves a `DATA` command ending in a bare LF is refused (`500 5.5.2`), so
//! `DATA\n.\r\n` can never end a message: only CR LF . CR LF does, counting
//! the CR LF of the DATA line (found by fuzzing the session). Other commands
//! may still end in a bare LF, as Postfix allows by default.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_with_a_bare_lf_never_starts_a_message() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    c.send_raw(b"EHLO client.test\n").await;
    assert!(c.read_reply().await.matches("250"));
    c.send_raw(b"MAIL FROM:<s@client.test>\nRCPT TO:<a@example.com>\n")
        .await;
    assert!(c.read_reply().await.matches("250"));
    assert!(c.read_reply().await.matches("250"));
    c.send_raw(b"DATA\n.\r\n").await;
    let r = c.read_reply().await;
    assert!(r.matches("500 5.5.2"), "{r}");
    let r = c.read_reply().await; // the "." line, read as a command
    assert!(r.matches("500"), "{r}");
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: proper\r\n\r\nx\r\n.\r\n").await;
    assert!(c.read_reply().await.matches("250 2.0.0"));
    let got = backend
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1);
    assert!(got[0].data.ends_with(b"Subject: proper\r\n\r\nx\r\n"));
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
