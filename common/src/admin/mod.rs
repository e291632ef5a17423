//! The admin listener (`--metrics-addr`): plaintext HTTP/1.1 serving
//! `GET /metrics` and the probes `GET /healthz` and `GET /readyz`.
//!
//! A probe must be answered while a crowd holds the port: the kubelet
//! gives it 2 to 3 s and restarts the pod or takes it out of its Service
//! otherwise, and the port takes no credentials. hyper serves each
//! connection in a task that reads until its head is whole, so a server
//! built on it can neither answer at accept nor pick whom to close by
//! what they have sent; with 1,000 reconnecting clients dripping heads,
//! probes had no answer after 12 s. This listener reads heads itself, in
//! one task that owns every connection:
//!
//! - **Accept eagerly.** No newcomer waits for a slot: at the limit
//!   another connection is closed at once, so each connection ahead of a
//!   probe in the kernel's accept queue costs O(1) (an accept, one read,
//!   perhaps one close), and the queue is bounded by the listen backlog.
//! - **Read at accept.** A client that waited in the queue has sent its
//!   head by the time it is accepted; it is read then, without waiting for
//!   the runtime to report the socket readable.
//! - **Answer at once.** A whole head gets its answer written straight
//!   away: a few bytes for the probes, then the connection closes (the
//!   kubelet asks for no keep-alive, Prometheus reconnects each scrape).
//!   `/metrics` is rendered and written by a task of its own.
//! - **Close the slow.** At most [`MAX_WAITING`] connections wait for the
//!   rest of a head; a newcomer past that closes the oldest that has sent
//!   part of one (a dripping client), else the oldest that has sent
//!   nothing. A probe's head comes in one packet: it is never one of the
//!   former, and while it is on its way [`MAX_WAITING`] newcomers must
//!   come before it could be picked.
//!
//! What is left is the kernel's: a probe waits for the connections queued
//! before it to be accepted (at most the listen backlog, 1,024), and a
//! crowd larger than that and [`MAX_WAITING`] together keeps the queue
//! full, so the kernel drops new connections, probes' too, until their
//! client tries again a second later. Keep the port to the kubelet and the
//! scraper (the Kubernetes manifests' NetworkPolicies do).
//!
//! So this listener does not serve through the skeleton in
//! [`crate::serve::server`]: it binds with [`crate::serve::listener`] and
//! shares its accept backoff, and owns everything after the accept itself.
//!
//! This file is that task; `answer.rs` parses heads and builds answers,
//! `waiting.rs` keeps the connections whose head is not whole, and
//! `socket.rs` reads and writes their sockets.

mod answer;
mod socket;
mod waiting;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::quiet::Quiet;
use answer::Reply;
use socket::{Step, close_abruptly, finish, pull, write_now};
use waiting::Table;

/// The most connections waiting for the rest of their request head. Real
/// clients send theirs in one packet and are answered before they would
/// wait; the bound is on what a crowd holds (a file descriptor and at most
/// [`MAX_HEAD`](answer::MAX_HEAD) bytes each: 2 MiB in all, half the
/// services' default connection limit in descriptors). Below it a crowd is
/// held without reconnecting; past it every newcomer closes one, and a
/// probe whose head is still on its way is picked only after this many
/// newcomers, milliseconds even at tens of thousands a second.
const MAX_WAITING: usize = 512;

/// The longest a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The most answers being written apart from the listener's task: scrapes
/// (rendered there) and answers the socket could not take at once.
/// Prometheus needs one; past this a scrape is answered 503.
const MAX_WRITERS: usize = 4;

/// Binds the admin listener at `addr`, if one is asked for: the listener
/// and the address it really has (port 0 picks one).
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: Option<SocketAddr>) -> io::Result<Option<(TcpListener, SocketAddr)>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = crate::serve::listener::bind(addr)?;
    let bound = listener.local_addr()?;
    Ok(Some((listener, bound)))
}

/// Serves `GET /metrics` from `metrics` on `listener` until the task
/// running it is aborted (which also ends the connections and the writers:
/// they are its own). Beside it, the probes an orchestrator uses:
/// `GET /healthz` (200 while the process answers) and, when `ready` is
/// given, `GET /readyz` (200 while that gauge is 1, 503 otherwise). They
/// are here because discount's own port asks for a client certificate,
/// which neither the kubelet nor Docker has.
///
/// Kept apart from the service's own port: Prometheus scrapes without a
/// client certificate, and a scrape must not compete with real traffic
/// for connection slots. How a probe is answered within milliseconds
/// while slow clients crowd the port is in this module's header.
pub async fn serve(listener: TcpListener, metrics: Metrics, ready: Option<IntGauge>) {
    let mut admin = Admin {
        listener,
        metrics,
        ready,
        table: Table::new(),
        expiry: Box::pin(tokio::time::sleep(HEADER_TIMEOUT)),
        paused: None,
        writers: JoinSet::new(),
        writer_slots: Arc::new(Semaphore::new(MAX_WRITERS)),
        quiet: Quiet::default(),
    };
    std::future::poll_fn(|cx| admin.poll(cx)).await;
}

/// The listener and every connection it has not answered yet.
struct Admin {
    listener: TcpListener,
    metrics: Metrics,
    ready: Option<IntGauge>,
    /// Connections waiting for the rest of their head.
    table: Table,
    /// Wakes the task when the oldest waiting connection runs out of time.
    expiry: Pin<Box<Sleep>>,
    /// Set while accepting pauses after an error.
    paused: Option<Pin<Box<Sleep>>>,
    /// The tasks writing scrapes and answers too big for the socket.
    writers: JoinSet<()>,
    writer_slots: Arc<Semaphore>,
    quiet: Quiet,
}

impl Admin {
    /// Does all the work there is, then waits for more: reads the heads
    /// that came in (answering the whole ones), accepts every newcomer,
    /// closes connections out of time. Never ready: it serves until the
    /// task is aborted. Tokio's cooperative budget makes it yield to other
    /// tasks after some hundred operations.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(Some(_)) = self.writers.poll_join_next(cx) {}
        self.read_woken(cx);
        self.accept(cx);
        self.expire(cx);
        Poll::Pending
    }

    /// Reads the waiting connections that have sent something, and
    /// answers those whose head is now whole.
    fn read_woken(&mut self, cx: &mut Context<'_>) {
        for id in self.table.woken(cx.waker()) {
            let Some(conn) = self.table.get_mut(id) else {
                continue; // answered or closed since
            };
            match pull(conn, false, self.ready.as_ref()) {
                Step::Wait => self.table.note_progress(id),
                Step::Answer(reply) => {
                    if let Some(conn) = self.table.remove(id) {
                        self.reply(conn.tcp, reply);
                    }
                }
                Step::Gone => drop(self.table.remove(id)),
            }
        }
    }

    /// Accepts until the kernel's queue is empty (or the budget spent).
    fn accept(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(pause) = &mut self.paused {
                if pause.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.paused = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok((tcp, _peer))) => self.admit(tcp),
                Poll::Ready(Err(error)) => {
                    if let Some(more) = self.quiet.should_log("accept", std::time::Instant::now()) {
                        tracing::warn!(%error, more, "the admin listener cannot accept; pausing accepts briefly");
                    }
                    self.paused = Some(Box::pin(tokio::time::sleep(
                        crate::serve::listener::ACCEPT_ERROR_BACKOFF,
                    )));
                }
            }
        }
    }

    /// A newcomer: read at once, answered if its head is whole, else
    /// waiting (closing another if too many are).
    fn admit(&mut self, tcp: TcpStream) {
        let deadline = Instant::now() + HEADER_TIMEOUT;
        let (id, mut conn) = self.table.admit(tcp, deadline);
        match pull(&mut conn, true, self.ready.as_ref()) {
            Step::Answer(reply) => self.reply(conn.tcp, reply),
            Step::Gone => {}
            Step::Wait => {
                if self.table.len() >= MAX_WAITING {
                    self.make_room();
                }
                self.table.insert(id, conn);
            }
        }
    }

    /// Closes one waiting connection for a newcomer ([`Table::evict`]).
    fn make_room(&mut self) {
        if let Some(conn) = self.table.evict() {
            close_abruptly(&conn.tcp);
            if let Some(more) = self.quiet.should_log("full", std::time::Instant::now()) {
                tracing::warn!(
                    waiting = MAX_WAITING,
                    more,
                    "the admin listener is full of clients that have not finished their request; each newcomer closes one"
                );
            }
        }
    }

    /// Closes the connections whose head did not come in time, and sets
    /// the timer for the next.
    fn expire(&mut self, cx: &mut Context<'_>) {
        loop {
            while let Some(late) = self.table.expired(Instant::now()) {
                close_abruptly(&late.tcp);
            }
            let Some(deadline) = self.table.next_deadline() else {
                return;
            };
            if self.expiry.deadline() != deadline {
                self.expiry.as_mut().reset(deadline);
            }
            if self.expiry.as_mut().poll(cx).is_pending() {
                return;
            }
        }
    }

    /// Writes `reply` on `tcp` and closes it: at once if the socket takes
    /// it whole (a probe's answer always fits a new socket's buffer), else
    /// in a writer task.
    fn reply(&mut self, tcp: TcpStream, reply: Reply) {
        let bytes = match reply {
            Reply::Now(bytes) => bytes,
            Reply::Scrape { head_only } => {
                let Some(slot) = self.writer_slot() else {
                    let _ = write_now(&tcp, &answer::busy(MAX_WRITERS));
                    return;
                };
                let metrics = self.metrics.clone();
                self.writers.spawn(async move {
                    let text = metrics.render();
                    finish(tcp, answer::metrics(&text, head_only), slot).await;
                });
                return;
            }
        };
        match write_now(&tcp, &bytes) {
            Ok(written) if written < bytes.len() => {
                // The client's window is smaller than the answer: a client
                // reading slowly, or not at all. It gets a writer if one is
                // free, and is closed otherwise.
                if let Some(slot) = self.writer_slot() {
                    let rest = bytes[written..].to_vec();
                    self.writers.spawn(finish(tcp, rest, slot));
                }
            }
            Ok(_) | Err(_) => {}
        }
    }

    fn writer_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.writer_slots).try_acquire_owned().ok()
    }
}
