//! The admin listener's connections whose request head is not whole yet:
//! which the runtime has woken, which one is closed when a newcomer needs
//! room, and which have run out of time.
//!
//! A crowd can keep hundreds of them waiting, so nothing here costs more
//! than the connections it touches: each has a waker of its own that names
//! it (as a `FuturesUnordered` does for its futures), a poll reads only the
//! woken ones, and the one to close is the first of an ordered set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Wake, Waker};

use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection whose head is not whole yet.
pub(super) struct Waiting {
    pub(super) tcp: TcpStream,
    /// What it has sent so far.
    pub(super) head: Vec<u8>,
    /// When it is closed if its head is still not whole.
    pub(super) deadline: Instant,
    /// Wakes the listener's task, naming this connection.
    waker: Waker,
}

impl Waiting {
    /// The waker to poll this connection's socket with, so that its
    /// readiness wakes the listener naming it.
    pub(super) fn waker(&self) -> &Waker {
        &self.waker
    }
}

/// The waiting connections, in the order they were accepted.
pub(super) struct Table {
    waiting: BTreeMap<u64, Waiting>,
    /// Those that have sent part of a head: the first to make room.
    partial: BTreeSet<u64>,
    next_id: u64,
    woken: Arc<Woken>,
}

impl Table {
    pub(super) fn new() -> Self {
        Self {
            waiting: BTreeMap::new(),
            partial: BTreeSet::new(),
            next_id: 0,
            woken: Arc::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// A connection just accepted, and its id. It is not in the table yet
    /// ([`Table::insert`]): it is read first, with its own waker.
    pub(super) fn admit(&mut self, tcp: TcpStream, deadline: Instant) -> (u64, Waiting) {
        let id = self.next_id;
        self.next_id += 1;
        let waker = Waker::from(Arc::new(WakeOne {
            id,
            woken: Arc::clone(&self.woken),
        }));
        (
            id,
            Waiting {
                tcp,
                head: Vec::new(),
                deadline,
                waker,
            },
        )
    }

    /// Puts `conn` (from [`Table::admit`]) in the table.
    pub(super) fn insert(&mut self, id: u64, conn: Waiting) {
        if !conn.head.is_empty() {
            self.partial.insert(id);
        }
        self.waiting.insert(id, conn);
    }

    /// The connections woken since the last call, for the listener's task
    /// polled with `task`, which is woken from now on whenever one is.
    pub(super) fn woken(&self, task: &Waker) -> Vec<u64> {
        {
            let mut current = lock(&self.woken.task);
            if !current.as_ref().is_some_and(|known| known.will_wake(task)) {
                *current = Some(task.clone());
            }
        }
        std::mem::take(&mut *lock(&self.woken.ids))
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Waiting> {
        self.waiting.get_mut(&id)
    }

    /// Notes that connection `id` has sent part of a head, if it has.
    pub(super) fn note_progress(&mut self, id: u64) {
        if self
            .waiting
            .get(&id)
            .is_some_and(|conn| !conn.head.is_empty())
        {
            self.partial.insert(id);
        }
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Waiting> {
        self.partial.remove(&id);
        self.waiting.remove(&id)
    }

    /// The connection to close for a newcomer: the oldest that has sent
    /// part of a head (a client dripping one), else the oldest, whose
    /// head has not come at all. A client that sends its head whole is
    /// picked last, and only while its head is still on its way.
    pub(super) fn evict(&mut self) -> Option<Waiting> {
        let id = match self.partial.first() {
            Some(id) => *id,
            None => *self.waiting.keys().next()?,
        };
        self.remove(id)
    }

    /// The oldest connection, if its deadline is past `now`, removed.
    pub(super) fn expired(&mut self, now: Instant) -> Option<Waiting> {
        let (id, oldest) = self.waiting.first_key_value()?;
        if oldest.deadline > now {
            return None;
        }
        let id = *id;
        self.remove(id)
    }

    /// When the oldest connection runs out of time.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().next().map(|oldest| oldest.deadline)
    }
}

/// The ids of the connections the runtime has woken, and the task to wake.
#[derive(Debug, Default)]
struct Woken {
    ids: Mutex<Vec<u64>>,
    task: Mutex<Option<Waker>>,
}

/// One connection's waker.
struct WakeOne {
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for WakeOne {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.ids).push(self.id);
        if let Some(task) = lock(&self.woken.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// Each lock is held for one push, take or swap, so a panic elsewhere
/// cannot leave what it guards half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn socket() -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
        client.unwrap()
    }

    #[tokio::test]
    async fn a_dripping_client_is_closed_before_one_whose_head_has_not_come() {
        let mut table = Table::new();
        let later = Instant::now() + Duration::from_secs(5);
        let (silent, conn) = table.admit(socket().await, later);
        table.insert(silent, conn);
        let (dripping, mut conn) = table.admit(socket().await, later);
        conn.head.extend_from_slice(b"GET /met");
        table.insert(dripping, conn);
        let (newest, conn) = table.admit(socket().await, later);
        table.insert(newest, conn);
        // The newest starts dripping too: still after the older dripper.
        if let Some(conn) = table.get_mut(newest) {
            conn.head.extend_from_slice(b"G");
        }
        table.note_progress(newest);
        assert_eq!(
            table.evict().map(|conn| conn.head),
            Some(b"GET /met".to_vec())
        );
        assert!(table.get_mut(dripping).is_none());
        assert!(table.evict().is_some());
        assert!(table.get_mut(newest).is_none(), "the other dripper next");
        assert!(table.evict().is_some());
        assert!(table.get_mut(silent).is_none());
        assert!(table.evict().is_none());
    }

    #[tokio::test]
    async fn only_the_woken_connections_are_named() {
        let mut table = Table::new();
        let later = Instant::now() + Duration::from_secs(5);
        let ids: Vec<u64> = {
            let mut ids = Vec::new();
            for _ in 0..3 {
                let (id, conn) = table.admit(socket().await, later);
                table.insert(id, conn);
                ids.push(id);
            }
            ids
        };
        let task = Waker::noop().clone();
        assert!(table.woken(&task).is_empty());
        if let Some(conn) = table.get_mut(ids[1]) {
            conn.waker().wake_by_ref();
        }
        assert_eq!(table.woken(&task), vec![ids[1]]);
        assert!(table.woken(&task).is_empty(), "taken once");
    }

    #[tokio::test]
    async fn the_oldest_expires_first_and_only_once_its_deadline_is_past() {
        let mut table = Table::new();
        let now = Instant::now();
        let (first, conn) = table.admit(socket().await, now + Duration::from_secs(1));
        table.insert(first, conn);
        let (second, conn) = table.admit(socket().await, now + Duration::from_secs(2));
        table.insert(second, conn);
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(1)));
        assert!(table.expired(now).is_none());
        assert!(table.expired(now + Duration::from_millis(1500)).is_some());
        assert!(table.expired(now + Duration::from_millis(1500)).is_none());
        assert_eq!(table.len(), 1);
        assert!(table.get_mut(second).is_some());
    }
}
