//! Proves a client that reconnects the moment it reads `221` (as load
//! generators and busy MTAs do) finds its `smtp.max_connections_per_ip` slot
//! free: the slot is given back before the last reply is written.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_free_again_when_the_client_reads_the_last_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::create(tmp.path(), "relay.test");
    let mut backend = Backend::start().await;
    let extra = format!("{}[smtp]\nmax_connections_per_ip = 20\n", cert.config());
    let mut relay = Relay::start(&[backend.addr()], &extra).await;
    // 20 clients at a limit of 20, each reconnecting as soon as it reads 221;
    // under TLS the session's end takes longest (close_notify).
    let mut tasks = Vec::new();
    for k in 0..20 {
        let (addr, connector) = (relay.smtp, cert.connector());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let mut c = Client::connect(addr).await;
                assert!(
                    c.greeting().matches("220"),
                    "client {k}, connection {i}: {}",
                    c.greeting()
                );
                c.ehlo("client.test").await;
                c.starttls(&connector, "relay.test").await.unwrap();
                c.ehlo("client.test").await;
                c.quit().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, metrics) = relay.http("GET", "/metrics").await;
    let refused = metric_value(
        &metrics,
        "breakwater_smtp_rejections_total{reason=\"rate\"}",
    );
    assert_eq!(refused.unwrap_or(0.0), 0.0, "no reconnect was refused");
    relay.stop().await;
    backend.stop().await;
}
