//! Sets of connections, oldest first, that a server can close from outside
//! the task serving them: each registration holds a cancellation token that
//! the tracker cancels when it picks the connection, and the task serving
//! it watches. A server at its connection limit closes the oldest of a kind
//! ([`ConnectionTracker::close_oldest`]: an unfinished handshake, an idle
//! connection, the stalest caller), and knows how many are open
//! ([`ConnectionTracker::open`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Open;

/// The set of open connections of one server, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ConnectionTracker {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, CancellationToken>,
}

impl ConnectionTracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a connection: whoever serves it waits on
    /// [`Registration::closed`]; it counts as open until the registration
    /// is dropped.
    pub fn register(&self) -> Registration {
        self.register_as(&CancellationToken::new())
    }

    /// [`ConnectionTracker::register`] with a token of the caller's: for a
    /// connection that joins and leaves this tracker as its state changes
    /// (idle, busy) and must hear a close through the same token each time.
    pub fn register_as(&self, token: &CancellationToken) -> Registration {
        let token = token.clone();
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(id, token.clone());
        Registration {
            token,
            _guard: Guard {
                id,
                registry: Arc::clone(&self.registry),
            },
            _slot: None,
            _counted: None,
        }
    }

    /// A place under a connection limit of `slots`. When none is free, the
    /// oldest connection of this tracker (the ones a newcomer may displace:
    /// idle, or still in its handshake) is closed to make room, `closed`
    /// is told whether there was one (for the log), and the place is
    /// awaited. `None` only if `slots` was closed.
    pub async fn place_under(
        &self,
        slots: &Arc<Semaphore>,
        closed: impl FnOnce(bool),
    ) -> Option<OwnedSemaphorePermit> {
        place_under(slots, &[self], |kind| closed(kind.is_some())).await
    }

    /// How many tracked connections are open.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Closes the connection registered longest ago; `false` if there is
    /// none.
    pub fn close_oldest(&self) -> bool {
        let mut registry = self.lock();
        match registry.open.pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or read.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`ConnectionTracker::place_under`] with several kinds of connection a
/// newcomer may displace, in order: the oldest of the first tracker that
/// has one is closed, and `closed` is told which kind (its index), if any.
pub async fn place_under(
    slots: &Arc<Semaphore>,
    displaceable: &[&ConnectionTracker],
    closed: impl FnOnce(Option<usize>),
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
        return Some(slot);
    }
    closed(
        displaceable
            .iter()
            .position(|tracker| tracker.close_oldest()),
    );
    Arc::clone(slots).acquire_owned().await.ok()
}

/// A connection being tracked; dropping it ends that.
#[derive(Debug)]
pub struct Registration {
    token: CancellationToken,
    /// Held for its `Drop`: leaves the registry.
    _guard: Guard,
    /// Held for its `Drop`: frees the place under the limit.
    _slot: Option<OwnedSemaphorePermit>,
    /// Held for its `Drop`: leaves the gauge of open connections.
    _counted: Option<Open>,
}

impl Registration {
    /// Also holds `slot` (a place under a connection limit) for as long as
    /// the connection lives.
    #[must_use]
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Also counts the connection in `open` (a gauge of open connections)
    /// for as long as it lives.
    #[must_use]
    pub fn counted(mut self, open: &prometheus::IntGauge) -> Self {
        self._counted = Some(Open::count(open));
        self
    }

    /// Stops tracking the connection; returns whether the tracker had
    /// closed it first. After this the tracker can no longer pick it, so a
    /// `false` here means it never will.
    pub fn leave(self) -> bool {
        let token = self.token.clone();
        drop(self);
        token.is_cancelled()
    }

    /// Completes when the tracker closes this connection.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }
}

/// Removes its connection from the registry when the connection is dropped.
#[derive(Debug)]
struct Guard {
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn leaving_tells_whether_the_tracker_closed_it_first_and_it_cannot_after() {
        let tracker = ConnectionTracker::new();
        let picked = tracker.register();
        assert!(tracker.close_oldest());
        assert!(picked.leave(), "closed before it left");
        let left = tracker.register();
        assert!(!left.leave());
        assert!(!tracker.close_oldest(), "a connection that left was picked");
    }

    #[tokio::test]
    async fn close_oldest_closes_the_first_registered_only() {
        let tracker = ConnectionTracker::new();
        let (first, second) = (tracker.register(), tracker.register());
        let (first_closed, second_closed) = (first.closed(), second.closed());
        assert!(tracker.close_oldest());
        tokio::time::timeout(Duration::from_secs(5), first_closed)
            .await
            .expect("the oldest was not closed");
        let still_open = tokio::time::timeout(Duration::from_millis(50), second_closed).await;
        assert!(still_open.is_err(), "the newer one was closed too");
        drop((first, second));
        assert!(!tracker.close_oldest(), "nothing left to close");
    }
}
