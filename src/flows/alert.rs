//! Alerts that do not depend on what failed: a plain mail to `alert.to`,
//! journaled and retried like any message but routed to `alert.relay` (or the
//! recipients' MX), never through the backends, never held by quiet time, an
//! outage or a hold; and, with `alert.webhook`, a JSON POST kept as a journal
//! document until the endpoint answers 2xx.

use crate::config::{self, Config};
use crate::delivery::Queue;
use crate::journal::{self, Envelope, Journal, MailParams, Purpose, RcptState, Recipient, Record};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Journal document prefix of webhook posts not yet answered with 2xx.
pub const WEBHOOK_PREFIX: &str = "webhook/";

/// One alert: something began (`firing`) or ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `flow_silent`, `backend_down`, `queue_age`.
    pub kind: String,
    /// The flow or backend it is about (`queue` for the queue).
    pub name: String,
    /// True when the condition begins, false when it ends.
    pub firing: bool,
    /// Since when the condition holds (or held), RFC 3339.
    pub since: String,
    /// One line.
    pub summary: String,
    /// What it means and what to check, a few lines of plain text.
    pub text: String,
    /// What of it is journaled so far (a retry does the rest).
    #[serde(skip)]
    pub sent: Sent,
}

/// How far raising an [`Alert`] got, for retries after the journal refused it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Its webhook post is journaled (a retried alert does not post twice).
    pub webhook: bool,
    /// How many of its mails (one per recipient domain without
    /// `alert.relay`) are journaled: a retry sends only the rest.
    pub mails: usize,
    /// The journal refused it once already (that was logged).
    pub refused: bool,
}

/// Problems in `[alert]`, each with its key path.
pub fn validate(a: &config::Alert) -> Vec<(String, String)> {
    let mut p = Vec::new();
    for (i, to) in a.to.iter().enumerate() {
        if !is_address(to) {
            p.push((
                format!("alert.to[{i}]"),
                format!("{to:?} is not an address"),
            ));
        }
    }
    if let Some(from) = &a.from
        && !is_address(from)
    {
        p.push(("alert.from".into(), format!("{from:?} is not an address")));
    }
    if let Some(r) = &a.relay {
        let ok = r
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
        if !ok {
            p.push(("alert.relay".into(), format!("{r:?} is not host:port")));
        }
    }
    if let Some(w) = &a.webhook
        && let Err(e) = Webhook::parse(w)
    {
        p.push(("alert.webhook".into(), e));
    }
    for (key, d) in [
        ("alert.backend_down", a.backend_down),
        ("alert.queue_age", a.queue_age),
    ] {
        if d.is_some_and(|d| d.0 < Duration::from_secs(1)) {
            p.push((key.into(), "must be at least 1s".into()));
        }
    }
    p
}

fn is_address(s: &str) -> bool {
    s.rsplit_once('@').is_some_and(|(l, d)| {
        !l.is_empty()
            && !d.is_empty()
            && !s.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
    })
}

/// Sends `alert` by every configured means: logs it, journals an alert mail
/// to `alert.to` (handed to the dispatcher), and journals a webhook post.
/// `Err` only if the journal refused (the caller tries again later).
pub async fn raise(
    journal: &Journal,
    queue: &Queue,
    config: &Config,
    alert: &mut Alert,
    now_ms: u64,
) -> Result<(), journal::Error> {
    if alert.firing {
        tracing::warn!("alert: {}", alert.summary);
    } else {
        tracing::info!("alert resolved: {}", alert.summary);
    }
    if let Some(url) = config
        .alert
        .webhook
        .as_ref()
        .filter(|_| !alert.sent.webhook)
    {
        let post = Post {
            url: url.clone(),
            body: serde_json::to_vec(&WebhookBody::of(alert, &config.hostname)).unwrap_or_default(),
            created_ms: now_ms,
            attempts: 0,
            next_ms: now_ms,
        };
        let key = format!("{WEBHOOK_PREFIX}{}", journal.next_id());
        journal
            .set_document(key, Some(serde_json::to_vec(&post).unwrap_or_default()))
            .await?;
        alert.sent.webhook = true;
    }
    // Without alert.relay each domain's MX gets its own message (an MX takes
    // mail for its own domain only).
    let groups: Vec<Vec<String>> = if config.alert.relay.is_some() {
        vec![config.alert.to.clone()]
    } else {
        let mut by_domain: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for a in &config.alert.to {
            let domain = a
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            by_domain.entry(domain).or_default().push(a.clone());
        }
        by_domain.into_values().collect()
    };
    let groups: Vec<Vec<String>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
    for to in groups.iter().skip(alert.sent.mails) {
        queue_mail(journal, queue, config, alert, to, now_ms).await?;
        alert.sent.mails += 1;
    }
    Ok(())
}

/// Journals one alert mail to `to` and hands it to the dispatcher.
async fn queue_mail(
    journal: &Journal,
    queue: &Queue,
    config: &Config,
    alert: &Alert,
    to: &[String],
    now_ms: u64,
) -> Result<(), journal::Error> {
    let id = journal.next_id();
    let body = compose(config, alert, id, now_ms);
    let record = Record {
        id,
        message: id,
        purpose: Purpose::Alert,
        envelope: Envelope {
            mail_from: config.alert.from.clone().unwrap_or_default(),
            params: MailParams::default(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: config.hostname.clone(),
            tls: None,
            arrived_ms: now_ms,
        },
        rcpts: to
            .iter()
            .map(|a| Recipient {
                address: a.clone(),
                orcpt: None,
                notify: smtp_proto::RCPT_NOTIFY_NEVER,
                state: RcptState::Pending,
                dsn_sent: false,
            })
            .collect(),
        size: body.len() as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        delay_warned: false,
        history: Vec::new(),
    };
    journal.enqueue_beyond_limit(&record, body).await?;
    tracing::info!(
        "{} alert mail queued to <{}>: {}",
        id,
        to.join(">,<"),
        alert.summary
    );
    queue.enqueued(record);
    Ok(())
}

/// The alert mail: plain text, CRLF, lines well under 998 octets.
pub fn compose(config: &Config, alert: &Alert, id: journal::QueueId, now_ms: u64) -> Vec<u8> {
    let host = &config.hostname;
    let from = config
        .alert
        .from
        .clone()
        .unwrap_or_else(|| format!("MAILER-DAEMON@{host}"));
    let date = chrono::DateTime::from_timestamp_millis(now_ms as i64)
        .unwrap_or_default()
        .to_rfc2822();
    let state = if alert.firing { "FIRING" } else { "RESOLVED" };
    let mut m = String::new();
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!("Date: {date}"));
    line(&format!("From: breakwater on {host} <{from}>"));
    line(&format!("To: {}", config.alert.to.join(",\r\n ")));
    line(&format!(
        "Subject: [breakwater {host}] {state}: {}",
        clip(&alert.summary, 180)
    ));
    line(&format!("Message-ID: <{id}.alert@{host}>"));
    line("Auto-Submitted: auto-generated");
    line(&format!(
        "X-Breakwater-Alert: {} {} {}",
        alert.kind,
        alert.name,
        if alert.firing { "firing" } else { "resolved" }
    ));
    line("MIME-Version: 1.0");
    line("Content-Type: text/plain; charset=utf-8");
    line("Content-Transfer-Encoding: 8bit");
    line("");
    for l in alert.text.lines() {
        line(&clip(l, 900));
    }
    line("");
    line(&format!("-- breakwater on {host}"));
    m.into_bytes()
}

/// `s` cut to at most `max` bytes on a character boundary, with control
/// characters (CR, LF among them) made visible.
fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.into()
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// The webhook's JSON body.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    relay: &'a str,
    kind: &'a str,
    name: &'a str,
    status: &'a str,
    since: &'a str,
    summary: &'a str,
    text: &'a str,
}

impl<'a> WebhookBody<'a> {
    fn of(a: &'a Alert, relay: &'a str) -> WebhookBody<'a> {
        WebhookBody {
            relay,
            kind: &a.kind,
            name: &a.name,
            status: if a.firing { "firing" } else { "resolved" },
            since: &a.since,
            summary: &a.summary,
            text: &a.text,
        }
    }
}

/// A webhook post waiting in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Post {
    /// Where to (the `alert.webhook` when it was raised).
    pub url: String,
    /// The JSON body.
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
    /// When it was raised.
    pub created_ms: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before.
    pub next_ms: u64,
}

mod body_text {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// Delay before retry `attempts` (1, 2, 4 ... seconds, at most 10 minutes).
pub fn backoff_ms(attempts: u32) -> u64 {
    1000u64.saturating_mul(1 << attempts.min(10)).min(600_000)
}

/// A parsed `http://host:port/path` webhook address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `host:port`.
    pub authority: String,
    /// `host` as written (the `Host:` header).
    pub host: String,
    /// `/path?query`.
    pub path: String,
}

impl Webhook {
    /// Parses a webhook URL. Only `http://` (put a local forwarder in front of
    /// an HTTPS endpoint).
    pub fn parse(url: &str) -> Result<Webhook, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{url:?}: only http:// webhooks are supported (use a local forwarder for https)"
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || url.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(format!("{url:?} is not an http://host[:port]/path address"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.to_owned(),
                p.parse::<u16>().map_err(|_| format!("{url:?}: bad port"))?,
            ),
            _ => (authority.to_owned(), 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Webhook {
            authority: format!("{host}:{port}"),
            host,
            path: path.to_owned(),
        })
    }

    /// POSTs `body` (JSON); `Ok` on a 2xx answer within `timeout`.
    pub async fn post(&self, body: &[u8], timeout: Duration) -> Result<u16, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let work = async {
            let mut s = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("connect {}: {e}", self.authority))?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: breakwater/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.path,
                self.host,
                env!("CARGO_PKG_VERSION"),
                body.len()
            );
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(body).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1024];
            let mut n = 0;
            while n < buf.len() && !buf[..n].contains(&b'\n') {
                let k = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| "no HTTP status line in the answer".to_string())?;
            if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// Posts the webhook documents oldest first, while they are due and answered
/// 2xx; the first that fails is rescheduled and the rest wait behind it, so
/// the endpoint sees "resolved" only after the "firing" it resolves. A post
/// older than `give_up_ms` is dropped. Returns how many were delivered.
pub async fn post_due(journal: &Journal, clock: crate::delivery::Clock, give_up_ms: u64) -> usize {
    let Ok(docs) = journal.documents(WEBHOOK_PREFIX) else {
        return 0;
    };
    let mut delivered = 0;
    for (key, doc) in docs {
        let now_ms = clock.now_ms();
        let Ok(mut post) = serde_json::from_slice::<Post>(&doc) else {
            tracing::warn!("journal document {key:?} is not a webhook post; removed");
            let _ = journal.set_document(key, None).await;
            continue;
        };
        if post.next_ms > now_ms {
            break;
        }
        let result = match Webhook::parse(&post.url) {
            Ok(w) => w.post(&post.body, Duration::from_secs(10)).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(status) => {
                tracing::info!("alert webhook {} answered {status}", post.url);
                delivered += 1;
                let _ = journal.set_document(key, None).await;
            }
            Err(e) if now_ms.saturating_sub(post.created_ms) > give_up_ms => {
                tracing::error!(
                    "alert webhook {}: {e}; given up after {} attempts",
                    post.url,
                    post.attempts + 1
                );
                let _ = journal.set_document(key, None).await;
            }
            Err(e) => {
                post.attempts += 1;
                post.next_ms = now_ms + backoff_ms(post.attempts);
                tracing::warn!(
                    "alert webhook {}: {e}; retry {} in {} s",
                    post.url,
                    post.attempts,
                    backoff_ms(post.attempts) / 1000
                );
                let _ = journal
                    .set_document(key, Some(serde_json::to_vec(&post).unwrap_or_default()))
                    .await;
                break;
            }
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_addresses() {
        let w = Webhook::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(w.authority, "127.0.0.1:8080");
        assert_eq!(w.path, "/hook?x=1");
        assert_eq!(
            Webhook::parse("http://alerts.example.net")
                .unwrap()
                .authority,
            "alerts.example.net:80"
        );
        for bad in [
            "https://x/",
            "http://",
            "http://a b/",
            "http://u@h/",
            "http://h:99999/",
            "ftp://h/",
        ] {
            assert!(Webhook::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(3), 8000);
        assert_eq!(backoff_ms(40), 600_000);
    }

    #[test]
    fn alert_mail_is_plain_crlf_and_bounded() {
        let config = Config::parse(
            "hostname = \"relay.test\"\n[relay]\ndomains=[\"example.com\"]\n[[backend]]\nname=\"b\"\naddress=\"127.0.0.1:1\"\n[alert]\nto=[\"oncall@example.net\"]\n",
        )
        .unwrap();
        let a = Alert {
            sent: Sent::default(),
            kind: "flow_silent".into(),
            name: "audit".into(),
            firing: true,
            since: "2026-12-02T08:00:00+00:00".into(),
            summary: "flow audit silent\r\nBcc: x@y".into(),
            text: "line one\nline two".into(),
        };
        let m = compose(&config, &a, journal::QueueId(42), 0);
        let text = String::from_utf8(m.clone()).unwrap();
        assert!(text.contains(
            "Subject: [breakwater relay.test] FIRING: flow audit silent\\r\\nBcc: x@y\r\n"
        ));
        assert!(!text.contains("\nBcc:"), "no header injection");
        assert!(text.contains("From: breakwater on relay.test <MAILER-DAEMON@relay.test>\r\n"));
        assert!(text.contains("\r\n\r\nline one\r\nline two\r\n"));
        assert!(
            m.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
            "CRLF only"
        );
    }

    #[test]
    fn alert_config_problems_name_their_keys() {
        let a = config::Alert {
            to: vec!["nobody".into()],
            relay: Some("nohost".into()),
            webhook: Some("https://x/".into()),
            backend_down: Some(config::Dur(Duration::from_millis(10))),
            ..Default::default()
        };
        let keys: Vec<String> = validate(&a).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "alert.to[0]",
                "alert.relay",
                "alert.webhook",
                "alert.backend_down"
            ]
        );
    }
}
