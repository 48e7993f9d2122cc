//! A lane of the schedule: messages due now (oldest first) and messages waiting
//! for their retry time. The dispatcher keeps one lane for mail to the backends
//! and one for DSNs, so backend gates never hold bounces back.

use crate::journal::QueueId;
use std::collections::BTreeSet;

/// Ready and waiting messages of one kind.
#[derive(Debug, Default)]
pub struct Lane {
    ready: BTreeSet<QueueId>,
    waiting: BTreeSet<(u64, QueueId)>,
}

impl Lane {
    /// Files `id`, due at `due_ms`, as ready if that is not after `now_ms`.
    pub fn file(&mut self, id: QueueId, due_ms: u64, now_ms: u64) {
        if due_ms <= now_ms {
            self.ready.insert(id);
        } else {
            self.waiting.insert((due_ms, id));
        }
    }

    /// Moves everything due by `now_ms` to ready.
    pub fn promote(&mut self, now_ms: u64) {
        while let Some(&(due, id)) = self.waiting.first() {
            if due > now_ms {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(id);
        }
    }

    /// Makes every waiting message ready; returns how many.
    pub fn all_due(&mut self) -> usize {
        let n = self.waiting.len();
        for (_, id) in std::mem::take(&mut self.waiting) {
            self.ready.insert(id);
        }
        n
    }

    /// Forgets `id` (filed with `due_ms`).
    pub fn remove(&mut self, id: QueueId, due_ms: u64) {
        self.ready.remove(&id);
        self.waiting.remove(&(due_ms, id));
    }

    /// Takes the oldest ready message.
    pub fn pop_ready(&mut self) -> Option<QueueId> {
        self.ready.pop_first()
    }

    /// How many are ready.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// How many wait for their retry time.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// When the first waiting message is due.
    pub fn next_due(&self) -> Option<u64> {
        self.waiting.first().map(|&(due, _)| due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_ready_first_and_waiting_by_time() {
        let mut l = Lane::default();
        l.file(QueueId(3), 0, 100);
        l.file(QueueId(1), 50, 100);
        l.file(QueueId(2), 500, 100);
        l.file(QueueId(0), 300, 100);
        assert_eq!(l.next_due(), Some(300));
        assert_eq!(
            l.pop_ready(),
            Some(QueueId(1)),
            "oldest id first, not filing order"
        );
        l.promote(400);
        assert_eq!(l.pop_ready(), Some(QueueId(0)));
        assert_eq!(l.pop_ready(), Some(QueueId(3)));
        assert_eq!(l.pop_ready(), None);
        l.remove(QueueId(2), 500);
        assert_eq!(l.next_due(), None);
        l.file(QueueId(9), 900, 100);
        assert_eq!(l.all_due(), 1);
        assert_eq!(l.ready_len(), 1);
    }
}
