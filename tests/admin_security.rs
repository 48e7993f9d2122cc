//! The admin API is guarded: with `admin.token_file` every `/api` call needs
//! the bearer token (the probes and `/metrics` stay open) and the CLI says how
//! to pass it; a web page can never steer the queue (foreign `Origin`,
//! `Sec-Fetch-Site: cross-site`, a rebound host name); bad ids are 400,
//! unknown ones 404, every error is JSON; `/metrics` has Prometheus's
//! Content-Type.

mod common;
use common::*;

const TOKEN: &str = "Zm9vYmFyLXRlc3QtdG9rZW4";

async fn relay_with_token() -> (Relay, tempfile::TempDir, Backend) {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        token.display().to_string()
    );
    let relay = Relay::start_in(dir.path(), &[backend.addr()], &extra).await;
    (relay, dir, backend)
}

fn is_json_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(|s| !s.is_empty()))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_required_for_the_api_only() {
    let (relay, dir, _backend) = relay_with_token().await;
    let host = format!("Host: {}", relay.admin);
    let (code, _, body) =
        raw_http(relay.admin, &format!("GET /api/queue HTTP/1.0\r\n{host}")).await;
    assert_eq!(code, 401, "{body}");
    assert!(is_json_error(&body), "{body}");
    let (code, _, _) = raw_http(
        relay.admin,
        &format!("GET /api/queue HTTP/1.0\r\n{host}\r\nAuthorization: Bearer wrong"),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _, body) = raw_http(
        relay.admin,
        &format!("GET /api/queue HTTP/1.0\r\n{host}\r\nAuthorization: Bearer {TOKEN}"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = raw_http(
        relay.admin,
        &format!("POST /api/queue/hold HTTP/1.0\r\n{host}\r\nContent-Length: 0"),
    )
    .await;
    assert_eq!(code, 401, "hold without the token");
    assert_eq!(relay.metric("breakwater_quiet_time_active").await, 0.0);
    for open in ["/metrics", "/healthz", "/readyz"] {
        let (code, _, _) = raw_http(relay.admin, &format!("GET {open} HTTP/1.0\r\n{host}")).await;
        assert_eq!(code, 200, "{open} must stay open");
    }

    // The CLI: no token -> exit 1 with how to pass it; env or --config -> ok.
    let url = format!("http://{}", relay.admin);
    let none = cli(&["queue", "list", "--admin", &url], &[]).await;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(
        none.stderr.contains("BREAKWATER_ADMIN_TOKEN") && none.stderr.contains("admin.token_file"),
        "{}",
        none.stderr
    );
    let env = cli(
        &["queue", "list", "--admin", &url],
        &[("BREAKWATER_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(env.code, 0, "{env:?}");
    // --config reads admin.listen and admin.token_file.
    let config = dir.path().join("cli.toml");
    let token = dir.path().join("admin.token");
    let text = config_text(
        dir.path(),
        &[loopback(25)],
        &format!(
            "[admin]\nlisten = \"{}\"\ntoken_file = {:?}\n",
            relay.admin,
            token.display().to_string()
        ),
    );
    std::fs::write(&config, text).expect("write cli config");
    let by_config = cli(&["status", "--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(by_config.code, 0, "{by_config:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_steer_the_queue() {
    let backend = Backend::start().await;
    let relay = Relay::start(&[backend.addr()], "").await;
    let host = format!("Host: {}", relay.admin);
    let form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0";
    let attacks = [
        format!("POST /api/queue/hold HTTP/1.0\r\n{host}\r\nOrigin: http://evil.test\r\n{form}"),
        format!("POST /api/queue/hold HTTP/1.0\r\n{host}\r\nOrigin: null\r\n{form}"),
        format!("POST /api/queue/hold HTTP/1.0\r\n{host}\r\nSec-Fetch-Site: cross-site\r\n{form}"),
        format!(
            "POST /api/queue/hold HTTP/1.0\r\nHost: evil.test:{}\r\n{form}",
            relay.admin.port()
        ),
        format!(
            "DELETE /api/queue/00000000000000AB HTTP/1.0\r\n{host}\r\nOrigin: http://evil.test"
        ),
        format!(
            "POST /api/queue/hold HTTP/1.0\r\n{host}\r\nOrigin: http://127.0.0.1.evil.test\r\n{form}"
        ),
    ];
    for a in &attacks {
        let (code, _, body) = raw_http(relay.admin, a).await;
        assert_eq!(code, 403, "{a}\n{body}");
        assert!(is_json_error(&body), "{body}");
    }
    assert_eq!(
        relay.metric("breakwater_quiet_time_active").await,
        0.0,
        "an attack held the queue"
    );
    // A rebound host name cannot read the queue either.
    let (code, _, _) = raw_http(
        relay.admin,
        &format!(
            "GET /api/queue HTTP/1.0\r\nHost: evil.test:{}",
            relay.admin.port()
        ),
    )
    .await;
    assert_eq!(code, 403);
    // The same request from the CLI (no Origin) works.
    let (code, body) = relay.http("POST", "/api/queue/hold").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(relay.metric("breakwater_quiet_time_active").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_and_bounded_requests() {
    let backend = Backend::start().await;
    let relay = Relay::start(&[backend.addr()], "").await;
    let host = format!("Host: {}", relay.admin);
    let cases = [
        ("GET /api/queue/zz%20top HTTP/1.0", 400),
        ("GET /api/queue/00000000000000000000 HTTP/1.0", 400),
        ("GET /api/queue/00000000000000AB HTTP/1.0", 404),
        ("DELETE /api/queue/00000000000000AB HTTP/1.0", 404),
        ("POST /api/queue/flush/00000000000000AB HTTP/1.0", 404),
        ("GET /api/queue?state=lost HTTP/1.0", 400),
        ("GET /api/queue?older_than=soon HTTP/1.0", 400),
        ("GET /api/queue?cursor=xyz HTTP/1.0", 400),
        ("GET /api/queue?limit=-1 HTTP/1.0", 400),
        ("GET /api/queue?unknown=1 HTTP/1.0", 400),
        ("GET /api/nothing HTTP/1.0", 404),
        ("DELETE /api/quiet/none HTTP/1.0", 404),
    ];
    for (line, want) in cases {
        let (code, _, body) = raw_http(
            relay.admin,
            &format!("{line}\r\n{host}\r\nContent-Length: 0"),
        )
        .await;
        assert_eq!(code, want, "{line}: {body}");
        assert!(is_json_error(&body), "{line}: {body}");
    }
    let (code, _, body) = raw_http(
        relay.admin,
        &format!("POST /api/quiet HTTP/1.0\r\n{host}\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{{\"name\":1"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // Bodies and heads are bounded.
    let big = "x".repeat(64 * 1024);
    let (code, _, _) = raw_http(
        relay.admin,
        &format!("POST /api/quiet HTTP/1.0\r\n{host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}", big.len()),
    )
    .await;
    assert_eq!(code, 413);
    let (code, _, _) = raw_http(
        relay.admin,
        &format!("GET /metrics HTTP/1.0\r\n{host}\r\nX-Big: {big}"),
    )
    .await;
    assert!(
        code == 431 || code == 0,
        "an oversized head must be refused, got {code}"
    );

    // /metrics: Prometheus's Content-Type.
    let (code, head, _) = raw_http(relay.admin, &format!("GET /metrics HTTP/1.0\r\n{host}")).await;
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
}

/// A client that never finishes its request head is dropped (10 s head
/// deadline), so it cannot hold one of the 64 admin slots for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let relay = Relay::start(&[backend.addr()], "").await;
    let mut s = tokio::net::TcpStream::connect(relay.admin)
        .await
        .expect("connect");
    s.write_all(b"GET /api/queue HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // a 408 may come first
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the half-sent request was still open after 20 s");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "dropped too early"
    );
    // The API still answers others.
    let (code, _) = relay.http("GET", "/api/status").await;
    assert_eq!(code, 200);
}
