//! Connections that can be closed from outside the task serving them.
//!
//! hyper, axum and tonic serve each connection in a task of its own. When a
//! graceful shutdown runs out of time, dropping the server future does not
//! end those tasks: a client stuck in a call would keep its connection, and
//! an in-process server, open. The [`ConnectionTracker`] keeps a duplicate
//! handle of every accepted socket; shutting a socket down through it wakes
//! the task serving it with end-of-stream, which ends the connection.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The set of open connections of one server.
#[derive(Debug, Clone, Default)]
pub struct ConnectionTracker {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Socket>,
}

impl ConnectionTracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `tcp`. Wrap the stream that will be served over it
    /// (`tcp` itself, or a TLS stream around it) with
    /// [`Registration::wrap`]; the connection counts as open until that is
    /// dropped.
    ///
    /// If the socket cannot be duplicated (out of file descriptors), the
    /// connection is served untracked rather than refused, and that is
    /// logged.
    pub fn register(&self, tcp: &TcpStream) -> Registration {
        let guard = match SockRef::from(tcp).try_clone() {
            Ok(handle) => {
                let mut registry = self.lock();
                let id = registry.next_id;
                registry.next_id += 1;
                registry.open.insert(id, handle);
                Some(Guard {
                    id,
                    registry: Arc::clone(&self.registry),
                })
            }
            Err(error) => {
                tracing::warn!(%error, "cannot track a connection; it will not be force-closed at shutdown");
                None
            }
        };
        Registration { guard }
    }

    /// How many tracked connections are open.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Shuts down every open connection in both directions; returns how many.
    pub fn close_all(&self) -> usize {
        let registry = self.lock();
        for socket in registry.open.values() {
            // Already closed by the peer is fine: that is the goal.
            let _ = socket.shutdown(Shutdown::Both);
        }
        registry.open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or read.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection being tracked; dropping it (or what it wraps) ends that.
#[derive(Debug)]
pub struct Registration {
    guard: Option<Guard>,
}

impl Registration {
    /// `io`, counted as this connection until dropped.
    pub fn wrap<T>(self, io: T) -> Tracked<T> {
        Tracked {
            io,
            _guard: self.guard,
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
/// straight to the stream inside.
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    _guard: Option<Guard>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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

/// Lets tonic see the peer address (and TLS details) of a tracked stream.
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn closing_all_wakes_a_blocked_reader_and_forgets_the_connection() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server_side, _) = listener.accept().await?;

        let tracker = ConnectionTracker::new();
        let mut tracked = tracker.register(&server_side).wrap(server_side);
        assert_eq!(tracker.open(), 1);

        // A read that would wait forever: the client sends nothing.
        let reader = tokio::spawn(async move {
            let mut buffer = [0_u8; 16];
            let read = tracked.read(&mut buffer).await;
            drop(tracked);
            read
        });
        tokio::task::yield_now().await;
        assert_eq!(tracker.close_all(), 1);

        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .map_err(|_| io::Error::other("reader still blocked"))?
            .map_err(io::Error::other)?;
        assert_eq!(read?, 0, "expected end of stream");
        assert_eq!(tracker.open(), 0);
        drop(client);
        Ok(())
    }
}
