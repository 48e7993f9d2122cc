//! `/mail` on the admin listener: read access to held mail during an outage
//! (DESIGN.md, `[[mailbox_access]]`). People sign in (a `[[mailbox_access]]`
//! user and password, or `admin` and the admin token), search the held mail
//! of the recipients they may see, read a message (text escaped, HTML
//! sanitized, no remote content, no scripts) and download it as `.eml`.
//!
//! Guards, in front of everything here and independent of `/api`'s:
//! - sessions are server-side (random 32-byte ids in an `HttpOnly;
//!   SameSite=Strict` cookie, `Secure` behind an https proxy), ending 8 h after
//!   sign-in or 30 min after the last request, at most [`MAX_SESSIONS`];
//! - every POST carries a CSRF token (per session; for the sign-in form a
//!   double-submit cookie) compared in constant time, and a POST with a
//!   foreign `Origin` or `Sec-Fetch-Site: cross-site`/`same-site` is refused;
//! - sign-in failures are limited per user name and per client address, and
//!   logged; passwords are checked with argon2 on a blocking thread, and an
//!   unknown user costs the same as a known one;
//! - a message the viewer may not see answers 404, like an unknown one; every
//!   read and download is logged with the queue id first and the user;
//! - bodies, queries, the scan of one page and the parsing of one message are
//!   bounded; every page sends a strict Content-Security-Policy.

mod access;
mod guard;
mod render;
mod source;

pub use access::{
    ADMIN_USER, Pattern, Viewer, check_password_hash, decoy_hash, hash_password, verify_password,
};
pub use guard::{Limiter, Sessions};
pub use render::{Row, sanitize};
pub use source::{JournalSource, MailSource, MailSummary};

use super::{State, constant_time_eq, same_origin};
use crate::journal::QueueId;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, Form, FromRequestParts, Path, Query, State as AxState,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use render::Form as SearchForm;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest form body (sign-in and sign-out forms are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
/// Longest query string of a search.
const MAX_QUERY: usize = 2048;
/// Longest search field kept (characters).
const MAX_FIELD: usize = 200;
/// Most rows one list page shows.
pub const MAX_ROWS: usize = 200;
/// Most messages one list page looks at.
pub const MAX_SCAN: usize = 5_000;
/// Sessions kept at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1_000;
/// A session ends this long after sign-in ...
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// ... or this long after its last request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Failed sign-ins per user name in [`FAILURE_WINDOW`], then 429.
pub const USER_FAILURES: usize = 5;
/// Failed sign-ins per client address in [`FAILURE_WINDOW`], then 429 (more
/// than per user: behind a proxy everyone shares its address).
pub const IP_FAILURES: usize = 20;
/// The sliding window of the sign-in limits.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// User names and addresses the limits remember.
const LIMIT_KEYS: usize = 10_000;
/// Password checks running at once (each takes ~19 MiB for argon2).
const VERIFY_SLOTS: usize = 2;
/// Ids are arrival microseconds, raised by at most one per message in a
/// burst: a message whose id is this far from a date arrived on that side of it.
const ID_SLACK_MS: u64 = 60_000;
/// Bytes of each message read for the list (Subject, From).
const LIST_HEAD: usize = render::HEAD_BYTES;

const SESSION_COOKIE: &str = "bw_session";
const LOGIN_COOKIE: &str = "bw_login";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the `/mail` pages share: the admin state, sessions and sign-in limits.
struct Web {
    state: Arc<State>,
    sessions: Mutex<Sessions>,
    limits: Mutex<Limits>,
    verify: tokio::sync::Semaphore,
}

struct Limits {
    by_ip: Limiter,
    by_user: Limiter,
}

type W = AxState<Arc<Web>>;

/// The `/mail` routes, with their own guards (not `/api`'s).
pub(super) fn routes(state: Arc<State>) -> Router<Arc<State>> {
    let web = Arc::new(Web {
        state,
        sessions: Mutex::new(Sessions::new(MAX_SESSIONS, SESSION_LIFETIME, SESSION_IDLE)),
        limits: Mutex::new(Limits {
            by_ip: Limiter::new(IP_FAILURES, FAILURE_WINDOW, LIMIT_KEYS),
            by_user: Limiter::new(USER_FAILURES, FAILURE_WINDOW, LIMIT_KEYS),
        }),
        verify: tokio::sync::Semaphore::new(VERIFY_SLOTS),
    });
    Router::new()
        .route("/mail", get(list))
        .route("/mail/", get(|| async { redirect("/mail") }))
        .route("/mail/login", get(login_form).post(login))
        .route("/mail/logout", post(logout))
        .route("/mail/msg/{id}", get(show))
        .route("/mail/msg/{id}/eml", get(eml))
        .route("/mail/{*rest}", any(unknown_page))
        .layer(middleware::map_response(secure_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(web)
}

/// The client's address (from the connection; unspecified if unknown).
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// The signed-in session of a request.
struct Current {
    id: String,
    viewer: Viewer,
    csrf: String,
}

impl Web {
    /// The live session the request's cookie names, if its credential still
    /// holds (a user removed from the config, a changed password or admin
    /// token ends it).
    fn current(&self, headers: &HeaderMap) -> Option<Current> {
        let id = cookie(headers, SESSION_COOKIE).filter(|v| is_token(v))?;
        let s = self
            .sessions
            .lock()
            .expect("sessions lock")
            .touch(id, Instant::now())?;
        let viewer = if s.user == ADMIN_USER {
            let token = self.state.token.read().expect("token lock");
            token
                .as_deref()
                .filter(|t| constant_time_eq(t.as_bytes(), s.credential.as_bytes()))
                .map(|_| Viewer::admin())
        } else {
            let access = self.state.mailbox_access.read().expect("access lock");
            access
                .iter()
                .find(|m| m.user == s.user && m.password_hash == s.credential)
                .map(|m| Viewer::user(&m.user, &m.addresses))
        };
        let Some(viewer) = viewer else {
            self.sessions.lock().expect("sessions lock").remove(id);
            return None;
        };
        Some(Current {
            id: id.to_owned(),
            viewer,
            csrf: s.csrf,
        })
    }

    /// The credential `user` signed in with, if `password` is right. An
    /// unknown user is checked against a decoy hash (same time taken).
    async fn check(&self, user: &str, password: String) -> Option<String> {
        if user == ADMIN_USER {
            let token = self.state.token.read().expect("token lock").clone();
            if let Some(t) = token {
                return constant_time_eq(password.as_bytes(), t.as_bytes()).then_some(t);
            }
        }
        let hash = self
            .state
            .mailbox_access
            .read()
            .expect("access lock")
            .iter()
            .find(|m| m.user == user)
            .map(|m| m.password_hash.clone());
        let _slot = self.verify.acquire().await.ok()?;
        let phc = hash.clone();
        let ok = tokio::task::spawn_blocking(move || match &phc {
            Some(h) => verify_password(&password, h),
            None => {
                verify_password(&password, decoy_hash());
                false
            }
        })
        .await
        .unwrap_or(false);
        ok.then_some(hash).flatten()
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn error(status: StatusCode, title: &str, text: &str, cur: Option<&Current>) -> Response {
    let signed_in = cur.map(|c| (c.viewer.user.as_str(), c.csrf.as_str()));
    html(status, render::error_page(title, text, signed_in))
}

fn not_found(cur: &Current) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such message among the mail you may read. It may have been delivered since, \
         or it is for a recipient you are not allowed to see.",
        Some(cur),
    )
}

/// A cookie value of ours: 64 hexadecimal digits.
fn is_token(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 32 random bytes from the operating system, as hex.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// True if the request reached the TLS proxy in front of us over https
/// (`X-Forwarded-Proto: https` or `Forwarded: proto=https`).
fn is_https(headers: &HeaderMap) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let forwarded_proto = get("x-forwarded-proto")
        .split(',')
        .next()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = get("forwarded")
        .split([';', ','])
        .any(|kv| kv.trim().eq_ignore_ascii_case("proto=https"));
    forwarded_proto || forwarded
}

/// `name=value` with our attributes; `max_age = Some(0)` deletes it.
fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/mail");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("bw_invalid=1"))
}

/// Refuses a POST from another site (see `check` in admin/mod.rs). Our
/// pages send `Referrer-Policy: no-referrer`, under which browsers send
/// `Origin: null` even for their own forms; that is accepted only when the
/// browser also says `Sec-Fetch-Site: same-origin` (a header no page can set).
fn same_site(headers: &HeaderMap) -> Result<(), &'static str> {
    let site = headers.get("sec-fetch-site");
    if let Some(site) = site
        && !matches!(site.to_str(), Ok("none" | "same-origin"))
    {
        return Err("This form was sent from another site, so it was refused.");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let own_null = origin == "null" && site.is_some_and(|s| s == "same-origin");
        if !own_null && !origin.to_str().is_ok_and(|o| same_origin(o, host)) {
            return Err("This form was sent from another origin, so it was refused.");
        }
    }
    Ok(())
}

fn form_refusal(e: &FormRejection) -> Response {
    let status = match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(
        status,
        "Form not understood",
        &format!(
            "The form could not be read ({}). Open the page again and retry.",
            e.body_text()
        ),
        None,
    )
}

/// Every `/mail` answer: the security headers, and a page for a wrong method.
async fn secure_headers(res: Response) -> Response {
    let mut res = if res.status() == StatusCode::METHOD_NOT_ALLOWED
        && !res.headers().contains_key(header::CONTENT_TYPE)
    {
        let allow = res.headers().get(header::ALLOW).cloned();
        let mut page = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This address does not take that kind of request. Use the links and forms of these pages.",
            None,
        );
        if let Some(a) = allow {
            page.headers_mut().insert(header::ALLOW, a);
        }
        page
    } else {
        res
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn unknown_page(AxState(web): W, headers: HeaderMap) -> Response {
    let cur = web.current(&headers);
    error(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page here.",
        cur.as_ref(),
    )
}

/// A fresh sign-in form (with its CSRF cookie).
fn login_page(headers: &HeaderMap, status: StatusCode, message: Option<&str>) -> Response {
    let Some(csrf) = random_token() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot sign in now",
            "The system's random number source failed; try again, and check the relay's log.",
            None,
        );
    };
    let mut res = html(status, render::login(message, &csrf));
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &csrf, Some(3600), is_https(headers)),
    );
    res
}

async fn login_form(AxState(web): W, headers: HeaderMap) -> Response {
    if web.current(&headers).is_some() {
        return redirect("/mail");
    }
    login_page(&headers, StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    AxState(web): W,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if let Err(why) = same_site(&headers) {
        return error(StatusCode::FORBIDDEN, "Refused", why, None);
    }
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => return form_refusal(&e),
    };
    let want = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !is_token(want) || !constant_time_eq(want.as_bytes(), f.csrf.as_bytes()) {
        return error(
            StatusCode::FORBIDDEN,
            "Sign-in form expired",
            "This sign-in form has expired or was not sent from this site's sign-in page \
             (cookies must be allowed). Open the sign-in page again and retry.",
            None,
        );
    }
    let user: String = f.user.trim().chars().take(64).collect();
    if user.is_empty() || f.password.is_empty() {
        return login_page(
            &headers,
            StatusCode::BAD_REQUEST,
            Some("Enter a user name and a password."),
        );
    }
    let now = Instant::now();
    let (ip_key, user_key) = (ip.to_string(), user.to_lowercase());
    {
        let mut l = web.limits.lock().expect("limits lock");
        let wait = l
            .by_ip
            .blocked(&ip_key, now)
            .max(l.by_user.blocked(&user_key, now));
        if let Some(wait) = wait {
            drop(l);
            tracing::warn!(
                "mailbox sign-in refused for user {user:?} from {ip}: too many failed attempts (limited for {}s)",
                wait.as_secs()
            );
            let minutes = wait.as_secs().div_ceil(60);
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins",
                &format!(
                    "There were too many failed sign-ins for this user name or from this address. \
                     Wait {minutes} minute(s) and try again. If you did not make them, tell your \
                     administrator: the attempts are in the relay's log."
                ),
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return res;
        }
        // Counted now and taken back on success, so parallel guesses cannot
        // pass the limit while their passwords are being checked.
        l.by_ip.fail(&ip_key, now);
        l.by_user.fail(&user_key, now);
    }
    let password = f.password;
    let Some(credential) = web.check(&user, password).await else {
        tracing::warn!("mailbox sign-in failed for user {user:?} from {ip}");
        return login_page(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user name or password."),
        );
    };
    {
        let mut l = web.limits.lock().expect("limits lock");
        l.by_ip.forgive(&ip_key, now);
        l.by_user.clear(&user_key);
    }
    let (Some(id), Some(csrf)) = (random_token(), random_token()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot sign in now",
            "The system's random number source failed; try again, and check the relay's log.",
            None,
        );
    };
    web.sessions.lock().expect("sessions lock").insert(
        id.clone(),
        &user,
        &credential,
        csrf,
        Instant::now(),
    );
    tracing::info!(user = %user, "mailbox user {user} signed in from {ip} via /mail");
    let secure = is_https(&headers);
    let mut res = redirect("/mail");
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, None, secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", Some(0), secure),
    );
    res
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    AxState(web): W,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    if let Err(why) = same_site(&headers) {
        return error(StatusCode::FORBIDDEN, "Refused", why, None);
    }
    let Some(cur) = web.current(&headers) else {
        return redirect("/mail/login");
    };
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => return form_refusal(&e),
    };
    if !constant_time_eq(cur.csrf.as_bytes(), f.csrf.as_bytes()) {
        return error(
            StatusCode::FORBIDDEN,
            "Sign-out refused",
            "This sign-out form was not sent from this session's pages. Reload the page and try again.",
            Some(&cur),
        );
    }
    web.sessions.lock().expect("sessions lock").remove(&cur.id);
    tracing::info!(user = %cur.viewer.user, "mailbox user {} signed out of /mail", cur.viewer.user);
    let mut res = redirect("/mail/login");
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Some(0), is_https(&headers)),
    );
    res
}

/// `GET /mail` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    to: Option<String>,
    from: Option<String>,
    subject: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
}

/// A search, checked: needles lower-cased, dates as milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Search {
    /// Part of a recipient the viewer may see.
    pub to: Option<String>,
    /// Part of the envelope sender or the header From.
    pub from: Option<String>,
    /// Part of the subject.
    pub subject: Option<String>,
    /// Arrived at or after (ms).
    pub since_ms: Option<u64>,
    /// Arrived before (ms).
    pub until_ms: Option<u64>,
}

fn day_start_ms(s: &str) -> Result<u64, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis().max(0) as u64)
        .ok_or_else(|| format!("{s:?} is not a date: use YYYY-MM-DD"))
}

fn parse_id(s: &str) -> Option<QueueId> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    s.parse().ok()
}

fn field(v: &Option<String>) -> String {
    v.as_deref()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

impl SearchQuery {
    fn check(&self) -> (SearchForm, Result<(Search, Option<QueueId>), String>) {
        let form = SearchForm {
            to: field(&self.to),
            from: field(&self.from),
            subject: field(&self.subject),
            since: field(&self.since),
            until: field(&self.until),
        };
        let needle = |s: &str| (!s.is_empty()).then(|| s.to_lowercase());
        let check = || {
            let since_ms = match form.since.as_str() {
                "" => None,
                s => Some(day_start_ms(s).map_err(|e| format!("From date: {e}"))?),
            };
            let until_ms = match form.until.as_str() {
                "" => None,
                s => Some(day_start_ms(s).map_err(|e| format!("To date: {e}"))? + 86_400_000),
            };
            let before = match self.before.as_deref() {
                None | Some("") => None,
                Some(b) => Some(parse_id(b).ok_or("the page cursor is not a queue id")?),
            };
            Ok((
                Search {
                    to: needle(&form.to),
                    from: needle(&form.from),
                    subject: needle(&form.subject),
                    since_ms,
                    until_ms,
                },
                before,
            ))
        };
        let checked = check();
        (form, checked)
    }
}

/// One page of the search: the rows `viewer` may see that match, newest
/// first, at most [`MAX_ROWS`], looking at no more than [`MAX_SCAN`]
/// messages; and where the next page starts (`None` at the end).
pub fn search(
    source: &dyn MailSource,
    viewer: &Viewer,
    q: &Search,
    before: Option<QueueId>,
) -> Result<(Vec<Row>, Option<QueueId>), String> {
    let start = before.or_else(|| {
        q.until_ms
            .map(|u| QueueId(u.saturating_add(ID_SLACK_MS).saturating_mul(1000)))
    });
    let (summaries, next) = source.newest(start, MAX_SCAN)?;
    let mut rows = Vec::new();
    let mut last = None;
    for s in summaries {
        if rows.len() >= MAX_ROWS {
            return Ok((rows, last));
        }
        last = Some(s.id);
        if let Some(since) = q.since_ms {
            if (s.id.0 / 1000).saturating_add(ID_SLACK_MS) < since {
                return Ok((rows, None)); // this one and all older arrived before
            }
            if s.arrived_ms < since {
                continue;
            }
        }
        if q.until_ms.is_some_and(|u| s.arrived_ms >= u) {
            continue;
        }
        let to: Vec<String> = viewer
            .visible(&s.recipients)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if to.is_empty() {
            continue;
        }
        if let Some(n) = &q.to
            && !to.iter().any(|r| r.to_lowercase().contains(n))
        {
            continue;
        }
        let Some(head) = source.head(s.id, LIST_HEAD)? else {
            continue; // gone meanwhile
        };
        let (subject, header_from) = render::head_fields(&head[..head.len().min(LIST_HEAD)]);
        if let Some(n) = &q.from {
            let hit = s.from.to_lowercase().contains(n)
                || header_from
                    .as_deref()
                    .is_some_and(|f| f.to_lowercase().contains(n));
            if !hit {
                continue;
            }
        }
        if let Some(n) = &q.subject
            && !subject.to_lowercase().contains(n)
        {
            continue;
        }
        let from = header_from.unwrap_or_else(|| match s.from.as_str() {
            "" => "<>".into(),
            f => f.to_owned(),
        });
        rows.push(Row {
            summary: s,
            to,
            from,
            subject,
        });
    }
    Ok((rows, next))
}

async fn list(AxState(web): W, headers: HeaderMap, uri: Uri) -> Response {
    let Some(cur) = web.current(&headers) else {
        return redirect("/mail/login");
    };
    if uri.query().is_some_and(|q| q.len() > MAX_QUERY) {
        return error(
            StatusCode::URI_TOO_LONG,
            "Search too long",
            "This search is too long; use shorter search terms.",
            Some(&cur),
        );
    }
    let q = match Query::<SearchQuery>::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Search not understood",
                &format!(
                    "The search could not be read ({}). Use the search form.",
                    e.body_text()
                ),
                Some(&cur),
            );
        }
    };
    let (form, checked) = q.check();
    let (search_q, before) = match checked {
        Ok(c) => c,
        Err(e) => {
            return html(
                StatusCode::BAD_REQUEST,
                render::list(&cur.viewer, &cur.csrf, &form, Some(&e), &[], None),
            );
        }
    };
    let source = web.state.mail.clone();
    let viewer = cur.viewer.clone();
    let found =
        tokio::task::spawn_blocking(move || search(source.as_ref(), &viewer, &search_q, before))
            .await;
    match found {
        Ok(Ok((rows, next))) => html(
            StatusCode::OK,
            render::list(&cur.viewer, &cur.csrf, &form, None, &rows, next),
        ),
        Ok(Err(e)) => {
            tracing::error!("/mail search failed: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Mail store unavailable",
                &format!("The held mail cannot be read now ({e}). Try again in a minute."),
                Some(&cur),
            )
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Search failed",
            "The search failed; try again, and check the relay's log.",
            Some(&cur),
        ),
    }
}

/// What loading one message for a viewer gave.
enum Loaded<T> {
    Found(T),
    /// Unknown, or not theirs (the same to them).
    Missing,
    Failed(String),
}

/// Loads message `id` for `viewer` on a blocking thread and turns it into
/// `T` there; a message with no recipient the viewer may see is missing.
async fn load<T: Send + 'static>(
    web: &Web,
    viewer: &Viewer,
    id: QueueId,
    make: impl FnOnce(&Viewer, MailSummary, Vec<u8>) -> T + Send + 'static,
) -> Loaded<T> {
    let source = web.state.mail.clone();
    let viewer = viewer.clone();
    let done = tokio::task::spawn_blocking(move || match source.message(id) {
        Ok(Some((summary, bytes))) => {
            if viewer.visible(&summary.recipients).is_empty() {
                tracing::warn!(
                    user = %viewer.user,
                    "{id} refused to mailbox user {}: none of its recipients is theirs",
                    viewer.user
                );
                return Loaded::Missing;
            }
            Loaded::Found(make(&viewer, summary, bytes))
        }
        Ok(None) => Loaded::Missing,
        Err(e) => Loaded::Failed(e),
    })
    .await;
    done.unwrap_or_else(|_| Loaded::Failed("reading the message failed".into()))
}

fn unavailable(cur: &Current, why: &str) -> Response {
    tracing::error!("/mail: reading a message failed: {why}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Mail store unavailable",
        &format!("The message cannot be read now ({why}). Try again in a minute."),
        Some(cur),
    )
}

async fn show(AxState(web): W, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(cur) = web.current(&headers) else {
        return redirect("/mail/login");
    };
    let Some(id) = parse_id(&id) else {
        return not_found(&cur);
    };
    let csrf = cur.csrf.clone();
    let page = load(&web, &cur.viewer, id, move |viewer, summary, bytes| {
        render::message(viewer, &csrf, &summary, &bytes)
    })
    .await;
    match page {
        Loaded::Found(page) => {
            let user = &cur.viewer.user;
            tracing::info!(user = %user, "{id} read by mailbox user {user} via /mail");
            html(StatusCode::OK, page)
        }
        Loaded::Missing => not_found(&cur),
        Loaded::Failed(e) => unavailable(&cur, &e),
    }
}

async fn eml(AxState(web): W, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(cur) = web.current(&headers) else {
        return redirect("/mail/login");
    };
    let Some(id) = parse_id(&id) else {
        return not_found(&cur);
    };
    match load(&web, &cur.viewer, id, |_, _, bytes| bytes).await {
        Loaded::Found(bytes) => {
            let user = &cur.viewer.user;
            tracing::info!(user = %user, "{id} downloaded as .eml by mailbox user {user} via /mail");
            let disposition = format!("attachment; filename=\"{id}.eml\"");
            let mut res = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "message/rfc822")],
                bytes,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            res
        }
        Loaded::Missing => not_found(&cur),
        Loaded::Failed(e) => unavailable(&cur, &e),
    }
}

#[cfg(test)]
mod tests;
