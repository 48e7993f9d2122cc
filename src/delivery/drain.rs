//! Controlled drain: how many attempts may run and how fast new ones may start.
//!
//! After an outage, a quiet-time window or a hold, a backend that just came back
//! must not get the whole backlog at once. Like Postfix's per-destination
//! concurrency (start low, +1 per success, back off on trouble) the window of
//! attempts in flight starts at a quarter of `delivery.concurrency`, grows by one
//! per delivered attempt and halves on a 4xx/421/connection failure or when an
//! attempt takes far longer than the fastest seen recently. `delivery.drain_rate`
//! (messages per second, unset = unlimited) caps how often attempts start,
//! scaled by the same window so the rate ramps up too. Pure: time is passed in.

use std::time::Duration;
use tokio::time::Instant;

/// Slow start + rate limit state.
#[derive(Debug, Clone)]
pub struct Drain {
    max: usize,
    window: f64,
    rate: Option<f64>,
    tokens: f64,
    refilled: Instant,
    fastest: Option<Duration>,
}

/// What the last attempt said about the backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 2xx: the backend keeps up.
    Healthy,
    /// 4xx, 421, connection trouble: slow down.
    Trouble,
    /// 5xx or nothing learnt: no change.
    Neutral,
}

/// An attempt slower than this many times the fastest recent one is a sign of
/// overload (only counted above [`SLOW_FLOOR`], so tiny latencies don't matter).
const SLOW_FACTOR: u32 = 8;
const SLOW_FLOOR: Duration = Duration::from_millis(200);

impl Drain {
    /// At most `max` attempts in flight and `rate` starts per second.
    pub fn new(max: usize, rate: Option<f64>, now: Instant) -> Drain {
        Drain {
            max: max.max(1),
            window: max.max(1) as f64,
            rate,
            tokens: 1.0,
            refilled: now,
            fastest: None,
        }
    }

    /// Starts low again (a backlog is about to flow after a pause).
    pub fn restart(&mut self, now: Instant) {
        self.window = (self.max as f64 / 4.0).ceil().max(1.0);
        self.tokens = 1.0;
        self.refilled = now;
    }

    /// Takes a reloaded `delivery.concurrency` and `delivery.drain_rate`; the
    /// window shrinks at once if the new limit is lower, grows as before.
    pub fn reconfigure(&mut self, max: usize, rate: Option<f64>) {
        self.max = max.max(1);
        self.window = self.window.min(self.max as f64);
        self.rate = rate;
    }

    /// Attempts that may be in flight now.
    pub fn limit(&self) -> usize {
        (self.window.floor() as usize).clamp(1, self.max)
    }

    /// Current starts per second (None: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.rate
            .map(|r| (r * self.window / self.max as f64).max(r / self.max as f64))
    }

    /// Takes the right to start one attempt now, if the rate allows.
    pub fn try_start(&mut self, now: Instant) -> bool {
        let Some(rate) = self.rate() else {
            return true;
        };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(1.0);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next start will be allowed (None: now, or unlimited).
    pub fn next_start(&self) -> Option<Instant> {
        let rate = self.rate()?;
        let missing = 1.0 - self.tokens;
        (missing > 0.0).then(|| self.refilled + Duration::from_secs_f64(missing / rate))
    }

    /// Learns from one finished attempt and how long it took.
    pub fn record(&mut self, signal: Signal, took: Duration) {
        let slow = self
            .fastest
            .is_some_and(|f| took > SLOW_FLOOR && took > f * SLOW_FACTOR);
        if signal == Signal::Healthy {
            self.fastest = Some(self.fastest.map_or(took, |f| f.min(took)));
        }
        match signal {
            Signal::Trouble => self.window = (self.window / 2.0).max(1.0),
            _ if slow => self.window = (self.window / 2.0).max(1.0),
            Signal::Healthy => self.window = (self.window + 1.0).min(self.max as f64),
            Signal::Neutral => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slow_start_grows_per_success_and_halves_on_trouble() {
        let t0 = Instant::now();
        let mut d = Drain::new(16, None, t0);
        assert_eq!(d.limit(), 16, "no pause yet: full concurrency");
        d.restart(t0);
        let mut limits = vec![d.limit()];
        for s in [
            Signal::Healthy,
            Signal::Healthy,
            Signal::Healthy,
            Signal::Trouble,
            Signal::Neutral,
            Signal::Healthy,
        ] {
            d.record(s, 10 * MS);
            limits.push(d.limit());
        }
        assert_eq!(limits, vec![4, 5, 6, 7, 3, 3, 4]);
        for _ in 0..100 {
            d.record(Signal::Healthy, 10 * MS);
        }
        assert_eq!(d.limit(), 16, "capped at concurrency");
        for _ in 0..10 {
            d.record(Signal::Trouble, 10 * MS);
        }
        assert_eq!(d.limit(), 1, "never below one");
    }

    #[test]
    fn rising_latency_backs_off() {
        let t0 = Instant::now();
        let mut d = Drain::new(16, None, t0);
        d.record(Signal::Healthy, 20 * MS);
        assert_eq!(d.limit(), 16);
        d.record(Signal::Healthy, 100 * MS);
        assert_eq!(d.limit(), 16, "5x slower but under the floor");
        d.record(Signal::Healthy, 1000 * MS);
        assert_eq!(d.limit(), 8, "50x slower than the fastest");
    }

    #[test]
    fn rate_limit_spaces_starts_and_ramps_with_the_window() {
        let t0 = Instant::now();
        let mut d = Drain::new(4, Some(10.0), t0);
        // Full window: 10/s, so in one simulated second at most 10 (+1 initial token) starts.
        let mut started = 0;
        for step in 0..1000 {
            if d.try_start(t0 + step * MS) {
                started += 1;
            }
        }
        assert!(
            (10..=11).contains(&started),
            "{started} starts in 1 s at 10/s"
        );
        // After a restart the window is 1 of 4: a quarter of the rate.
        let t1 = t0 + Duration::from_secs(10);
        d.restart(t1);
        let mut started = 0;
        for step in 0..1000 {
            if d.try_start(t1 + step * MS) {
                started += 1;
            }
        }
        assert!(
            (2..=4).contains(&started),
            "{started} starts in 1 s at 2.5/s"
        );
        assert!(d.next_start().is_some_and(|t| t > t1));
    }

    #[test]
    fn unlimited_rate_always_starts() {
        let t0 = Instant::now();
        let mut d = Drain::new(4, None, t0);
        assert!((0..1000).all(|_| d.try_start(t0)));
        assert_eq!(d.next_start(), None);
    }
}
