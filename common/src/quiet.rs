//! Keeping a repeated failure from flooding the log.
//!
//! When discount hangs, every listing fails the same way: under load that
//! was one WARN line per request in the catalog, some 12,000 a second, and
//! a flood of clients that never finish their TLS handshake made discount
//! log one line each. Both bury everything else and cost real CPU, and the
//! second is a log flood anyone who can reach the port can cause. Each
//! distinct cause is logged the first time, then at most once per interval,
//! with the number of occurrences left unlogged in between.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often one cause may be logged.
const INTERVAL: Duration = Duration::from_secs(5);

/// The most distinct causes remembered: a bound on memory, whatever the
/// causes. When the table is full, causes not logged for an interval are
/// forgotten (their count since is lost); if none is that old, new causes
/// share one record ([`OTHER`]) and so one line an interval. Starting
/// afresh instead let a client that varies its failure (256 TLS alert
/// codes) log one line a connection; never forgetting let old causes hide
/// every new one for good.
const MAX_CAUSES: usize = 64;

/// The record shared by causes that found the table full.
const OTHER: &str = "(other causes)";

/// When each cause was last logged, and how often it came since.
#[derive(Debug, Default)]
pub struct Quiet {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// `Some(n)` if `cause` should be logged now, `n` being how many times
    /// it came since it was last logged without being logged; `None` to
    /// stay quiet.
    pub fn should_log(&self, cause: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.contains_key(cause) && seen.len() >= MAX_CAUSES - 1 {
            seen.retain(|_, (last, _)| now.duration_since(*last) < INTERVAL);
        }
        let cause = if seen.contains_key(cause) || seen.len() < MAX_CAUSES - 1 {
            cause
        } else {
            OTHER
        };
        match seen.get_mut(cause) {
            Some((last, suppressed)) if now.duration_since(*last) < INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                seen.insert(cause.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_logged_first_then_once_an_interval_with_the_count() {
        let quiet = Quiet::default();
        let start = Instant::now();
        assert_eq!(quiet.should_log("hung", start), Some(0));
        for i in 1..=100 {
            assert_eq!(
                quiet.should_log("hung", start + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(quiet.should_log("hung", start + INTERVAL), Some(100));
        assert_eq!(quiet.should_log("hung", start + INTERVAL), None);
    }

    #[test]
    fn causes_are_counted_apart_and_the_record_is_bounded() {
        let quiet = Quiet::default();
        let now = Instant::now();
        assert_eq!(quiet.should_log("hung", now), Some(0));
        assert_eq!(quiet.should_log("refused", now), Some(0));
        assert_eq!(quiet.should_log("hung", now), None);
        let logged = (0..1000)
            .filter(|i| quiet.should_log(&format!("cause {i}"), now).is_some())
            .count();
        let kept = quiet.seen.lock().map(|seen| seen.len()).unwrap_or_default();
        assert!(kept <= MAX_CAUSES, "{kept} causes kept");
        // Each remembered cause once, then one line for all the others,
        // however many distinct ones keep coming.
        assert_eq!(logged, MAX_CAUSES - 2);
        assert_eq!(quiet.should_log("hung", now), None, "forgotten");
    }

    #[test]
    fn a_full_table_forgets_causes_not_logged_for_an_interval() {
        let quiet = Quiet::default();
        let now = Instant::now();
        for i in 0..MAX_CAUSES {
            let _ = quiet.should_log(&format!("old cause {i}"), now);
        }
        assert_eq!(quiet.should_log("new", now), None, "full: shared line");
        // An interval later the old ones make room: a new cause is logged.
        assert_eq!(quiet.should_log("newer", now + INTERVAL), Some(0));
    }
}
