//! `/mail`: read access to held mail during an outage, tested on the real
//! relay with the backend down (nothing listens at its address), mail sent
//! over real SMTP.
//!
//! Over plain HTTP: the sign-in form's CSRF token and origin checks, the
//! cookies' attributes and the pages' security headers, redirects to the
//! sign-in page, each user seeing only their recipients' mail (another
//! user's message is 404, like an unknown one), the admin token seeing
//! everything, the `.eml` being the stored bytes, reads logged with the queue
//! id first, the access list reloading live, and `breakwater hash-password`.
//!
//! In a real headless Chromium driven through chromedriver's WebDriver API:
//! alice signs in, searches, reads and downloads her message, cannot reach
//! bob's; a hostile HTML message runs no script and loads nothing (a loopback
//! listener named in it sees no connection); five wrong passwords and the
//! sixth attempt, right or not, gets the rate-limit page.

mod common;
mod process;
use common::*;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const ALICE_PW: &str = "alice-Pa55word";
const BOB_PW: &str = "bob-Pa55word";
const TOKEN: &str = "bWFpbC13ZWItdGVzdC10b2tlbg";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The argon2 hashes of alice's and bob's passwords, made once.
fn hashes() -> &'static (String, String) {
    static H: OnceLock<(String, String)> = OnceLock::new();
    H.get_or_init(|| {
        let h = breakwater::admin::mail::hash_password;
        (h(ALICE_PW).expect("hash"), h(BOB_PW).expect("hash"))
    })
}

/// `[[mailbox_access]]` for alice and bob (`alice_addresses` for alice).
fn access(alice_addresses: &str) -> String {
    let (a, b) = hashes();
    format!(
        "[[mailbox_access]]\nuser = \"alice\"\npassword_hash = \"{a}\"\naddresses = {alice_addresses}\n\
         [[mailbox_access]]\nuser = \"bob\"\npassword_hash = \"{b}\"\naddresses = [\"bob@example.com\"]\n"
    )
}

fn alice_mail() -> Vec<u8> {
    b"From: Carol <carol@client.test>\r\nTo: alice@example.com\r\n\
      Subject: Quarterly numbers for alice\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
      Message-ID: <q1@client.test>\r\n\r\nThe numbers are in: 42.\r\n\
      .a line that starts with a dot\r\n\r\nCarol\r\n"
        .to_vec()
}

fn bob_mail() -> Vec<u8> {
    b"From: Dave <dave@client.test>\r\nTo: bob@example.com\r\n\
      Subject: Private note for bob\r\n\r\nOnly for bob.\r\n"
        .to_vec()
}

fn both_mail() -> Vec<u8> {
    b"From: Erin <erin@client.test>\r\nTo: alice@example.com, bob@example.com\r\n\
      Subject: Team lunch\r\n\r\nFriday?\r\n"
        .to_vec()
}

/// HTML that would run script and load from `canary` if rendered as is.
fn hostile_mail(canary: SocketAddr) -> Vec<u8> {
    format!(
        "From: Mallory <mallory@client.test>\r\nTo: alice@example.com\r\n\
         Subject: Hostile newsletter\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Plain part <script>document.title='pwned'</script>\r\n\
         --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><head><link rel=stylesheet href=http://{canary}/s.css>\r\n\
         <style>body {{ background: url(http://{canary}/bg.png) }}</style>\r\n\
         <script>document.title='pwned'</script><base href=\"http://{canary}/\"></head>\r\n\
         <body onload=\"document.title='pwned'\"><p>Hello from the newsletter</p>\r\n\
         <img src=\"http://{canary}/x.png\" onerror=\"document.title='pwned'\">\r\n\
         <img src=\"//{canary}/y.png\"><img src=\"relative.png\">\r\n\
         <p style=\"background-image:url(http://{canary}/p.png)\">styled</p>\r\n\
         <iframe src=\"http://{canary}/frame\"></iframe>\r\n\
         <a href=\"javascript:document.title='pwned'\">click me</a>\r\n\
         <a href=\"http://{canary}/track\">a link</a>\r\n\
         <object data=\"http://{canary}/o\"></object></body></html>\r\n\
         --b1--\r\n"
    )
    .into_bytes()
}

/// Sends `data` and returns the queue id from the `250`.
async fn send(smtp: SocketAddr, from: &str, rcpts: &[&str], data: &[u8]) -> String {
    let mut c = Client::connect(smtp).await;
    c.ehlo("client.test").await;
    let reply = c.send_message(from, rcpts, data).await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;
    reply
        .first_line()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A relay whose backend is down, with alice, bob and the admin token, and
/// alice's, bob's and their shared message held.
struct Setup {
    relay: Relay,
    _dir: tempfile::TempDir,
    alice: String,
    bob: String,
    both: String,
}

async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let down = loopback(free_port()); // nothing listens: every attempt is refused
    let config = format!(
        "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n{}{extra}",
        token.display().to_string(),
        access("[\"alice@example.com\"]"),
    );
    let relay = Relay::start_in(dir.path(), &[down], &config).await;
    let alice = send(
        relay.smtp,
        "carol@client.test",
        &["alice@example.com"],
        &alice_mail(),
    )
    .await;
    let bob = send(
        relay.smtp,
        "dave@client.test",
        &["bob@example.com"],
        &bob_mail(),
    )
    .await;
    let both = send(
        relay.smtp,
        "erin@client.test",
        &["alice@example.com", "bob@example.com"],
        &both_mail(),
    )
    .await;
    Setup {
        relay,
        _dir: dir,
        alice,
        bob,
        both,
    }
}

/// A blocking HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole `Set-Cookie` line for cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The value `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        let line = self.set_cookie(name)?;
        let value = line.split(';').next()?.split_once('=')?.1;
        Some(value.to_owned())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The value of the first hidden `csrf` field in a page.
fn csrf_field(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a csrf field") + marker.len();
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let esc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A blocking HTTP client for the admin listener (no redirects followed, no
/// proxy, every status returned).
#[derive(Clone)]
struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            base: format!("http://{addr}"),
            agent: agent(),
        }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut r = r.expect("HTTP request");
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        Resp {
            status: r.status().as_u16(),
            headers,
            body: r
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .unwrap_or_default(),
        }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Http::finish(req.call())
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Resp {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Http::finish(req.send(form_encode(form)))
    }

    /// GET with the session cookie.
    fn get_as(&self, session: &str, path: &str) -> Resp {
        self.get(path, &[("cookie", &format!("bw_session={session}"))])
    }

    /// The sign-in form, then the POST of `user` and `password` with its token.
    fn sign_in(&self, user: &str, password: &str, headers: &[(&str, &str)]) -> Resp {
        let form = self.get("/mail/login", headers);
        assert_eq!(form.status, 200, "{}", form.text());
        let csrf = form.cookie("bw_login").expect("bw_login cookie");
        assert_eq!(csrf_field(&form.text()), csrf, "double-submit token");
        let cookie = format!("bw_login={csrf}");
        let mut h = vec![("cookie", cookie.as_str()), ("origin", self.base.as_str())];
        h.extend_from_slice(headers);
        self.post(
            "/mail/login",
            &h,
            &[("user", user), ("password", password), ("csrf", &csrf)],
        )
    }

    /// Signs in; the session cookie's value.
    fn session(&self, user: &str, password: &str) -> String {
        let r = self.sign_in(user, password, &[]);
        assert_eq!(r.status, 303, "sign-in as {user}: {}", r.text());
        assert_eq!(r.header("location"), Some("/mail"));
        r.cookie("bw_session").expect("bw_session cookie")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .proxy(None)
        .build()
        .into()
}

/// Runs blocking test code off the runtime's workers (the relay runs there).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking part")
}

/// The stored message minus the relay's `Received:` header (the first
/// header and its continuation lines).
fn after_first_received(stored: &[u8]) -> &[u8] {
    assert!(stored.starts_with(b"Received: "), "no Received: first");
    let mut at = 0;
    loop {
        let end = stored[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line end")
            + at
            + 2;
        at = end;
        if !matches!(stored.get(at), Some(b' ' | b'\t')) {
            return &stored[at..];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_sign_out_need_their_csrf_token_and_this_origin() {
    let s = setup("").await;
    let http = Http::new(s.relay.admin);
    blocking(move || {
        let form = http.get("/mail/login", &[]);
        let csrf = form.cookie("bw_login").expect("bw_login");
        let cookie = format!("bw_login={csrf}");
        let base = http.base.clone();
        let creds = |token: &str| {
            vec![
                ("user".to_owned(), "alice".to_owned()),
                ("password".to_owned(), ALICE_PW.to_owned()),
                ("csrf".to_owned(), token.to_owned()),
            ]
        };
        let post = |headers: &[(&str, &str)], fields: Vec<(String, String)>| {
            let f: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http.post("/mail/login", headers, &f)
        };
        // No token at all, a wrong one, or no cookie to match it: 403.
        let r = post(&[], creds(""));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("Sign-in form expired"), "{}", r.text());
        assert!(r.set_cookie("bw_session").is_none());
        assert_eq!(
            post(&[("cookie", &cookie)], creds(&"0".repeat(64))).status,
            403
        );
        assert_eq!(
            post(&[], creds(&csrf)).status,
            403,
            "token without its cookie"
        );
        // Another origin, or a browser saying cross-site / same-site: 403.
        for headers in [
            vec![("cookie", cookie.as_str()), ("origin", "http://evil.test")],
            vec![("cookie", cookie.as_str()), ("origin", "null")],
            vec![
                ("cookie", cookie.as_str()),
                ("origin", "null"),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![
                ("cookie", cookie.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![("cookie", cookie.as_str()), ("sec-fetch-site", "same-site")],
        ] {
            let r = post(&headers, creds(&csrf));
            assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
            assert!(r.text().contains("refused"), "{}", r.text());
            assert!(r.set_cookie("bw_session").is_none());
        }
        // A body over the limit.
        let big = "x".repeat(20 * 1024);
        let r = http.post(
            "/mail/login",
            &[("cookie", &cookie)],
            &[("user", "alice"), ("password", &big), ("csrf", &csrf)],
        );
        assert_eq!(r.status, 413, "{}", r.text());
        // Right token, this origin, same-origin: signed in.
        let r = post(
            &[
                ("cookie", &cookie),
                ("origin", &base),
                ("sec-fetch-site", "same-origin"),
            ],
            creds(&csrf),
        );
        assert_eq!(r.status, 303, "{}", r.text());
        let session = r.cookie("bw_session").expect("session");
        assert!(
            r.set_cookie("bw_login")
                .is_some_and(|c| c.contains("Max-Age=0")),
            "the sign-in cookie is cleared"
        );

        // Sign-out: the session's token, from this origin.
        let list = http.get_as(&session, "/mail");
        assert_eq!(list.status, 200);
        let token = csrf_field(&list.text());
        let sc = format!("bw_session={session}");
        let r = http.post("/mail/logout", &[("cookie", &sc)], &[("csrf", "nope")]);
        assert_eq!(r.status, 403, "{}", r.text());
        let r = http.post(
            "/mail/logout",
            &[("cookie", &sc), ("origin", "http://evil.test")],
            &[("csrf", &token)],
        );
        assert_eq!(r.status, 403);
        assert_eq!(
            http.get_as(&session, "/mail").status,
            200,
            "still signed in"
        );
        let r = http.post("/mail/logout", &[("cookie", &sc)], &[("csrf", &token)]);
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), Some("/mail/login"));
        assert!(r.set_cookie("bw_session").unwrap().contains("Max-Age=0"));
        let r = http.get_as(&session, "/mail");
        assert_eq!(r.status, 303, "signed out");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_headers_and_redirects() {
    let s = setup("").await;
    let http = Http::new(s.relay.admin);
    let alice = s.alice.clone();
    blocking(move || {
        let form = http.get("/mail/login", &[]);
        for (name, want) in [
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
            ("content-type", "text/html; charset=utf-8"),
        ] {
            assert_eq!(form.header(name), Some(want), "{name}");
        }
        let login = form.set_cookie("bw_login").unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/mail"] {
            assert!(login.contains(attr), "{login}");
        }
        assert!(!login.contains("Secure"), "plain http: {login}");

        let r = http.sign_in("alice", ALICE_PW, &[]);
        let line = r.set_cookie("bw_session").expect("session cookie");
        let value = r.cookie("bw_session").unwrap();
        assert!(
            value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        assert_eq!(
            line,
            format!("bw_session={value}; HttpOnly; SameSite=Strict; Path=/mail")
        );
        // Behind a TLS proxy (X-Forwarded-Proto: https) the cookies are Secure.
        let r = http.sign_in("alice", ALICE_PW, &[("x-forwarded-proto", "https")]);
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(r.set_cookie("bw_session").unwrap().ends_with("; Secure"));
        assert_ne!(r.cookie("bw_session").unwrap(), value, "a new session");

        // Not signed in (or a cookie we never gave): to the sign-in page.
        for path in [
            "/mail".to_owned(),
            "/mail?subject=x".to_owned(),
            format!("/mail/msg/{alice}"),
            format!("/mail/msg/{alice}/eml"),
        ] {
            for cookie in [
                "",
                "bw_session=nope",
                &format!("bw_session={}", "a".repeat(64)),
            ] {
                let r = http.get(&path, &[("cookie", cookie)]);
                assert_eq!(r.status, 303, "{path} {cookie}");
                assert_eq!(r.header("location"), Some("/mail/login"));
                assert!(r.body.is_empty() || !r.text().contains("Quarterly"));
            }
        }
        // Signed in: the list has the security headers too; bad queries and
        // unknown pages get clear pages.
        let r = http.get_as(&value, "/mail");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-security-policy"), Some(CSP));
        assert!(r.text().contains("Signed in as <strong>alice</strong>"));
        let r = http.get_as(&value, "/mail?bogus=1");
        assert_eq!(r.status, 400);
        assert!(r.text().contains("Search not understood"), "{}", r.text());
        let r = http.get_as(&value, "/mail?since=yesterday");
        assert_eq!(r.status, 400);
        assert!(r.text().contains("YYYY-MM-DD"), "{}", r.text());
        let long = format!("/mail?subject={}", "x".repeat(3000));
        assert_eq!(http.get_as(&value, &long).status, 414);
        let r = http.get_as(&value, "/mail/nothing/here");
        assert_eq!(r.status, 404);
        assert!(r.text().contains("no such page"), "{}", r.text());
        let r = http.post("/mail", &[], &[]);
        assert_eq!(r.status, 405);
        assert!(r.text().contains("Method not allowed"), "{}", r.text());
        assert_eq!(r.header("content-security-policy"), Some(CSP));
        // /api keeps its own guard: a mail session is not an admin token.
        let r = http.get("/api/queue", &[("cookie", &format!("bw_session={value}"))]);
        assert_eq!(r.status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_only_their_mail_and_the_admin_token_sees_all() {
    let s = setup("").await;
    let http = Http::new(s.relay.admin);
    let (alice_id, bob_id, both_id) = (s.alice.clone(), s.bob.clone(), s.both.clone());
    blocking(move || {
        let alice = http.session("alice", ALICE_PW);
        let list = http.get_as(&alice, "/mail").text();
        assert!(list.contains("Quarterly numbers for alice"), "{list}");
        assert!(list.contains("Team lunch"), "{list}");
        assert!(!list.contains("Private note for bob"), "{list}");
        assert!(!list.contains(&bob_id), "{list}");
        assert!(
            !list.contains("bob@example.com"),
            "bob is hidden within the shared message: {list}"
        );
        let newest_first = list.find("Team lunch").unwrap() < list.find("Quarterly").unwrap();
        assert!(newest_first, "{list}");
        // Searches.
        let r = http.get_as(&alice, "/mail?subject=QUARTERLY").text();
        assert!(
            r.contains("Quarterly numbers") && !r.contains("Team lunch"),
            "{r}"
        );
        let r = http.get_as(&alice, "/mail?from=erin").text();
        assert!(
            r.contains("Team lunch") && !r.contains("Quarterly numbers"),
            "{r}"
        );
        let r = http.get_as(&alice, "/mail?to=bob").text();
        assert!(r.contains("No message found"), "{r}");
        let r = http
            .get_as(&alice, "/mail?since=2000-01-01&until=2000-01-02")
            .text();
        assert!(r.contains("No message found"), "{r}");
        let day = |d: i64| {
            (chrono::Utc::now() + chrono::Duration::days(d))
                .format("%Y-%m-%d")
                .to_string()
        };
        let r = http
            .get_as(&alice, &format!("/mail?since={}&until={}", day(-1), day(1)))
            .text();
        assert!(
            r.contains("Quarterly numbers") && r.contains("Team lunch"),
            "{r}"
        );

        // Bob's message is not found for alice, by page or by download, the
        // same answer as an id that does not exist.
        let unknown = http.get_as(&alice, "/mail/msg/0000000000000001");
        assert_eq!(unknown.status, 404);
        for path in [
            format!("/mail/msg/{bob_id}"),
            format!("/mail/msg/{bob_id}/eml"),
        ] {
            let r = http.get_as(&alice, &path);
            assert_eq!(r.status, 404, "{path}");
            assert!(!r.text().contains("Only for bob"), "{path}");
            assert_eq!(r.text(), unknown.text(), "{path}");
        }
        for bad in ["zz", "00000000000000000001", "%00"] {
            assert_eq!(
                http.get_as(&alice, &format!("/mail/msg/{bad}")).status,
                404,
                "{bad}"
            );
        }

        // Alice's own message and its .eml: the stored bytes exactly.
        let page = http.get_as(&alice, &format!("/mail/msg/{alice_id}"));
        assert_eq!(page.status, 200);
        let text = page.text();
        assert!(text.contains("The numbers are in: 42."), "{text}");
        assert!(
            text.contains(&format!("/mail/msg/{alice_id}/eml")),
            "{text}"
        );
        let eml = http.get_as(&alice, &format!("/mail/msg/{alice_id}/eml"));
        assert_eq!(eml.status, 200);
        assert_eq!(eml.header("content-type"), Some("message/rfc822"));
        assert_eq!(
            eml.header("content-disposition"),
            Some(format!("attachment; filename=\"{alice_id}.eml\"").as_str())
        );
        assert_eq!(after_first_received(&eml.body), alice_mail().as_slice());
        let api = http.get(
            &format!("/api/queue/{alice_id}"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        );
        let v: serde_json::Value = serde_json::from_slice(&api.body).expect("json");
        assert_eq!(v["size"].as_u64(), Some(eml.body.len() as u64), "{v}");
        // The shared message shows alice only among its envelope recipients.
        let shared = http.get_as(&alice, &format!("/mail/msg/{both_id}")).text();
        assert!(
            shared.contains("<dt>Held for</dt><dd>alice@example.com</dd>"),
            "{shared}"
        );

        // Bob: the mirror image.
        let bob = http.session("bob", BOB_PW);
        let list = http.get_as(&bob, "/mail").text();
        assert!(list.contains("Private note for bob") && list.contains("Team lunch"));
        assert!(!list.contains("Quarterly"), "{list}");
        assert_eq!(
            http.get_as(&bob, &format!("/mail/msg/{alice_id}/eml"))
                .status,
            404
        );

        // A wrong password, an unknown user: the same refusal.
        for (user, pw) in [
            ("alice", "wrong"),
            ("mallory", "x"),
            ("admin", "not-the-token"),
        ] {
            let r = http.sign_in(user, pw, &[]);
            assert_eq!(r.status, 401, "{user}");
            assert!(r.text().contains("Wrong user name or password."), "{user}");
            assert!(r.set_cookie("bw_session").is_none());
        }

        // The admin token signs in as admin and sees everything.
        let admin = http.session("admin", TOKEN);
        let list = http.get_as(&admin, "/mail").text();
        for subject in [
            "Quarterly numbers for alice",
            "Private note for bob",
            "Team lunch",
        ] {
            assert!(list.contains(subject), "{subject}: {list}");
        }
        assert!(
            list.contains("alice@example.com, bob@example.com"),
            "{list}"
        );
        let eml = http.get_as(&admin, &format!("/mail/msg/{bob_id}/eml"));
        assert_eq!(after_first_received(&eml.body), bob_mail().as_slice());
    })
    .await;
}

/// True once a line of the daemon's log contains `needle` (within 5 s).
async fn logged(d: &process::Daemon, needle: &str) -> bool {
    wait_until_async(Duration::from_secs(5), || {
        d.log().lines().any(|l| l.contains(needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_logged_and_the_access_list_reloads_live() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let down = loopback(free_port());
    let extra = format!(
        "[delivery]\nretry = [\"1h\"]\nshutdown_grace = \"2s\"\n{}",
        access("[\"alice@example.com\"]")
    );
    let mut d = process::Daemon::start(tmp.path(), &[down], "", &extra).await;
    let alice_id = send(
        d.smtp,
        "carol@client.test",
        &["alice@example.com"],
        &alice_mail(),
    )
    .await;
    let bob_id = send(
        d.smtp,
        "dave@client.test",
        &["bob@example.com"],
        &bob_mail(),
    )
    .await;
    let http = Http::new(d.admin);
    let h = http.clone();
    let (a, b) = (alice_id.clone(), bob_id.clone());
    let session = blocking(move || {
        let s = h.session("alice", ALICE_PW);
        assert_eq!(h.get_as(&s, &format!("/mail/msg/{a}")).status, 200);
        assert_eq!(h.get_as(&s, &format!("/mail/msg/{a}/eml")).status, 200);
        assert_eq!(h.get_as(&s, &format!("/mail/msg/{b}")).status, 404);
        assert_eq!(h.sign_in("bob", "wrong", &[]).status, 401);
        s
    })
    .await;
    for needle in [
        format!("{alice_id} read by mailbox user alice via /mail user=alice"),
        format!("{alice_id} downloaded as .eml by mailbox user alice via /mail user=alice"),
        format!("{bob_id} refused to mailbox user alice"),
        "mailbox user alice signed in from 127.0.0.1".to_owned(),
        "mailbox sign-in failed for user \"bob\" from 127.0.0.1".to_owned(),
    ] {
        assert!(logged(&d, &needle).await, "{needle:?} not in\n{}", d.log());
    }
    let read_line = d
        .log()
        .lines()
        .find(|l| l.contains("read by mailbox user"))
        .unwrap_or_default()
        .to_owned();
    let message = read_line.split(" INFO ").nth(1).unwrap_or_default();
    assert!(
        message.starts_with(&alice_id),
        "queue id first: {read_line}"
    );

    // Alice is given bob's address too: live, her session goes on.
    let config = tmp.path().join("breakwater.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let wider = text.replace(
        "addresses = [\"alice@example.com\"]",
        "addresses = [\"alice@example.com\", \"bob@example.com\"]",
    );
    assert_ne!(text, wider);
    std::fs::write(&config, &wider).expect("write config");
    d.hup();
    let (h, s, b) = (http.clone(), session.clone(), bob_id.clone());
    let sees_bob = blocking(move || {
        wait_until(Duration::from_secs(10), || {
            h.get_as(&s, &format!("/mail/msg/{b}")).status == 200
        })
    })
    .await;
    assert!(
        sees_bob,
        "the reload did not widen alice's access:\n{}",
        d.log()
    );
    assert!(
        logged(&d, "mailbox_access: [alice, bob]").await,
        "{}",
        d.log()
    );

    // A new password for alice ends her session.
    let new_hash = breakwater::admin::mail::hash_password("alice-new").expect("hash");
    let (old_hash, _) = hashes();
    std::fs::write(&config, wider.replace(old_hash.as_str(), &new_hash)).expect("write config");
    d.hup();
    let (h, s) = (http.clone(), session.clone());
    let ended = blocking(move || {
        wait_until(Duration::from_secs(10), || {
            h.get_as(&s, "/mail").status == 303
        })
    })
    .await;
    assert!(
        ended,
        "a changed password must end the session:\n{}",
        d.log()
    );
    let h = http.clone();
    blocking(move || {
        assert_eq!(h.sign_in("alice", ALICE_PW, &[]).status, 401);
        h.session("alice", "alice-new");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_prints_a_phc_string_and_refuses_an_empty_password() {
    let run = |input: &'static [u8]| {
        blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_breakwater"))
                .arg("hash-password")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn breakwater");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write stdin");
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().expect("try_wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("hash-password still running after 30 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let out = child.wait_with_output().expect("output");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, out, err) = run(b"s3cret pass\r\n").await;
    assert_eq!(code, 0, "{err}");
    let hash = out.trim();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{out}");
    assert!(breakwater::admin::mail::verify_password(
        "s3cret pass",
        hash
    ));
    assert!(!breakwater::admin::mail::verify_password(
        "s3cret pass\r",
        hash
    ));
    assert!(breakwater::admin::mail::check_password_hash(hash).is_ok());
    let (code, out, _) = run(b"no newline").await;
    assert_eq!(code, 0);
    assert!(breakwater::admin::mail::verify_password(
        "no newline",
        out.trim()
    ));
    for empty in [&b"\n"[..], b"", b"\r\n"] {
        let (code, out, err) = run(empty).await;
        assert_eq!(code, 1, "{empty:?}");
        assert!(out.is_empty());
        assert!(err.contains("empty password"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// The browser: headless Chromium through chromedriver's WebDriver HTTP API.

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and the browser session it runs; ended (session deleted,
/// processes killed by PID) when dropped.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver (on a port below the ephemeral range, so a test
    /// binding port 0 meanwhile cannot take it; tried again on another port
    /// if it does not come up), then a browser session.
    fn start() -> Browser {
        let mut tries = Vec::new();
        for attempt in 0..4 {
            let profile = tempfile::tempdir().expect("profile dir");
            let log = profile.path().join("chromedriver.log");
            let port = driver_port(attempt);
            let driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let mut b = Browser {
                driver,
                url: format!("http://127.0.0.1:{port}"),
                session: String::new(),
                agent: agent(),
                _profile: profile,
            };
            let quick: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(30), || {
                exited = matches!(b.driver.try_wait(), Ok(Some(_)));
                exited
                    || quick
                        .get(format!("{}/status", b.url))
                        .call()
                        .ok()
                        .and_then(|mut r| r.body_mut().read_to_string().ok())
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                        .is_some_and(|v| v["value"]["ready"] == true)
            });
            if ready && !exited {
                b.open_session();
                return b;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            tries.push(format!("port {port} (exited: {exited}):\n{text}"));
        }
        panic!("chromedriver did not get ready:\n{}", tries.join("\n"));
    }

    fn open_session(&mut self) {
        let profile = self._profile.path().display().to_string();
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--no-proxy-server", "--disable-dev-shm-usage", "--window-size=1280,1600",
                    format!("--user-data-dir={profile}"),
                ],
            },
        }}});
        let v = self.raw("POST", "/session", Some(caps));
        self.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
    }

    /// A WebDriver call; the whole JSON answer.
    fn raw(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}{path}", self.url);
        let r = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or_else(|| serde_json::json!({})).to_string()),
        };
        let text = r
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("WebDriver {path}: {text}"))
    }

    /// A call in our session; its `value`, which must not be an error.
    fn cmd(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let v = self.raw(method, &format!("/session/{}{path}", self.session), body);
        let value = v["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {method} {path}: {value}"
        );
        value
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    fn current_url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), None);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(serde_json::json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), None);
    }

    fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn script(&self, script: &str) -> serde_json::Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
    }

    fn cookies(&self) -> Vec<serde_json::Value> {
        self.cmd("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// With `BW_TEST_SCREENSHOTS=DIR` set, saves the page as `DIR/NAME.png`
    /// (to look at what a person would see).
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("BW_TEST_SCREENSHOTS") else {
            return;
        };
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or_default());
        let path = Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
    }

    /// Clicks what `css` names and waits (10 s at most) until the page it
    /// leads to has loaded: the old page is marked first, and a click
    /// returns before the answer to its form has arrived.
    fn click_and_wait(&self, css: &str) {
        self.script("document.documentElement.setAttribute('data-old-page', '1');");
        self.click(css);
        let loaded = wait_until(Duration::from_secs(10), || {
            self.script(
                "return document.readyState === 'complete' && \
                 !document.documentElement.hasAttribute('data-old-page');",
            ) == true
        });
        assert!(
            loaded,
            "clicking {css} led to no new page: {}",
            self.source()
        );
    }

    /// Fills in and sends the sign-in form (the page must show it).
    fn sign_in(&self, user: &str, password: &str) {
        self.type_into("input[name=user]", user);
        self.type_into("input[name=password]", password);
        self.click_and_wait("form.login button[type=submit]");
    }
}

/// A free loopback port in 20000..30000 (below Linux's ephemeral range, where
/// port-0 binds land), different for each `attempt` and each test process.
fn driver_port(attempt: u32) -> u16 {
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(attempt.wrapping_mul(7_919))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    for i in 0..1000u32 {
        let port = 20_000 + ((seed.wrapping_add(i.wrapping_mul(104_729))) % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// Standard base64 (padding and line breaks ignored).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Process ids of every descendant of `pid` (from /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten().take(100_000) {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parents.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            if !out.contains(child) && out.len() < 10_000 {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.url, self.session))
                .call();
        }
        // Whatever the session left behind (it should be nothing), by PID.
        for pid in descendants(self.driver.id()) {
            // SAFETY: kill(2) with a pid we just read from /proc and a valid signal.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A loopback listener that counts connections (and answers them with a
/// tiny page), until dropped.
struct Canary {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Canary {
    fn start() -> Canary {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind canary");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("canary addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        s.fetch_add(1, Ordering::SeqCst);
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\ncanary",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Canary {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "\n\n*** SKIPPING the /mail browser test: {CHROMIUM} or {CHROMEDRIVER} is missing. \
             Install them (Debian: apt-get install chromium chromium-driver); .ci/run does. ***\n\n"
        );
        return;
    }
    let canary = Canary::start();
    let s = setup("").await;
    let hostile = send(
        s.relay.smtp,
        "mallory@client.test",
        &["alice@example.com"],
        &hostile_mail(canary.addr),
    )
    .await;
    let base = format!("http://{}", s.relay.admin);
    let (alice_id, bob_id) = (s.alice.clone(), s.bob.clone());
    let http = Http::new(s.relay.admin);
    blocking(move || {
        let b = Browser::start();
        // Not signed in: the list sends the browser to the sign-in page.
        b.goto(&format!("{base}/mail"));
        assert_eq!(b.current_url(), format!("{base}/mail/login"));

        // A wrong password is refused.
        b.sign_in("alice", "not-her-password");
        assert!(b.source().contains("Wrong user name or password."));
        assert_eq!(b.current_url(), format!("{base}/mail/login"));
        // The right one: the list of her held mail, without bob's.
        b.sign_in("alice", ALICE_PW);
        assert_eq!(b.current_url(), format!("{base}/mail"));
        let list = b.source();
        b.screenshot("mail-list");
        assert!(
            list.contains("Signed in as <strong>alice</strong>"),
            "{list}"
        );
        assert!(list.contains("Quarterly numbers for alice"), "{list}");
        assert!(list.contains("Hostile newsletter"), "{list}");
        assert!(!list.contains("Private note for bob"), "{list}");

        // Search by subject.
        b.type_into("input[name=subject]", "quarterly");
        b.click_and_wait("form.search button[type=submit]");
        assert!(
            b.current_url().contains("subject=quarterly"),
            "{}",
            b.current_url()
        );
        let found = b.source();
        assert!(found.contains("Quarterly numbers for alice"), "{found}");
        assert!(!found.contains("Hostile newsletter"), "{found}");
        assert!(!found.contains("Team lunch"), "{found}");
        // Open it.
        b.click_and_wait(&format!("a[href=\"/mail/msg/{alice_id}\"]"));
        assert_eq!(b.current_url(), format!("{base}/mail/msg/{alice_id}"));
        let page = b.source();
        b.screenshot("mail-message");
        assert!(page.contains("The numbers are in: 42."), "{page}");
        assert!(page.contains("Download .eml"), "{page}");

        // The session cookie as the browser holds it.
        let cookies = b.cookies();
        let session = cookies
            .iter()
            .find(|c| c["name"] == "bw_session")
            .unwrap_or_else(|| panic!("no bw_session in {cookies:?}"));
        assert_eq!(session["httpOnly"], true, "{session}");
        assert_eq!(session["sameSite"], "Strict", "{session}");
        assert_eq!(session["path"], "/mail", "{session}");
        let sid = session["value"].as_str().expect("cookie value").to_owned();

        // The .eml with that cookie: what the journal holds, byte for byte.
        let eml = http.get_as(&sid, &format!("/mail/msg/{alice_id}/eml"));
        assert_eq!(eml.status, 200);
        assert_eq!(eml.header("content-type"), Some("message/rfc822"));
        assert_eq!(after_first_received(&eml.body), alice_mail().as_slice());

        // Bob's message: not in her list, and its address is a 404.
        b.goto(&format!("{base}/mail/msg/{bob_id}"));
        let nf = b.source();
        assert!(
            nf.contains("Not found") && !nf.contains("Only for bob"),
            "{nf}"
        );
        assert_eq!(
            http.get_as(&sid, &format!("/mail/msg/{bob_id}")).status,
            404
        );
        assert_eq!(
            http.get_as(&sid, &format!("/mail/msg/{bob_id}/eml")).status,
            404
        );

        // The hostile message: no script runs, nothing remote is fetched.
        b.goto(&format!("{base}/mail/msg/{hostile}"));
        let page = b.source();
        b.screenshot("mail-hostile");
        assert!(page.contains("Hello from the newsletter"), "{page}");
        assert!(
            page.contains("click me") && page.contains("a link"),
            "{page}"
        );
        std::thread::sleep(Duration::from_millis(1500)); // time for any load to start
        let title = b.script("return document.title;");
        assert_eq!(title, format!("Message {hostile} · breakwater"));
        let page = b.source().to_ascii_lowercase();
        for banned in [
            "<script",
            "onerror",
            "onload",
            "<link",
            "<iframe",
            "javascript:",
        ] {
            assert!(!page.contains(banned), "{banned} in {page}");
        }
        assert!(!page.contains(&canary.addr.to_string()), "{page}");
        assert_eq!(
            canary.seen(),
            0,
            "the hostile message made the browser connect"
        );
        // The canary does see the browser when it is really asked to load it.
        b.goto(&format!("http://{}/probe", canary.addr));
        assert!(
            wait_until(Duration::from_secs(5), || canary.seen() >= 1),
            "the canary never saw the browser: the zero above proves nothing"
        );

        // Sign out: back to the sign-in page, the old cookie is dead.
        b.goto(&format!("{base}/mail"));
        b.click_and_wait("header form button[type=submit]");
        assert_eq!(b.current_url(), format!("{base}/mail/login"));
        assert_eq!(http.get_as(&sid, "/mail").status, 303);

        // Five wrong passwords for bob, then even the right one is refused
        // with the rate-limit page.
        for i in 0..5 {
            b.sign_in("bob", &format!("wrong-{i}"));
            let p = b.source();
            assert!(
                p.contains("Wrong user name or password."),
                "attempt {i}: {p}"
            );
        }
        b.sign_in("bob", BOB_PW);
        let p = b.source();
        b.screenshot("mail-rate-limited");
        assert!(p.contains("Too many failed sign-ins"), "{p}");
        assert!(!p.contains("Signed in as"), "{p}");
        assert_eq!(b.current_url(), format!("{base}/mail/login"));
        drop(b);
    })
    .await;
}
