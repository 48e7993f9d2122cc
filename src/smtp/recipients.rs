//! Which recipients exist: the static list (`relay.recipients`) and backend
//! verification (`relay.verify_recipients`), so unknown users are refused at
//! RCPT (`550 5.1.1`) instead of accepted and bounced to a forged sender
//! (backscatter).
//!
//! The list is authoritative for every domain it mentions: in such a domain an
//! address not listed (and not covered by `*@domain`) is unknown. Domains it
//! does not mention are not restricted by it, so adding a relay domain without
//! touching the file never bounces its mail.
//!
//! Verification works like Postfix's `reject_unverified_recipient`: an uncached
//! address is checked with `MAIL FROM:<>` / `RCPT TO` against a backend that may
//! take mail now; 2xx is cached for `verify_positive_ttl`, 5xx for
//! `verify_negative_ttl`, anything else (4xx, no answer) is not cached and the
//! recipient is accepted. While no backend may take mail, cached answers apply
//! and uncached recipients are accepted and queued: continuity beats strictness,
//! and the worst case is one bounce for a mistyped address. A probe never holds
//! RCPT longer than `health.timeout` (then the recipient is accepted and the
//! probe's answer, when it comes, is cached); concurrent RCPTs for one address
//! share one probe. `postmaster` is always accepted (RFC 5321 4.5.1).

use crate::config::{self, Config};
use crate::delivery::gate::Gate;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

/// Most cached verification answers; beyond, expired ones are dropped first.
const CACHE_LIMIT: usize = 100_000;
/// Most probes running at once.
const MAX_PROBES: usize = 32;

/// The parsed `relay.recipients` file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct List {
    addresses: HashSet<String>,
    /// Domains with a `*@domain` line: every address there exists.
    wildcard: HashSet<String>,
    /// Every domain the file mentions.
    domains: HashSet<String>,
}

/// What the list says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Listed, or its domain has `*@domain`.
    Known,
    /// Its domain is in the list, the address is not.
    Unknown,
    /// The list does not speak for its domain.
    NotCovered,
}

impl List {
    /// Parses the file's text: one `user@domain` or `*@domain` a line, `#`
    /// comments, blank lines ignored, case-insensitive. Errors name the line.
    pub fn parse(text: &str) -> Result<List, String> {
        let mut list = List::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let entry = line.to_lowercase();
            let Some((local, domain)) = entry.rsplit_once('@') else {
                return Err(format!(
                    "line {}: {line:?} is not user@domain or *@domain",
                    n + 1
                ));
            };
            if local.is_empty() || domain.is_empty() || entry.contains(char::is_whitespace) {
                return Err(format!(
                    "line {}: {line:?} is not user@domain or *@domain",
                    n + 1
                ));
            }
            let domain = domain.trim_end_matches('.').to_owned();
            if local == "*" {
                list.wildcard.insert(domain.clone());
            } else {
                list.addresses.insert(format!("{local}@{domain}"));
            }
            list.domains.insert(domain);
        }
        Ok(list)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<List, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("relay.recipients {}: {e}", path.display()))?;
        List::parse(&text).map_err(|e| format!("relay.recipients {}: {e}", path.display()))
    }

    /// What the list says about `address` (already lower-cased).
    pub fn lookup(&self, address: &str) -> Listed {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Listed::NotCovered;
        };
        let domain = domain.trim_end_matches('.');
        if self.addresses.contains(address) || self.wildcard.contains(domain) {
            Listed::Known
        } else if self.domains.contains(domain) {
            Listed::Unknown
        } else {
            Listed::NotCovered
        }
    }
}

/// A cached verification answer.
#[derive(Debug, Clone, Copy)]
struct Cached {
    known: bool,
    until: Instant,
}

/// Backend verification: cache, shared probes, bounded waits.
struct Verifier {
    backends: Vec<config::Backend>,
    helo: String,
    gate: Arc<Gate>,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Probes under way: their result (`None` until known, then
    /// `Some(Some(known))`, or `Some(None)` for "no answer").
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Option<bool>>>>>,
    probes: Arc<Semaphore>,
}

/// The recipient checks every RCPT goes through.
pub struct Recipients {
    path: Option<PathBuf>,
    list: RwLock<Option<Arc<List>>>,
    verifier: Option<Arc<Verifier>>,
}

impl Recipients {
    /// Accepts every recipient of a relay domain (no list, no verification).
    pub fn everyone() -> Recipients {
        Recipients {
            path: None,
            list: RwLock::new(None),
            verifier: None,
        }
    }

    /// The checks `config` asks for; `gate` says which backends may be probed.
    pub fn new(config: &Config, gate: Arc<Gate>) -> Result<Recipients, String> {
        let list = match &config.relay.recipients {
            Some(p) => Some(Arc::new(List::load(p)?)),
            None => None,
        };
        let verifier = config.relay.verify_recipients.then(|| {
            let mut backends = config.backend.clone();
            backends.sort_by_key(|b| b.priority);
            Arc::new(Verifier {
                backends,
                helo: config.hostname.clone(),
                gate,
                timeout: config.health.timeout.0,
                positive_ttl: config.relay.verify_positive_ttl.0,
                negative_ttl: config.relay.verify_negative_ttl.0,
                cache: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                probes: Arc::new(Semaphore::new(MAX_PROBES)),
            })
        });
        Ok(Recipients {
            path: config.relay.recipients.clone(),
            list: RwLock::new(list),
            verifier,
        })
    }

    /// Re-reads `relay.recipients` (SIGHUP); on error the old list stays.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let list = List::load(path)?;
        *self.list.write().expect("recipient list lock") = Some(Arc::new(list));
        Ok(())
    }

    /// True if mail for `address` (in a relay domain) should be accepted.
    pub async fn is_known(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        if address == "postmaster" || address.starts_with("postmaster@") {
            return true;
        }
        let list = self.list.read().expect("recipient list lock").clone();
        if let Some(list) = list {
            match list.lookup(&address) {
                Listed::Known => return true,
                Listed::Unknown => return false,
                Listed::NotCovered => {}
            }
        }
        match &self.verifier {
            Some(v) => v.clone().verify(address).await,
            None => true,
        }
    }
}

impl Verifier {
    async fn verify(self: Arc<Self>, address: String) -> bool {
        if let Some(known) = self.cached(&address) {
            return known;
        }
        let Some(backend) = self
            .backends
            .iter()
            .find(|b| self.gate.is_open_for(&b.name))
            .cloned()
        else {
            return true; // no backend may take mail: accept and queue
        };
        let mut rx = self.clone().shared_probe(address.clone(), backend);
        let answer = tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some)).await;
        match answer {
            Ok(Ok(r)) => r.flatten().unwrap_or(true),
            // Too slow: accept now; the probe's answer is cached when it comes.
            _ => {
                tracing::debug!("recipient probe for <{address}> too slow; accepted");
                true
            }
        }
    }

    fn cached(&self, address: &str) -> Option<bool> {
        let cache = self.cache.lock().expect("verify cache lock");
        cache
            .get(address)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.known)
    }

    /// The probe for `address`: the one under way, or a new one.
    fn shared_probe(
        self: Arc<Self>,
        address: String,
        backend: config::Backend,
    ) -> watch::Receiver<Option<Option<bool>>> {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(rx) = inflight.get(&address) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(address.clone(), rx.clone());
        drop(inflight);
        tokio::spawn(async move {
            let result = self.probe(&address, &backend).await;
            self.remember(&address, result);
            self.inflight
                .lock()
                .expect("inflight lock")
                .remove(&address);
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Asks `backend`; `Some(known)` for a 2xx or 5xx answer, `None` otherwise.
    async fn probe(&self, address: &str, backend: &config::Backend) -> Option<bool> {
        let _slot = tokio::time::timeout(self.timeout, self.probes.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        match crate::delivery::client::probe_recipient(backend, &self.helo, address, self.timeout)
            .await
        {
            Ok(reply) if reply.is_positive() => Some(true),
            Ok(reply) if reply.is_permanent() => {
                tracing::info!(backend = %backend.name, "recipient <{address}> unknown: {reply}");
                Some(false)
            }
            Ok(reply) => {
                tracing::debug!(backend = %backend.name, "recipient <{address}> not verified: {reply}");
                None
            }
            Err(e) => {
                tracing::debug!(backend = %backend.name, "recipient <{address}> not verified: {e}");
                None
            }
        }
    }

    fn remember(&self, address: &str, result: Option<bool>) {
        let Some(known) = result else { return };
        let ttl = if known {
            self.positive_ttl
        } else {
            self.negative_ttl
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("verify cache lock");
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear(); // cheap and rare; answers are fetched again
            }
        }
        cache.insert(
            address.to_owned(),
            Cached {
                known,
                until: now + ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lookups() {
        let list = List::parse(
            "# staff\nAlice@Example.com\n bob@example.com  # desk\n*@sales.example.com\n\nx@other.test.\n",
        )
        .unwrap();
        let cases = [
            ("alice@example.com", Listed::Known),
            ("bob@example.com", Listed::Known),
            ("carol@example.com", Listed::Unknown),
            ("anyone@sales.example.com", Listed::Known),
            ("x@other.test", Listed::Known),
            ("y@other.test", Listed::Unknown),
            ("z@elsewhere.test", Listed::NotCovered),
        ];
        for (addr, want) in cases {
            assert_eq!(list.lookup(addr), want, "{addr}");
        }
        for bad in ["nobody", "a b@c.test", "@example.com", "a@"] {
            let e = List::parse(bad).unwrap_err();
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn postmaster_is_always_known() {
        let r = Recipients {
            path: None,
            list: RwLock::new(Some(Arc::new(List::parse("a@example.com").unwrap()))),
            verifier: None,
        };
        assert!(r.is_known("postmaster").await);
        assert!(r.is_known("PostMaster@example.com").await);
        assert!(r.is_known("A@example.com").await);
        assert!(!r.is_known("b@example.com").await);
        assert!(r.is_known("b@elsewhere.test").await);
    }
}
