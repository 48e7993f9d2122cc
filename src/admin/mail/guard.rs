//! Sign-in state of `/mail`: the server-side sessions (absolute and idle
//! expiry, a bounded number, least recently used evicted) and the sign-in
//! rate limits (failures per key in a sliding window). Both take the time as
//! an argument, so their tests pass instants in instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user name (`admin` for the admin token).
    pub user: String,
    /// What the user signed in against (the PHC string, or the admin token):
    /// when the config no longer holds it, the session ends.
    pub credential: String,
    /// The token every POST of this session carries.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// The sessions, by id.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<String, Session>,
    max: usize,
    lifetime: Duration,
    idle: Duration,
}

impl Sessions {
    /// At most `max` sessions, each ending `lifetime` after sign-in or `idle`
    /// after its last request.
    pub fn new(max: usize, lifetime: Duration, idle: Duration) -> Sessions {
        Sessions {
            map: HashMap::new(),
            max: max.max(1),
            lifetime,
            idle,
        }
    }

    /// Stores a new session under `id`; when full, expired sessions go first,
    /// then the least recently used.
    pub fn insert(&mut self, id: String, user: &str, credential: &str, csrf: String, now: Instant) {
        if self.map.len() >= self.max {
            self.map
                .retain(|_, s| !expired(s, now, self.lifetime, self.idle));
        }
        while self.map.len() >= self.max {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.map.insert(
            id,
            Session {
                user: user.to_owned(),
                credential: credential.to_owned(),
                csrf,
                created: now,
                last_seen: now,
            },
        );
    }

    /// The live session `id`, marked as used now; an expired one is removed.
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<Session> {
        let s = self.map.get_mut(id)?;
        if expired(s, now, self.lifetime, self.idle) {
            self.map.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends session `id`.
    pub fn remove(&mut self, id: &str) {
        self.map.remove(id);
    }

    /// Sessions stored (live or not yet noticed to be expired).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if none is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn expired(s: &Session, now: Instant, lifetime: Duration, idle: Duration) -> bool {
    now.saturating_duration_since(s.created) >= lifetime
        || now.saturating_duration_since(s.last_seen) >= idle
}

/// Failed attempts per key (a client IP, a user name) in a sliding window.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    window: Duration,
    max_keys: usize,
    keys: HashMap<String, VecDeque<Instant>>,
}

impl Limiter {
    /// `max` failures per `window` for each key; at most `max_keys` keys are
    /// remembered (the one failing longest ago is forgotten first).
    pub fn new(max: usize, window: Duration, max_keys: usize) -> Limiter {
        Limiter {
            max: max.max(1),
            window,
            max_keys: max_keys.max(1),
            keys: HashMap::new(),
        }
    }

    fn prune(&mut self, key: &str, now: Instant) {
        let window = self.window;
        if let Some(q) = self.keys.get_mut(key) {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                q.pop_front();
            }
            if q.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// How long until `key` may try again, if it is over its limit now.
    pub fn blocked(&mut self, key: &str, now: Instant) -> Option<Duration> {
        self.prune(key, now);
        let q = self.keys.get(key)?;
        if q.len() < self.max {
            return None;
        }
        let oldest = q.front()?;
        Some(
            self.window
                .saturating_sub(now.saturating_duration_since(*oldest))
                .max(Duration::from_secs(1)),
        )
    }

    /// Counts an attempt of `key` at `now` as failed (counted before the
    /// password is checked, so parallel guesses cannot pass the limit;
    /// [`Limiter::forgive`] takes it back when it succeeds).
    pub fn fail(&mut self, key: &str, now: Instant) {
        if !self.keys.contains_key(key) && self.keys.len() >= self.max_keys {
            let window = self.window;
            self.keys.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
            if self.keys.len() >= self.max_keys {
                let stalest = self
                    .keys
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    self.keys.remove(&k);
                }
            }
        }
        let q = self.keys.entry(key.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }

    /// Takes back the attempt of `key` counted at `at` (it succeeded).
    pub fn forgive(&mut self, key: &str, at: Instant) {
        if let Some(q) = self.keys.get_mut(key) {
            if let Some(i) = q.iter().rposition(|t| *t == at) {
                q.remove(i);
            }
            if q.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Forgets every failure of `key`.
    pub fn clear(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn sessions_expire_idle_and_absolute() {
        let t0 = Instant::now();
        let mut s = Sessions::new(10, 8 * 60 * MIN, 30 * MIN);
        s.insert("a".into(), "alice", "h", "c".into(), t0);
        assert_eq!(s.touch("a", t0 + 29 * MIN).unwrap().user, "alice");
        // Idle: 30 minutes after the last request, not after sign-in.
        assert!(s.touch("a", t0 + 58 * MIN).is_some());
        assert!(s.touch("a", t0 + 88 * MIN).is_none(), "idle 30 min");
        assert!(s.is_empty(), "an expired session is removed");
        // Absolute: 8 hours after sign-in, however busy.
        s.insert("b".into(), "bob", "h", "c".into(), t0);
        let mut t = t0;
        for _ in 0..(8 * 60 / 20 - 1) {
            t += 20 * MIN;
            assert!(s.touch("b", t).is_some(), "{:?}", t - t0);
        }
        assert!(s.touch("b", t0 + 8 * 60 * MIN).is_none(), "8 h lifetime");
        assert!(s.touch("nope", t0).is_none());
    }

    #[test]
    fn sessions_are_bounded_least_recently_used_first() {
        let t0 = Instant::now();
        let mut s = Sessions::new(3, 8 * 60 * MIN, 30 * MIN);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.insert((*id).into(), id, "h", "c".into(), t0 + i as u32 * MIN);
        }
        assert!(s.touch("a", t0 + 5 * MIN).is_some()); // b is now the least recent
        s.insert("d".into(), "d", "h", "c".into(), t0 + 6 * MIN);
        assert_eq!(s.len(), 3);
        assert!(s.touch("b", t0 + 6 * MIN).is_none(), "b evicted");
        for id in ["a", "c", "d"] {
            assert!(s.touch(id, t0 + 6 * MIN).is_some(), "{id}");
        }
        // Expired sessions make room before live ones are evicted.
        s.insert("e".into(), "e", "h", "c".into(), t0 + 40 * MIN);
        assert_eq!(s.len(), 1);
        s.remove("e");
        assert!(s.is_empty());
    }

    #[test]
    fn limiter_blocks_after_max_failures_in_the_window() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5, 5 * MIN, 100);
        for i in 0..5 {
            assert!(
                l.blocked("ip:1", t0 + i * Duration::from_secs(10))
                    .is_none()
            );
            l.fail("ip:1", t0 + i * Duration::from_secs(10));
        }
        let wait = l.blocked("ip:1", t0 + Duration::from_secs(50)).unwrap();
        assert_eq!(wait, 5 * MIN - Duration::from_secs(50));
        assert!(
            l.blocked("ip:2", t0).is_none(),
            "other keys are not affected"
        );
        // The window slides: once the first failure is 5 minutes old, one more try.
        assert!(l.blocked("ip:1", t0 + 5 * MIN).is_none());
        l.fail("ip:1", t0 + 5 * MIN);
        assert!(l.blocked("ip:1", t0 + 5 * MIN).is_some());
        // All forgotten after a quiet window.
        assert!(l.blocked("ip:1", t0 + 11 * MIN).is_none());
        assert!(l.is_empty());
    }

    #[test]
    fn limiter_forgives_a_success_and_is_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(2, 5 * MIN, 3);
        l.fail("u", t0);
        let t1 = t0 + Duration::from_secs(1);
        l.fail("u", t1);
        assert!(l.blocked("u", t1).is_some());
        l.forgive("u", t1);
        assert!(l.blocked("u", t1).is_none());
        l.clear("u");
        assert!(l.is_empty());
        for k in ["a", "b", "c", "d"] {
            l.fail(k, t0);
        }
        assert_eq!(l.len(), 3, "at most max_keys keys");
        l.fail("e", t0 + 6 * MIN);
        assert_eq!(l.len(), 1, "stale keys are dropped first");
    }
}
