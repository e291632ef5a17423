//! What a replica's failures cost it in the pick: a failure score, an
//! average over its last calls kept in fixed point, that scales up the load
//! the power of two choices compares.

/// How much more loaded a replica whose calls all fail looks to the pick
/// than one whose calls succeed: the power of two choices prefers the good
/// one unless it has this many times the calls in flight. Large enough
/// that a failing replica draws a few calls in a hundred, not half; finite
/// so that it still draws some under load, fails them, and is ejected.
pub(super) const FAILURE_PENALTY: u64 = 16;

/// The failure score's 1.0 (fixed point, so it lives in an atomic).
pub(super) const SCORE_ONE: u32 = 1 << 16;

/// The share of the failure score a new outcome replaces: the score
/// follows about the last four calls.
const SCORE_WEIGHT: u32 = 4;

/// [`Replica::cost`] of `pending` listings in flight and a failure score
/// of `score`.
pub(super) fn cost(pending: usize, score: u32) -> u64 {
    let pending = u64::try_from(pending).unwrap_or(u64::MAX);
    pending
        .saturating_add(1)
        .saturating_mul(u64::from(SCORE_ONE) + FAILURE_PENALTY * u64::from(score))
}

/// The failure score `score` moved a [`SCORE_WEIGHT`]th of the way towards
/// 1 (`failed`) or 0.
pub(super) fn next_score(score: u32, failed: bool) -> u32 {
    if failed {
        score + (SCORE_ONE - score) / SCORE_WEIGHT
    } else {
        score - score / SCORE_WEIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score after `outcomes` (true: failed), from a clean start.
    fn scored(outcomes: &[bool]) -> u32 {
        outcomes
            .iter()
            .fold(0, |score, failed| next_score(score, *failed))
    }

    #[test]
    fn a_replica_that_fails_at_once_loses_the_pick_to_a_busier_one_that_answers() {
        // Before: nothing in flight beats anything in flight.
        assert!(cost(0, 0) < cost(1, 0));
        // One failure: it now loses to a replica with two calls in flight.
        let once = scored(&[true]);
        assert!(cost(0, once) > cost(2, 0), "{}", cost(0, once));
        // Every recent call failed: it loses to up to 15 in flight, so a
        // busy good replica still lets it be tried (and ejected).
        let always = scored(&[true; 64]);
        assert!(cost(0, always) > cost(15, 0));
        assert!(cost(0, always) < cost(17, 0));
    }

    #[test]
    fn answers_and_passed_checks_win_a_failed_replica_its_share_back() {
        let failed = scored(&[true, true]);
        let recovered = scored(&[true, true, false, false, false, false, false, false]);
        assert!(recovered < failed / 4, "{recovered} after {failed}");
        // Two health checks passed (each halves it): near an even share.
        assert!(cost(0, failed / 4) <= cost(2, 0));
        // It never leaves 0..=1, however long a run.
        assert_eq!(scored(&[false; 8]), 0);
        assert!(scored(&[true; 1000]) <= SCORE_ONE);
    }
}
