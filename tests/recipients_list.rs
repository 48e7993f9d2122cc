//! Proves `relay.recipients`: in a domain the file mentions, unlisted users get
//! `550 5.1.1` at RCPT (no backscatter later), listed ones and `*@domain` are
//! accepted, `postmaster` always is, domains it does not mention are not
//! restricted; the running binary re-reads the file on SIGHUP, keeping the old
//! list when the new one is broken.

mod common;
mod process;
use common::*;
use process::Daemon;
use std::time::Duration;

fn extra(list: &std::path::Path) -> String {
    format!(
        "[relay]\ndomains = [\"example.com\", \"sales.example.com\", \"other.example\"]\nrecipients = {:?}\n",
        list.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_refused_at_rcpt_and_the_list_reloads_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("recipients.txt");
    std::fs::write(&list, "# staff\nalice@example.com\n*@sales.example.com\n").unwrap();
    let mut backend = Backend::start().await;
    // config_text writes its own [relay]; the daemon config takes ours instead.
    let mut relay = Daemon::start_with_relay(tmp.path(), &[backend.addr()], &extra(&list)).await;

    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    c.cmd("MAIL FROM:<s@client.test>", "250").await;
    c.cmd("RCPT TO:<bob@example.com>", "550 5.1.1").await;
    c.cmd("RCPT TO:<Alice@Example.com>", "250").await;
    c.cmd("RCPT TO:<anyone@sales.example.com>", "250").await;
    c.cmd("RCPT TO:<postmaster@example.com>", "250").await;
    c.cmd("RCPT TO:<someone@other.example>", "250").await; // not in the file
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: list\r\n\r\nx\r\n.\r\n").await;
    assert!(c.read_reply().await.matches("250"));
    let got = backend.wait_for(1, Duration::from_secs(10)).await;
    assert!(!got[0].rcpts.iter().any(|r| r.contains("bob")));

    // bob joins; SIGHUP makes the running relay see it.
    std::fs::write(
        &list,
        "alice@example.com\nbob@example.com\n*@sales.example.com\n",
    )
    .unwrap();
    relay.hup();
    let mut accepted = false;
    for _ in 0..50 {
        c.cmd("RSET", "250").await;
        c.cmd("MAIL FROM:<s@client.test>", "250").await;
        c.send("RCPT TO:<bob@example.com>").await;
        if c.read_reply().await.code == 250 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "bob not accepted after SIGHUP:\n{}", relay.log());

    // A broken file is refused; the list in use stays.
    std::fs::write(&list, "not an address\n").unwrap();
    relay.hup();
    let logged = wait_until_async(Duration::from_secs(5), || {
        relay.log().contains("config reload refused") && relay.log().contains("relay.recipients")
    })
    .await;
    assert!(logged, "{}", relay.log());
    c.cmd("RCPT TO:<carol@example.com>", "550 5.1.1").await;
    c.cmd("RCPT TO:<bob@example.com>", "250").await;
    c.cmd("QUIT", "221").await;
    relay.term();
    assert!(relay.wait_exit(Duration::from_secs(15)).await.is_some());
    backend.stop().await;
}
