//! Proves that `[smtp] idle_timeout` measures the client's silence, not the
//! relay's own work: when answering RCPT takes longer than the idle timeout
//! (here a recipient verification against a backend slow to answer RCPT), a
//! client that sends its next command as soon as it has the reply is served,
//! not cut off with `421 4.4.2` right after the `250`.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EXTRA: &str = "[smtp]\nidle_timeout = \"1s\"\n\
    [relay]\ndomains = [\"example.com\"]\nverify_recipients = true\n\
    [health]\ninterval = \"200ms\"\ntimeout = \"5s\"\n";
const WAIT: Duration = Duration::from_secs(10);
/// Longer than idle_timeout, shorter than health.timeout (the probe's bound).
const LOOKUP: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_does_not_use_up_the_clients_idle_time() {
    let mut backend = Backend::start().await;
    let mut relay = Relay::start(&[backend.addr()], EXTRA).await;
    assert!(wait_metric(&relay, "breakwater_backend_up{backend=\"b0\"}", 1.0, WAIT).await);
    backend.set_rcpt_delay(LOOKUP);

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    let start = Instant::now();
    c.cmd("RCPT TO:<new@example.com>", "250 2.1.5").await;
    let took = start.elapsed();
    assert!(took >= LOOKUP, "RCPT answered in {took:?}: not verified?");
    // At once, as any client would: the relay must still be listening.
    c.send("DATA").await;
    let r = c.read_reply().await;
    assert!(r.matches("354"), "DATA right after a {took:?} RCPT: {r}");
    c.send_raw(b"Subject: verified\r\n\r\nslow lookup\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert!(r.matches("250 2.0.0"), "{r}");
    // QUIT now: waiting for the delivery first would leave this client idle
    // longer than the 1 s idle timeout on a busy machine.
    c.quit().await;
    backend.set_rcpt_delay(Duration::ZERO);
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["new@example.com"]);
    relay.stop().await;
    backend.stop().await;
}
