//! Connections that can be closed from outside the task serving them, at
//! the cost of no second file descriptor.
//!
//! hyper, axum and tonic serve each connection in a task of its own. When a
//! graceful shutdown runs out of time, dropping the server future does not
//! end those tasks: a client stuck in a call would keep its connection, and
//! an in-process server, open. Each connection registered with a
//! [`ConnectionTracker`] gets a cancellation token; its stream, wrapped in
//! [`Tracked`], reads end-of-stream and fails writes once the token is
//! cancelled, waking a task blocked on it, which ends the connection and
//! closes its socket. (An earlier version kept a `dup` of every socket to
//! shut it down from outside: two descriptors a connection, which halved
//! how many connections fit under the process's file limit.)
//!
//! The same tracker orders connections by age, so a server at its
//! connection limit can close the oldest one of a kind
//! ([`ConnectionTracker::close_oldest`]), as discount does with unfinished
//! TLS handshakes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::Open;
use crate::serve::backlog::Backlog;

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

    /// Starts tracking a connection. Wrap the stream that will be served
    /// over it with [`Registration::wrap`], or wait on
    /// [`Registration::closed`]; it counts as open until the registration
    /// (or what it wraps) is dropped.
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
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Closes every open connection; returns how many.
    pub fn close_all(&self) -> usize {
        let registry = self.lock();
        for token in registry.open.values() {
            token.cancel();
        }
        registry.open.len()
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

/// A connection being tracked; dropping it (or what it wraps) ends that.
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

    /// `io`, counted as this connection until dropped, and ended when the
    /// tracker closes it.
    pub fn wrap<T>(self, io: T) -> Tracked<T> {
        Tracked {
            io,
            backlog: Backlog::current(),
            closing: Box::pin(self.token.clone().cancelled_owned()),
            registration: self,
        }
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

/// An I/O stream counted by a [`ConnectionTracker`]; reads and writes go
/// straight to the stream inside until the tracker closes it, then reads
/// see end-of-stream and writes fail.
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    backlog: Backlog,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    registration: Registration,
}

impl<T> Tracked<T> {
    /// Whether the tracker has closed this connection. Polling also
    /// registers the task to be woken when it does.
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        // Checked first, so the finished future is never polled again.
        self.registration.token.is_cancelled() || self.closing.as_mut().poll(cx).is_ready()
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(())); // end of stream
        }
        // Take in no more requests while the process cannot start the
        // ones it has (see [`crate::serve::backlog`]).
        std::task::ready!(self.backlog.poll_ready(cx));
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn closing_all_wakes_a_blocked_reader_and_forgets_the_connection() {
        let (client, server_side) = pair().await;
        let tracker = ConnectionTracker::new();
        let mut tracked = tracker.register().wrap(server_side);
        assert_eq!(tracker.open(), 1);

        // A read that would wait forever: the client sends nothing.
        let reader = tokio::spawn(async move {
            let mut buffer = [0_u8; 16];
            let read = tracked.read(&mut buffer).await;
            let write = tracked.write_all(b"late").await;
            drop(tracked);
            (read, write)
        });
        tokio::task::yield_now().await;
        assert_eq!(tracker.close_all(), 1);

        let (read, write) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader is still blocked")
            .unwrap();
        assert_eq!(read.unwrap(), 0, "expected end of stream");
        assert_eq!(write.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(tracker.open(), 0);
        drop(client);
    }

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
