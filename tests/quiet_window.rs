//! A one-off quiet-time window holds accepted mail (250, nothing delivered) until
//! it ends, then the backlog flows by itself; a window scoped to one backend
//! sends the mail to the next backend instead.

mod common;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use common::*;
use std::time::{Duration, Instant};

const ACTIVE: &str = "breakwater_quiet_time_active";
/// Checks "during the window" stop this long before its end (clock skew, load).
const MARGIN: Duration = Duration::from_millis(300);

/// A `[[quiet_time]]` from 1 s ago until `secs` from now (plus `scope` lines),
/// and the test-clock instant at which it ends.
fn window(secs: u64, scope: &str) -> (String, Instant) {
    let (now, end) = (Utc::now(), Instant::now() + Duration::from_secs(secs));
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let from = fmt(now - TimeDelta::seconds(1));
    let until = fmt(now + TimeDelta::seconds(secs as i64));
    let text = format!(
        "[[quiet_time]]\nname = \"maint\"\nfrom = \"{from}\"\nuntil = \"{until}\"\n{scope}"
    );
    (text, end)
}

async fn send(relay: &Relay, n: usize, tag: &str) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for i in 0..n {
        let data = format!("Subject: {tag}-{i}\r\n\r\nbody {i}\r\n");
        let reply = c
            .send_message("s@client.test", &["a@example.com"], data.as_bytes())
            .await;
        assert!(
            reply.matches("250 2.0.0 Ok: queued as"),
            "{tag}-{i}: {reply}"
        );
    }
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_window_holds_mail_until_it_ends() {
    const N: usize = 20;
    let backend = Backend::start().await;
    let (extra, until) = window(3, "");
    let mut relay = Relay::start(&[backend.addr()], &extra).await;
    assert_eq!(
        relay.metric(ACTIVE).await,
        1.0,
        "window active from the start"
    );

    send(&relay, N, "quiet").await;
    assert!(
        Instant::now() + MARGIN < until,
        "sending outlasted the window"
    );
    // Nothing leaves while the window lasts (bounded: it ends within 3 s).
    for _ in 0..500 {
        if Instant::now() + MARGIN >= until {
            break;
        }
        assert_eq!(backend.count(), 0, "delivered during the quiet-time window");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric(ACTIVE).await, 1.0, "still in the window");
    assert_eq!(backend.count(), 0, "delivered during the quiet-time window");

    // No flush, no admin command: the end of the window releases the backlog.
    let got = backend.wait_for(N, Duration::from_secs(15)).await;
    assert!(
        Instant::now() >= until - MARGIN,
        "delivered before the window ended"
    );
    assert_eq!(got.len(), N, "each message once");
    assert!(
        wait_metric(&relay, ACTIVE, 0.0, Duration::from_secs(5)).await,
        "{ACTIVE} stays 1 after the window"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_scoped_to_one_backend_sends_mail_to_the_next() {
    const N: usize = 5;
    let (b0, b1) = (Backend::start().await, Backend::start().await);
    let (extra, until) = window(4, "backends = [\"b0\"]\n");
    let mut relay = Relay::start(&[b0.addr(), b1.addr()], &extra).await;
    assert_eq!(
        relay.metric(ACTIVE).await,
        1.0,
        "a scoped window counts as active"
    );

    send(&relay, N, "scoped").await;
    let left = until
        .saturating_duration_since(Instant::now())
        .saturating_sub(MARGIN);
    assert!(
        wait_until_async(left, || b1.count() >= N).await,
        "b1 got {} of {N} during b0's window",
        b1.count()
    );
    assert_eq!(b0.count(), 0, "b0 got mail during its own quiet time");

    // After the window, b0 (priority 10) is preferred again.
    assert!(
        wait_metric(&relay, ACTIVE, 0.0, Duration::from_secs(8)).await,
        "window never ended"
    );
    send(&relay, 1, "after").await;
    let got = b0.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        got[0].data_str().contains("Subject: after-0"),
        "{}",
        got[0].data_str()
    );
    assert_eq!(b1.count(), N, "b1 only got the mail of b0's window");
    relay.stop().await;
}
