//! The accept loop: the connection limit and which connection makes room at
//! it, each connection's handshake in a task of its own, its lifetime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::quiet::Quiet;
use common::serve::connections::{ConnectionTracker, Tracked, place_under};
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// Handshaken connections waiting for the gRPC server to pick them up.
const READY_QUEUE: usize = 128;

/// How many connections [`incoming`] keeps open, and for how long.
#[derive(Debug, Clone)]
pub(super) struct ConnectionBounds {
    /// The gauge of open connections.
    pub(super) open: IntGauge,
    pub(super) max_connections: usize,
    /// Past this a connection is closed whatever it is doing.
    pub(super) lifetime: Duration,
}

/// Accepts TCP connections, turns each into a stream with `upgrade` (the
/// TLS handshake, or nothing) in a task of its own, and yields those that
/// come through, tracked. `upgrade` also says whether the client's
/// identity is on the allow-list.
///
/// At most `max_connections` are open at once, those still in their
/// handshake included. At the limit, to make room, the oldest connection
/// still in its handshake is closed, or else the oldest whose client is
/// not on the allow-list (it can reach health and reflection only, so
/// churning such connections cannot push an allowed client out), or else
/// the one whose last call (or whose start, if none) began longest ago,
/// idle or not. So neither
/// clients that connect and say nothing (with a valid certificate or
/// without) nor clients that each hold one call open for ever (a health
/// Watch, a message never finished) and reconnect when closed can keep a
/// real client out: a real client starts calls all the time, and is the
/// last to be picked. (Picking idle connections first let such clients
/// evict every real client between two of its calls.)
///
/// Each connection lives at most `lifetime`, so no stream left open keeps
/// it past the GOAWAY of `--max-connection-age` for good.
///
/// The accept loop stops when the returned stream is dropped, which is what
/// tonic does when it shuts down.
pub(super) fn incoming<IO, F, U>(
    listener: TcpListener,
    connections: ConnectionTracker,
    bounds: ConnectionBounds,
    upgrade: U,
) -> ReceiverStream<io::Result<Tracked<IO>>>
where
    IO: Send + 'static,
    F: Future<Output = Option<(IO, bool)>> + Send + 'static,
    U: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
{
    let ConnectionBounds {
        open,
        max_connections,
        lifetime,
    } = bounds;
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let slots = Arc::new(Semaphore::new(max_connections));
    let handshaking = ConnectionTracker::new();
    // Connections past their handshake whose client is not on the
    // allow-list, oldest first.
    let unlisted = ConnectionTracker::new();
    // Connections past their handshake by when their last call began.
    let by_last_call = ConnectionTracker::new();
    let quiet = Arc::new(Quiet::default());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = ready.closed() => break,
                accepted = common::serve::listener::accept(&listener) => accepted,
            };
            // Operators need to know the limit is reached, once an
            // interval, not once a connection.
            let made_room = |closed: Option<usize>| {
                let what = match closed {
                    Some(0) => "closed the oldest unfinished TLS handshake to make room",
                    Some(1) => {
                        "closed the oldest connection of a client not on the allow-list to make room"
                    }
                    Some(_) => {
                        "closed the connection whose last call began longest ago to make room"
                    }
                    None => "waiting for a connection being closed",
                };
                if let Some(unlogged) = quiet.should_log(what, std::time::Instant::now()) {
                    tracing::warn!(%peer, max_connections, since_last_line = unlogged + 1, "at the connection limit (--max-connections): {what}");
                }
            };
            // Idle connections are not picked before busy ones: a real
            // client is idle between its calls, while one that holds a
            // call open (a Watch) and reconnects whenever it is closed
            // never is. By when the last call began, the one that holds a
            // call open goes first.
            let displaceable = [&handshaking, &unlisted, &by_last_call];
            let slot = tokio::select! {
                () = ready.closed() => break,
                slot = place_under(&slots, &displaceable, made_room) => slot,
            };
            let Some(slot) = slot else {
                break; // never closed
            };
            let registration = connections.register().holding(slot).counted(&open);
            let handshake = handshaking.register();
            let evicted = handshake.closed();
            let upgraded = upgrade(tcp, peer);
            let (ready, by_last_call, unlisted) =
                (ready.clone(), by_last_call.clone(), unlisted.clone());
            // None only for a lifetime too long to represent: no end.
            let end_of_life = tokio::time::Instant::now().checked_add(lifetime);
            tokio::spawn(async move {
                let stream = tokio::select! {
                    stream = upgraded => stream,
                    () = evicted => None,
                };
                // Picked to make room just as the handshake finished: the
                // newcomer waits for this slot, so give it up.
                let evicted = handshake.leave();
                if let Some((stream, admitted)) = stream.filter(|_| !evicted) {
                    let ranked = if admitted { &by_last_call } else { &unlisted };
                    let mut tracked = registration.wrap_watched(stream, ranked);
                    if let Some(end_of_life) = end_of_life {
                        tracked = tracked.closing_at(end_of_life);
                    }
                    // Err only when the server is shutting down.
                    let _ = ready.send(Ok(tracked)).await;
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}
