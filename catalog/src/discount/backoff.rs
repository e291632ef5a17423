//! How long a replica that keeps failing stays ejected.
//!
//! When connecting or the TLS handshake fails (a replica down, or keys
//! rotated in the wrong order), trying again on every request costs
//! discount a handshake per request, about 2,000 a second under load, and
//! fills both logs with the same line. Instead the replica is left alone:
//! about `min` after the first failure, doubling while failures go on, at
//! most `max`, each wait jittered down by up to half so that many catalogs
//! do not retry in step. When a wait ends, one health check probes it (see
//! `replica.rs`). Pure logic, on times handed in, so it is tested without
//! sleeping.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The state of the retry schedule of one client.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// No attempt before this.
    until: Option<Instant>,
}

impl Backoff {
    /// A schedule from `min` to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            state: Mutex::new(State::default()),
        }
    }

    /// Records a failure at `now`; returns how long the next attempt
    /// waits, or `None` if another caller already started this wait (calls
    /// in flight together fail together; that is one failure).
    pub(crate) fn failed(&self, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        if state.until.is_some_and(|until| now < until) {
            return None;
        }
        let doubled = self
            .min
            .saturating_mul(2_u32.saturating_pow(state.failures.min(31)));
        let step = doubled.min(self.max);
        let wait = step - jitter(step / 2);
        state.failures = state.failures.saturating_add(1);
        state.until = Some(now + wait);
        Some(wait)
    }

    /// Records a success; returns whether it ends a run of failures.
    pub(crate) fn succeeded(&self) -> bool {
        let mut state = self.lock();
        let recovered = state.failures > 0;
        *state = State::default();
        recovered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A duration between zero and `at_most`, different on each call: the
/// standard library's randomly keyed hasher over the time, which is all a
/// jitter needs.
fn jitter(at_most: Duration) -> Duration {
    let nanos = u64::try_from(at_most.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let random = RandomState::new().hash_one(Instant::now());
    Duration::from_nanos(random % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn waits_double_from_min_to_max_each_jittered_by_at_most_half() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let mut now = Instant::now();
        for step in [1, 2, 4, 8, 8, 8] {
            let step = step * SECOND;
            let wait = backoff.failed(now).unwrap();
            assert!(wait <= step && wait >= step / 2, "{wait:?} for {step:?}");
            now += wait;
        }
    }

    #[test]
    fn failures_during_a_wait_are_one_failure() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let now = Instant::now();
        let first = backoff.failed(now).unwrap();
        assert_eq!(backoff.failed(now), None);
        // The next real failure waits longer than the first did at most.
        let second = backoff.failed(now + first).unwrap();
        assert!(second >= SECOND, "{second:?}");
    }

    #[test]
    fn a_success_starts_the_schedule_again() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let mut now = Instant::now();
        for _ in 0..4 {
            now += backoff.failed(now).unwrap();
        }
        assert!(backoff.succeeded(), "a recovery is reported");
        assert!(!backoff.succeeded(), "only once");
        assert!(backoff.failed(now).unwrap() <= SECOND);
    }
}
