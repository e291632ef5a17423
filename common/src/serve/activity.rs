//! Whether a connection has requests in flight, so that a server at its
//! connection limit can close an idle (or the stalest) connection for a
//! newcomer, as nginx does, and close connections idle for too long.
//!
//! A client that opens connections and sends nothing on them (answering
//! pings, so keepalive does not find it) would otherwise hold every slot
//! for as long as it likes. The catalog closes the connection it picks
//! gracefully (its connection task watches [`Activity::evicted`]); discount,
//! whose connections tonic serves, closes it through its tracker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::serve::connections::{ConnectionTracker, Registration};

/// One connection's requests in flight, and its place in the tracker where
/// [`ConnectionTracker::close_oldest`] can pick it, cancelling `evict`:
/// the tracker of idle connections while it has none ([`Activity::new`],
/// the catalog), or one ranking every connection by its last request
/// ([`Activity::ranked`], discount).
///
/// Kept cheap per request: a request changes a counter, and the idle
/// registration only when the connection goes from idle to busy or back
/// (a ranked one moves once per request); nothing wakes the connection's
/// task. The idle timer instead wakes once per timeout period and looks.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last became idle, as time since `epoch`.
    idle_since: AtomicU64,
    epoch: Instant,
    /// Where a newcomer at the limit may pick the connection.
    placement: Placement,
    registration: Mutex<Option<Registration>>,
    evict: CancellationToken,
}

/// Which tracker holds a connection, and when.
#[derive(Debug)]
enum Placement {
    /// In this tracker while it has no request in flight (the catalog).
    WhileIdle(ConnectionTracker),
    /// Always in this tracker, moved to the back each time a request
    /// begins (discount).
    ByLastRequest(ConnectionTracker),
}

impl Activity {
    /// A connection that has not started a request yet: idle, in `idle`.
    /// `evict` is cancelled when the tracker picks it.
    pub fn new(idle: ConnectionTracker, evict: CancellationToken) -> Arc<Self> {
        Self::build(Placement::WhileIdle(idle), evict)
    }

    /// A connection in `by_last_request`, idle or not, ordered by when its
    /// last request began (its start counting as one). There a server at
    /// its limit picks the one that has started nothing for longest: a
    /// connection held by a single call that never ends (a stream left
    /// open, a message that never comes) rather than a real client, which
    /// starts calls all the time and is idle only between them.
    pub fn ranked(by_last_request: ConnectionTracker, evict: CancellationToken) -> Arc<Self> {
        Self::build(Placement::ByLastRequest(by_last_request), evict)
    }

    fn build(placement: Placement, evict: CancellationToken) -> Arc<Self> {
        let (Placement::WhileIdle(tracker) | Placement::ByLastRequest(tracker)) = &placement;
        let registration = tracker.register_as(&evict);
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            epoch: Instant::now(),
            registration: Mutex::new(Some(registration)),
            placement,
            evict,
        })
    }

    /// A request starts; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        let first = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        match &self.placement {
            // No longer idle: leaves the idle tracker.
            Placement::WhileIdle(_) if first => *self.registration() = None,
            Placement::WhileIdle(_) => {}
            // Moves to the back: registered now, the old place left.
            Placement::ByLastRequest(tracker) => {
                *self.registration() = Some(tracker.register_as(&self.evict));
            }
        }
        Busy(Arc::clone(self))
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.idle_since.store(since, Ordering::Release);
            if let Placement::WhileIdle(idle) = &self.placement {
                let mut registration = self.registration();
                // A request that began meanwhile keeps it busy.
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    *registration = Some(idle.register_as(&self.evict));
                }
            }
        }
    }

    fn registration(&self) -> MutexGuard<'_, Option<Registration>> {
        self.registration
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes once the connection has had no request in flight for
    /// `limit` without a break.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
            let deadline = self.epoch + since + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// Completes when this connection was picked to make room.
    pub async fn evicted(&self) {
        self.evict.cancelled().await;
    }

    /// What closes the connection when a tracker picks it.
    pub(crate) fn evict_token(&self) -> &CancellationToken {
        &self.evict
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_connection_with_nothing_in_flight_can_be_picked() {
        let idle = ConnectionTracker::new();
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        let busy_one = Activity::new(idle.clone(), first.clone());
        let _idle_one = Activity::new(idle.clone(), second.clone());
        let request = busy_one.begin();
        assert!(idle.close_oldest());
        assert!(
            !first.is_cancelled(),
            "a connection in a request was picked"
        );
        assert!(second.is_cancelled());
        assert!(!idle.close_oldest(), "nothing else is idle");
        drop(request);
        assert!(idle.close_oldest());
        assert!(first.is_cancelled());
    }

    #[tokio::test]
    async fn ranked_by_last_request_the_one_that_started_nothing_for_longest_is_picked() {
        let ranking = ConnectionTracker::new();
        let tokens: Vec<_> = (0..3).map(|_| CancellationToken::new()).collect();
        let connections: Vec<_> = tokens
            .iter()
            .map(|token| Activity::ranked(ranking.clone(), token.clone()))
            .collect();
        // All three busy: the first with one call that stays open, the
        // others starting calls since.
        let _held = connections[0].begin();
        let _second = connections[1].begin();
        let _third = connections[2].begin();
        drop(connections[1].begin());
        assert!(ranking.close_oldest());
        assert!(tokens[0].is_cancelled(), "the stalest was not picked");
        assert!(!tokens[1].is_cancelled() && !tokens[2].is_cancelled());
        // Then the third, whose last call began before the second's.
        assert!(ranking.close_oldest());
        assert!(tokens[2].is_cancelled());
        assert!(!tokens[1].is_cancelled());
    }

    #[tokio::test]
    async fn idle_for_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new(ConnectionTracker::new(), CancellationToken::new());
        let request = activity.begin();
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(request);
        // Counted from the connection's start, it would already be over.
        let started = Instant::now();
        activity.idle_for(Duration::from_millis(100)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
    }
}
