//! DNS blocklists (`[[dnsbl]]`, RFC 5782): the client's address, reversed,
//! looked up under each zone when the connection opens (in the background,
//! bounded by `auth.dns_timeout`). A listing (an A record in 127.0.0.0/8, not
//! 127.255.255.0/24, which lists use for errors) of a `reject` zone refuses
//! the session at its first command with `554 5.7.1` naming the zone; a `tag`
//! zone adds an `X-Breakwater-DNSBL:` header to each message of the session
//! and a log line. A lookup that fails or times out lists nobody.

use super::reply::Reply;
use mail_auth::MessageAuthenticator;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// One `[[dnsbl]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dnsbl {
    /// The list's zone, e.g. `zen.example.org`.
    pub zone: String,
    /// What a listing does.
    pub action: Action,
}

/// What a listing does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `554 5.7.1` at the first command.
    Reject,
    /// A header on each message, and a log line.
    Tag,
}

/// A zone that lists the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub zone: String,
    pub action: Action,
    /// The A record it answered (e.g. 127.0.0.2).
    pub answer: Ipv4Addr,
}

/// The name to look up for `ip` under `zone`: `4.3.2.1.zone.` for 1.2.3.4,
/// the 32 nibbles reversed for IPv6 (an IPv4-mapped address as IPv4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => query_name(IpAddr::V4(v4), zone),
            None => {
                let mut s = String::with_capacity(64 + zone.len() + 2);
                for b in v6.octets().iter().rev() {
                    s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
                }
                s.push_str(zone);
                s.push('.');
                s
            }
        },
    }
}

/// True for an answer that means "listed".
pub fn is_listing(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 127 && !(o[1] == 255 && o[2] == 255)
}

/// Looks `ip` up in every zone at once, within `limit`; the zones that list it.
pub async fn check(
    auth: Arc<MessageAuthenticator>,
    zones: Vec<Dnsbl>,
    ip: IpAddr,
    limit: Duration,
) -> Vec<Hit> {
    let lookups = zones.into_iter().map(|z| {
        let auth = auth.clone();
        async move {
            let name = query_name(ip, &z.zone);
            let answer = match tokio::time::timeout(
                limit,
                auth.resolver().ipv4_lookup(name.as_str()),
            )
            .await
            {
                Ok(Ok(lookup)) => lookup.answers().iter().find_map(|r| match &r.data {
                    mail_auth::hickory_resolver::proto::rr::RData::A(a) if is_listing(a.0) => {
                        Some(a.0)
                    }
                    _ => None,
                }),
                Ok(Err(e)) => {
                    if !e.is_no_records_found() && !e.is_nx_domain() {
                        tracing::info!(client = %ip, zone = %z.zone, "DNSBL lookup failed: {e}");
                    }
                    None
                }
                Err(_) => {
                    tracing::info!(client = %ip, zone = %z.zone, "DNSBL lookup timed out");
                    None
                }
            };
            answer.map(|answer| Hit {
                zone: z.zone.trim_end_matches('.').to_owned(),
                action: z.action,
                answer,
            })
        }
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Starts the session's lookups in the background (nothing without
/// `[[dnsbl]]`).
pub fn start(s: &mut super::session::Session) {
    if s.cfg.dnsbl.is_empty() {
        return;
    }
    let auth = match s.ctx.auth.authenticator(&s.cfg.auth) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(client = %s.client_ip, "no DNSBL checks: {e}");
            return;
        }
    };
    let limit = s.cfg.auth.dns_timeout.0;
    s.dnsbl = Some(tokio::spawn(check(
        auth,
        s.cfg.dnsbl.clone(),
        s.client_ip,
        limit,
    )));
}

/// At the first command (`line`): waits for the lookups (bounded) and
/// returns the refusal if a `reject` zone lists the client (QUIT still gets
/// its `221`). Later commands return at once.
pub async fn verdict(s: &mut super::session::Session, line: &[u8]) -> Option<Reply> {
    let lookups = s.dnsbl.take()?;
    s.dnsbl_hits = lookups.await.unwrap_or_default();
    for h in &s.dnsbl_hits {
        tracing::info!(client = %s.client_ip, zone = %h.zone, answer = %h.answer, action = ?h.action, "client listed by DNSBL");
    }
    let quit = line
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"QUIT"));
    if quit {
        return None;
    }
    refusal(s.client_ip, &s.dnsbl_hits)
}

/// The reply refusing a client listed by a `reject` zone, if it is.
pub fn refusal(ip: IpAddr, hits: &[Hit]) -> Option<Reply> {
    hits.iter().find(|h| h.action == Action::Reject).map(|h| {
        Reply::new(
            554,
            "5.7.1",
            format!(
                "Service unavailable; client [{ip}] blocked using {}",
                h.zone
            ),
        )
    })
}

/// The `X-Breakwater-DNSBL:` header lines for the `tag` zones that list the
/// client (empty if none).
pub fn tag_header(ip: IpAddr, hits: &[Hit]) -> Vec<u8> {
    let mut out = Vec::new();
    for h in hits.iter().filter(|h| h.action == Action::Tag) {
        out.extend_from_slice(
            format!(
                "X-Breakwater-DNSBL: {}; client={ip}; answer={}\r\n",
                h.zone, h.answer
            )
            .as_bytes(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reversed() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.test"),
            "99.2.0.192.bl.test."
        );
        assert_eq!(
            query_name("::ffff:127.0.0.1".parse().unwrap(), "bl.test."),
            "1.0.0.127.bl.test."
        );
        assert_eq!(
            query_name("2001:db8::1".parse().unwrap(), "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test."
        );
    }

    #[test]
    fn listing_answers() {
        assert!(is_listing(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(is_listing(Ipv4Addr::new(127, 0, 0, 10)));
        assert!(!is_listing(Ipv4Addr::new(127, 255, 255, 254)));
        assert!(!is_listing(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn refusal_and_tag() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let hits = vec![
            Hit {
                zone: "tag.test".into(),
                action: Action::Tag,
                answer: Ipv4Addr::new(127, 0, 0, 2),
            },
            Hit {
                zone: "block.test".into(),
                action: Action::Reject,
                answer: Ipv4Addr::new(127, 0, 0, 2),
            },
        ];
        let r = refusal(ip, &hits).unwrap();
        assert_eq!((r.code, &*r.enhanced), (554, "5.7.1"));
        assert!(r.text.contains("block.test"));
        assert_eq!(
            tag_header(ip, &hits),
            b"X-Breakwater-DNSBL: tag.test; client=127.0.0.1; answer=127.0.0.2\r\n"
        );
        assert!(refusal(ip, &hits[..1]).is_none());
        assert!(tag_header(ip, &[]).is_empty());
    }
}
