//! The retry schedule: a pure function of the attempt count.

use std::time::Duration;

/// `delivery.retry`: the delay before each retry; the last step repeats.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    steps: Vec<Duration>,
}

impl RetryPolicy {
    /// A policy from the configured steps (at least one, validated by config).
    pub fn new(steps: Vec<Duration>) -> RetryPolicy {
        assert!(!steps.is_empty(), "retry schedule needs a step");
        RetryPolicy { steps }
    }

    /// Delay after the `attempts`-th failed attempt (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.steps.len() - 1);
        self.steps[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let m = |n: u64| Duration::from_secs(60 * n);
        let p = RetryPolicy::new(vec![m(1), m(5), m(15), m(60)]);
        for (attempts, want) in [
            (0, m(1)),
            (1, m(1)),
            (2, m(5)),
            (3, m(15)),
            (4, m(60)),
            (9, m(60)),
        ] {
            assert_eq!(p.delay(attempts), want, "attempt {attempts}");
        }
    }
}
