//! Backpressure from the scheduler to the sockets: stop reading requests
//! while the runtime has more work queued than it can start.
//!
//! hyper serves each HTTP/2 stream in a task of its own, spawned as soon as
//! the request head is taken off the connection. A stream its client
//! cancels at once no longer counts against `SETTINGS_MAX_CONCURRENT_STREAMS`,
//! and h2's rapid-reset guard (`max_pending_accept_reset_streams`) only
//! counts streams cancelled *before* the server took them. So a client
//! that sends large request heads and cancels each one straight away gets
//! every stream taken, and the connection task spawns them faster than the
//! workers can run them: each queued task holds its request head. An
//! attack of that shape (15 KB heads, four connections) grew discount by
//! 0.8 GB/s until an allocation failed, with every byte in tasks waiting
//! in tokio's global run queue.
//!
//! No per-stream count sees those tasks: they have not run yet, so no
//! layer of ours has been called. The run queue itself does see them. So
//! [`Backlog`] is consulted before every read from a client: while the
//! runtime's global queue holds more than [`MAX_QUEUED_TASKS`] tasks, the
//! read waits (re-checking every [`PAUSE`]) and the workers drain the
//! queue instead of taking in more. Memory in queued requests is then
//! bounded by the threshold times the largest request head, whatever the
//! client sends, and an honest client only sees its reads pause while the
//! process is overloaded anyway.
//!
//! Every connection both services serve reads through [`Gated`].
//!
//! The queue is tokio's multi-threaded scheduler's; on a current-thread
//! runtime (in-process tests) tasks never reach it and nothing pauses.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::{Handle, RuntimeMetrics};
use tokio::time::{Instant, Sleep};

/// Above this many tasks waiting in the global run queue, reads pause.
/// Honest load keeps it near zero: tasks spill there only when a worker's
/// own queue (256 tasks) overflows.
pub const MAX_QUEUED_TASKS: usize = 256;

/// How long a paused read waits before looking at the queue again.
pub const PAUSE: Duration = Duration::from_millis(1);

/// Decides whether a connection may read now; one per connection.
#[derive(Debug, Default)]
pub struct Backlog {
    metrics: Option<RuntimeMetrics>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Backlog {
    /// A gate on the runtime this is called from, if any.
    pub fn current() -> Self {
        Self {
            metrics: Handle::try_current().ok().map(|h| h.metrics()),
            pause: None,
        }
    }

    /// `Ready` when the run queue is short enough to take in more work;
    /// otherwise `Pending`, with the task woken after [`PAUSE`] to ask
    /// again.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let queued = self
            .metrics
            .as_ref()
            .map_or(0, RuntimeMetrics::global_queue_depth);
        if queued <= MAX_QUEUED_TASKS {
            self.pause = None;
            return Poll::Ready(());
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PAUSE)));
        if pause.as_mut().poll(cx).is_ready() {
            // Waited once and the queue is still long: wait again.
            pause.as_mut().reset(Instant::now() + PAUSE);
            let _ = pause.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

/// A connection's stream whose reads wait while the run queue is long
/// ([`Backlog`]); writes go straight through.
#[derive(Debug)]
pub struct Gated<T> {
    io: T,
    backlog: Backlog,
}

impl<T> Gated<T> {
    /// `io`, gated on the runtime this is called from.
    pub fn new(io: T) -> Self {
        Self {
            io,
            backlog: Backlog::current(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.backlog.poll_ready(cx));
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
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
