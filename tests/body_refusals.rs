//! Proves the body checks at the end of a message: a NUL byte gets `550 5.6.0`
//! (in DATA and in BDAT), a message with 51 `Received:` headers gets `554 5.4.6`
//! (a mail loop; the default `smtp.max_received_headers` is 50) while one with
//! 50 is delivered whole; refusals are counted and the session stays usable.

mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A message with `n` Received: headers (mixed case, as the count is) above its body.
fn with_hops(n: usize) -> Vec<u8> {
    let mut m = Vec::new();
    for i in 0..n {
        let name = if i % 2 == 0 { "Received" } else { "received" };
        m.extend_from_slice(
            format!("{name}: from hop{i}.test by hop{}.test\r\n", i + 1).as_bytes(),
        );
    }
    m.extend_from_slice(format!("Subject: {n} hops\r\n\r\n").as_bytes());
    // Received: lines in the body are not headers and do not count.
    m.extend_from_slice(b"Received: in the body\r\nReceived: again\r\n");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_mail_loops_are_refused() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], "").await;
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;

    let nul = b"Subject: nul\r\n\r\nbefore\x00after\r\n";
    let r = c
        .send_message("s@client.test", &["a@example.com"], nul)
        .await;
    assert!(r.matches("550 5.6.0"), "DATA: {r}");
    let r = c
        .send_bdat("s@client.test", &["a@example.com"], nul, 10)
        .await;
    assert!(r.matches("550 5.6.0"), "BDAT: {r}");
    let smuggling = "breakwater_smtp_rejections_total{reason=\"smuggling\"}";
    assert_eq!(relay.counter(smuggling).await, 2.0);

    let r = c
        .send_message("s@client.test", &["a@example.com"], &with_hops(51))
        .await;
    assert!(r.matches("554 5.4.6"), "51 hops, DATA: {r}");
    let r = c
        .send_bdat("s@client.test", &["a@example.com"], &with_hops(51), 700)
        .await;
    assert!(r.matches("554 5.4.6"), "51 hops, BDAT: {r}");
    let looped = "breakwater_smtp_rejections_total{reason=\"loop\"}";
    assert_eq!(relay.counter(looped).await, 2.0);

    let fifty = with_hops(50);
    let r = c
        .send_message("s@client.test", &["fifty@example.com"], &fifty)
        .await;
    assert!(r.matches("250 2.0.0 Ok: queued as"), "50 hops: {r}");
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(backend.count(), 1, "a refused message was delivered");
    assert_eq!(got[0].rcpts, ["fifty@example.com"]);
    assert!(got[0].data.ends_with(&fifty), "{}", got[0].data_str());
    // Ours on top makes 51 for the backend.
    let hops = got[0]
        .data_str()
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.to_ascii_lowercase().starts_with("received:"))
        .count();
    assert_eq!(hops, 51);
    assert_eq!(
        relay.metric("breakwater_messages_received_total").await,
        1.0
    );
    c.quit().await;
    relay.stop().await;
    backend.stop().await;
}
