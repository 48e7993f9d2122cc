//! What the dispatcher publishes about its queue for `/metrics` and
//! `breakwater status`: counts kept current by the dispatcher loop, read
//! without asking it (a scrape never waits for the dispatcher). Ages are
//! computed by the reader from the oldest arrival, so they grow with the wall
//! clock while nothing else happens.

use crate::journal::QueueId;
use std::sync::atomic::{AtomicU64, Ordering};

/// The dispatcher's counts.
#[derive(Debug, Default)]
pub struct QueueStats {
    depth: AtomicU64,
    /// Id of the oldest message in the journal (ids are arrival microseconds); 0: none.
    oldest: AtomicU64,
    due: AtomicU64,
    deferred: AtomicU64,
    held: AtomicU64,
    in_flight: AtomicU64,
}

/// One reading of [`QueueStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages in the journal not yet fully delivered.
    pub depth: u64,
    /// Oldest of them.
    pub oldest: Option<QueueId>,
    /// Due now, waiting for a delivery slot (or for the gate to open).
    pub due: u64,
    /// Waiting for their retry time.
    pub deferred: u64,
    /// Held by an admin (or parked with nothing to deliver).
    pub held: u64,
    /// Being delivered now.
    pub in_flight: u64,
}

impl Snapshot {
    /// Age in whole seconds of the oldest message at `now_ms` (0 if none).
    pub fn oldest_age_seconds(&self, now_ms: u64) -> u64 {
        self.oldest
            .map_or(0, |id| now_ms.saturating_sub(id.0 / 1000) / 1000)
    }
}

impl QueueStats {
    /// Publishes a new reading.
    pub fn publish(&self, s: Snapshot) {
        self.depth.store(s.depth, Ordering::Relaxed);
        self.oldest
            .store(s.oldest.map_or(0, |id| id.0), Ordering::Relaxed);
        self.due.store(s.due, Ordering::Relaxed);
        self.deferred.store(s.deferred, Ordering::Relaxed);
        self.held.store(s.held, Ordering::Relaxed);
        self.in_flight.store(s.in_flight, Ordering::Relaxed);
    }

    /// The latest reading.
    pub fn read(&self) -> Snapshot {
        let oldest = self.oldest.load(Ordering::Relaxed);
        Snapshot {
            depth: self.depth.load(Ordering::Relaxed),
            oldest: (oldest != 0).then_some(QueueId(oldest)),
            due: self.due.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_grows_with_the_clock_and_is_zero_when_empty() {
        let stats = QueueStats::default();
        assert_eq!(stats.read().oldest_age_seconds(5_000_000), 0);
        stats.publish(Snapshot {
            depth: 1,
            oldest: Some(QueueId(1_000_000_000)), // arrived at 1,000,000 ms
            ..Snapshot::default()
        });
        let s = stats.read();
        assert_eq!(s.oldest_age_seconds(1_030_000), 30);
        assert_eq!(s.oldest_age_seconds(1_080_999), 80);
        assert_eq!(
            s.oldest_age_seconds(999_000),
            0,
            "clock behind: no negative age"
        );
    }

    /// What `/metrics` does at a scrape, under controlled time: the age comes
    /// from the dispatcher's clock, so it grows while nothing else happens
    /// (the outage of issue 7: 30 s and 80 s of waiting read 0 before).
    #[tokio::test(start_paused = true)]
    async fn scraped_age_follows_the_clock_during_a_quiet_outage() {
        use crate::admin::metrics::Metrics;
        use crate::delivery::dispatcher::Clock;
        use std::time::Duration;
        let clock = Clock::new();
        let metrics = Metrics::new();
        let stats = QueueStats::default();
        stats.publish(Snapshot {
            depth: 1,
            oldest: Some(QueueId(clock.now_ms() * 1000)),
            deferred: 1,
            ..Snapshot::default()
        });
        for (wait, want) in [(30, 30), (50, 80)] {
            tokio::time::advance(Duration::from_secs(wait)).await;
            metrics.refresh_queue(&stats.read(), clock.now_ms());
            assert_eq!(metrics.queue_oldest_age_seconds.get(), want);
            assert_eq!(metrics.queue_depth.get(), 1);
        }
        stats.publish(Snapshot::default());
        metrics.refresh_queue(&stats.read(), clock.now_ms());
        assert_eq!(metrics.queue_oldest_age_seconds.get(), 0, "0 once drained");
    }
}
