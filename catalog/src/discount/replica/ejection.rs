//! When a replica's calls take it out of rotation: which failures count
//! against it, and the ejection with its growing wait.

use std::time::Instant;

use common::telemetry::Untrusted;

use super::{Replica, State};
use crate::discount::outcome::CallError;

/// Calls that fail (past the deadline, an error status, an unusable
/// answer) among a replica's last [`RECENT_CALLS`] before it is ejected
/// although it still answers its health check: three in a row, or three
/// spread among answers, as a replica that hangs one call in three does
/// (it never failed three in a row, and cost a listing each time).
pub(crate) const EJECT_AFTER: u32 = 3;

/// How many of its last calls a replica's ejection looks at.
const RECENT_CALLS: u32 = u8::BITS;

impl Replica {
    /// Notes how a listing sent to it ended: `None` for an answer. Returns
    /// whether the replica was unreachable (so names are worth resolving
    /// again). `may_eject` says whether ejecting it for failing calls would
    /// leave a replica in rotation (asked only then): a discount that is
    /// merely slow everywhere is still asked.
    pub(crate) fn record_call(
        &self,
        error: Option<&CallError>,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        let Some(error) = error else {
            self.score(false);
            let mut state = self.lock();
            state.recent <<= 1;
            if state.probation {
                state.probation = false;
                self.ejection.succeeded();
            }
            return false;
        };
        // The replica retired the connection (GOAWAY at its
        // --max-connection-age, or shutting down): nothing against it.
        if error.connection_retired() {
            return false;
        }
        self.score(true);
        let mut state = self.lock();
        match error {
            // Refused streams are held against it only as failing calls
            // (EJECT_AFTER of the last few), not at once as an unreachable replica,
            // whose code (UNAVAILABLE) they share: one may be a race at a
            // connection's start; a replica that refuses every stream
            // fails every call.
            error if error.is_unreachable() && !error.stream_refused() => {
                let why = if error.is_tls_failure() {
                    "TLS handshake failed"
                } else {
                    "unreachable"
                };
                self.eject(&mut state, why, &error.to_string());
                true
            }
            // It will not serve this catalog (its allow-list): out until
            // it restarts or the catalog reloads (see State::refused).
            error if error.is_refused() => {
                if !state.refused {
                    state.refused = true;
                    self.metrics.ejected("refused");
                    tracing::warn!(replica = %self.addr, cause = %Untrusted(&error.to_string()),
                        "discount replica refuses this catalog's identity; out of rotation until it restarts or the catalog reloads its certificate");
                    self.update_rotation(&state);
                }
                false
            }
            // Past the deadline, any other status (INTERNAL,
            // RESOURCE_EXHAUSTED, UNIMPLEMENTED from a replica that has
            // neither method...), the stream refused, or an unusable
            // answer.
            error => {
                state.recent = state.recent << 1 | 1;
                if state.recent.count_ones() >= EJECT_AFTER && may_eject() {
                    let cause = format!(
                        "{} of its last {RECENT_CALLS} calls failed, the last with: {error}",
                        state.recent.count_ones()
                    );
                    self.eject(&mut state, "calls failing", &cause);
                }
                false
            }
        }
    }

    /// Ejects the replica for the next wait of its schedule (a failure
    /// during a wait does not lengthen it), because of `why` (for
    /// `/readyz`) and `cause` (for the log). The first ejection of a run of
    /// failures is logged as a warning, the failed probes after it at
    /// debug level, so a replica that stays down is not a line a second.
    pub(super) fn eject(&self, state: &mut State, why: &'static str, cause: &str) {
        let now = Instant::now();
        if state.ejected_until.is_some_and(|until| now < until) {
            return;
        }
        if let Some(wait) = self.ejection.failed(now) {
            state.ejected_until = Some(now + wait);
            state.ejected_for = why;
            self.metrics.ejected(why);
            // The calls that failed stay in `recent` until answers push
            // them out: a replica back from an ejection that fails again
            // among its next few calls is ejected again at once, for
            // longer, rather than after three more lost listings.
            if state.down_logged {
                tracing::debug!(replica = %self.addr, cause = %Untrusted(cause), ejected_for = ?wait,
                    "discount replica still failing; ejected again");
            } else {
                state.down_logged = true;
                // Escaped: the cause may carry a replica's own text
                // (grpc-message), which must not forge log lines.
                tracing::warn!(replica = %self.addr, cause = %Untrusted(cause), ejected_for = ?wait,
                    "discount replica ejected; probing it again when the wait ends (failed probes are logged at debug level)");
            }
            self.update_rotation(state);
        }
    }
}
