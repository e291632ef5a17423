//! Waiting between attempts to reach a discount that cannot be reached.
//!
//! When connecting or the TLS handshake fails (discount down, or keys
//! rotated in the wrong order), trying again on every request costs
//! discount a handshake per request, about 2,000 a second under load, and
//! fills both logs with the same line. Instead the client waits: about
//! `min` after the first failure, doubling while failures go on, at most
//! `max`, each wait jittered down by up to half so that many catalogs do
//! not retry in step. While it waits, listings are answered at once without
//! discounts. When a wait ends, one caller probes (makes the next attempt)
//! and the others keep answering at once until it reports: otherwise every
//! request in flight at that moment would dial, 200 handshakes in a burst
//! under load. Pure logic, on times handed in, so it is tested without
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
    /// What the last failure was, for the answer while waiting.
    cause: String,
    /// When the caller now probing started, if one is.
    probe: Option<Instant>,
}

/// Waiting before the next attempt: how long still, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Until the next attempt.
    pub remaining: Duration,
    /// What the last attempt failed with.
    pub cause: String,
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

    /// `Some` while an attempt must wait, at `now`; `None` when the caller
    /// may go ahead. After a wait, the first caller to ask becomes the probe
    /// and goes ahead alone; a probe that reports nothing for `min` (its
    /// call failed another way) lets the next caller probe.
    pub(crate) fn waiting(&self, now: Instant) -> Option<Waiting> {
        let mut state = self.lock();
        let until = state.until?;
        let probing = state
            .probe
            .is_some_and(|started| now.duration_since(started) < self.min);
        if now < until || probing {
            return Some(Waiting {
                remaining: until.saturating_duration_since(now),
                cause: state.cause.clone(),
            });
        }
        state.probe = Some(now);
        None
    }

    /// Records a failure at `now` with `cause`; returns how long the next
    /// attempt waits, or `None` if another caller already started this wait
    /// (calls in flight together fail together; that is one failure).
    pub(crate) fn failed(&self, now: Instant, cause: &str) -> Option<Duration> {
        let mut state = self.lock();
        if state.until.is_some_and(|until| now < until) && state.probe.is_none() {
            return None;
        }
        state.probe = None;
        let doubled = self
            .min
            .saturating_mul(2_u32.saturating_pow(state.failures.min(31)));
        let step = doubled.min(self.max);
        let wait = step - jitter(step / 2);
        state.failures = state.failures.saturating_add(1);
        state.until = Some(now + wait);
        state.cause = cause.to_owned();
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
            let wait = backoff.failed(now, "refused").unwrap();
            assert!(wait <= step && wait >= step / 2, "{wait:?} for {step:?}");
            now += wait;
        }
    }

    #[test]
    fn while_waiting_attempts_are_held_back_with_the_cause() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let now = Instant::now();
        assert_eq!(backoff.waiting(now), None);
        let wait = backoff.failed(now, "UnknownIssuer").unwrap();
        let waiting = backoff.waiting(now).unwrap();
        assert_eq!(
            (waiting.remaining, waiting.cause.as_str()),
            (wait, "UnknownIssuer")
        );
        assert_eq!(backoff.waiting(now + wait), None, "the wait is over");
    }

    #[test]
    fn failures_during_a_wait_are_one_failure() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let now = Instant::now();
        let first = backoff.failed(now, "refused").unwrap();
        assert_eq!(backoff.failed(now, "refused"), None);
        // The next real failure waits longer than the first did at most.
        let second = backoff.failed(now + first, "refused").unwrap();
        assert!(second >= SECOND, "{second:?}");
    }

    #[test]
    fn when_a_wait_ends_one_caller_probes_and_the_others_keep_waiting() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let start = Instant::now();
        let wait = backoff.failed(start, "refused").unwrap();
        let over = start + wait;
        assert_eq!(backoff.waiting(over), None, "the first caller probes");
        for _ in 0..200 {
            assert!(
                backoff.waiting(over).is_some(),
                "a second caller dialled too"
            );
        }
        // The probe fails: a longer wait, then one probe again.
        let next = backoff.failed(over, "refused").unwrap();
        assert!(next >= SECOND, "{next:?}");
        assert!(backoff.waiting(over).is_some());
        assert_eq!(backoff.waiting(over + next), None);
        assert!(backoff.waiting(over + next).is_some());
    }

    #[test]
    fn a_probe_that_never_reports_lets_another_caller_probe() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let start = Instant::now();
        let over = start + backoff.failed(start, "refused").unwrap();
        assert_eq!(backoff.waiting(over), None);
        assert!(backoff.waiting(over + SECOND / 2).is_some());
        assert_eq!(
            backoff.waiting(over + SECOND),
            None,
            "a new probe after min"
        );
    }

    #[test]
    fn a_success_starts_the_schedule_again() {
        let backoff = Backoff::new(SECOND, 8 * SECOND);
        let mut now = Instant::now();
        for _ in 0..4 {
            now += backoff.failed(now, "refused").unwrap();
        }
        assert!(backoff.succeeded(), "a recovery is reported");
        assert!(!backoff.succeeded(), "only once");
        assert!(backoff.failed(now, "refused").unwrap() <= SECOND);
    }
}
