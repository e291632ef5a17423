//! Calls refused by the allow-list, counted by the identity presented, with
//! a bound on how many identities are named so the label set stays small.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntCounterVec;

/// The identities `discount_authz_refusals_total` names one by one; any
/// further one is counted as `other`. Identities come from certificates
/// the client CA signed, so they are few, but the label set must stay
/// bounded whatever is presented.
const NAMED_IDENTITIES: usize = 32;

/// Calls refused by the allow-list, by the identity presented.
#[derive(Debug, Clone)]
pub(crate) struct Refusals {
    counter: IntCounterVec,
    named: Arc<Mutex<HashSet<String>>>,
}

impl Refusals {
    /// Counts in `counter`, by identity.
    pub(super) fn new(counter: IntCounterVec) -> Self {
        Self {
            counter,
            named: Arc::default(),
        }
    }

    /// One call refused for `identity` (as the log shows it).
    pub(crate) fn refused(&self, identity: &str) {
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        let label = if named.contains(identity) {
            identity
        } else if named.len() < NAMED_IDENTITIES {
            named.insert(identity.to_owned());
            identity
        } else {
            "other"
        };
        self.counter.with_label_values(&[label]).inc();
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::DiscountMetrics;

    #[test]
    fn refusals_name_at_most_32_identities() {
        let metrics = DiscountMetrics::new();
        let refusals = metrics.refusals();
        for n in 0..40 {
            refusals.refused(&format!("spiffe://x/{n}"));
        }
        refusals.refused("spiffe://x/3");
        let counter = &metrics.refusals.counter;
        assert_eq!(counter.with_label_values(&["other"]).get(), 8);
        assert_eq!(counter.with_label_values(&["spiffe://x/3"]).get(), 2);
    }
}
