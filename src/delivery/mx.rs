//! Where a DSN goes: `[bounce] relay` if set, else the MX hosts of the sender's
//! domain (RFC 5321 5.1: by preference, the domain itself if it has no MX;
//! RFC 7505: a null MX means the domain takes no mail at all).

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use tokio::sync::OnceCell;

/// Next hops for one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hops {
    /// Try these `host:port`s in order.
    Try(Vec<String>),
    /// The domain publishes a null MX: no mail can be delivered, ever.
    NullMx,
    /// The lookup failed for now.
    Unresolved(String),
}

/// Resolves next hops for DSNs; the system resolver is set up on first use.
pub struct Router {
    relay: Option<String>,
    resolver: OnceCell<Result<TokioResolver, String>>,
}

impl Router {
    /// Routes everything to `relay` when given, else by MX.
    pub fn new(relay: Option<String>) -> Router {
        Router {
            relay,
            resolver: OnceCell::new(),
        }
    }

    /// The hops for mail to `address`.
    pub async fn hops(&self, address: &str) -> Hops {
        if let Some(relay) = &self.relay {
            return Hops::Try(vec![relay.clone()]);
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Hops::Unresolved(format!("no domain in <{address}>"));
        };
        let resolver = self
            .resolver
            .get_or_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| format!("no resolver: {e}"))
            })
            .await;
        let resolver = match resolver {
            Ok(r) => r,
            Err(e) => return Hops::Unresolved(e.clone()),
        };
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match resolver.mx_lookup(fqdn.as_str()).await {
            Ok(mx) => {
                let records: Vec<(u16, String)> = mx
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                from_mx(records, domain)
            }
            Err(e) if e.is_no_records_found() => Hops::Try(vec![format!("{domain}:25")]),
            Err(e) => Hops::Unresolved(format!("MX lookup for {domain}: {e}")),
        }
    }
}

/// Orders MX records (preference, exchange) into hops; pure, tested with a table.
pub fn from_mx(mut records: Vec<(u16, String)>, domain: &str) -> Hops {
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return Hops::NullMx;
    }
    records.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
    if records.is_empty() {
        return Hops::Try(vec![format!("{domain}:25")]);
    }
    records.sort();
    Hops::Try(
        records
            .into_iter()
            .map(|(_, host)| format!("{}:25", host.trim_end_matches('.')))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_table() {
        let mx = |v: &[(u16, &str)]| {
            v.iter()
                .map(|(p, h)| (*p, h.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(from_mx(mx(&[(0, ".")]), "d.test"), Hops::NullMx);
        assert_eq!(
            from_mx(mx(&[(20, "b.d.test."), (10, "a.d.test.")]), "d.test"),
            Hops::Try(vec!["a.d.test:25".into(), "b.d.test:25".into()])
        );
        assert_eq!(
            from_mx(vec![], "d.test"),
            Hops::Try(vec!["d.test:25".into()])
        );
    }

    #[tokio::test]
    async fn relay_overrides_mx() {
        let r = Router::new(Some("127.0.0.1:2527".into()));
        assert_eq!(
            r.hops("s@anything.test").await,
            Hops::Try(vec!["127.0.0.1:2527".into()])
        );
    }
}
