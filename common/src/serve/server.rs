//! The one way both services serve connections: accept with backoff, a
//! place under `--max-connections` for each newcomer (made by closing the
//! connection a real client misses least), each connection's handshake in
//! a task of its own, hyper-util's connection builder over what comes
//! through, and at shutdown a drain with a time limit.
//!
//! What differs between the catalog's HTTP server and discount's gRPC
//! server is given, not forked: the hyper builder with its limits, the
//! handshake (TLS, or waiting for the first byte), the tower service, and
//! which connections a newcomer displaces ([`Eviction`]). One connection's
//! life (ages, idle and eviction closes, the drain) is in `connection.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::connection::{Admitted, Connection, Service};
use super::connections::{ConnectionTracker, place_under};
use crate::quiet::Quiet;

/// Which connections a newcomer at the connection limit closes to make
/// room, after the oldest one still in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The oldest idle one, as nginx does: a client waiting for its first
    /// answer counts for more than one idling between requests (the
    /// catalog). Each request makes its connection busy while it runs.
    IdleFirst,
    /// The oldest one whose client is not on the allow-list, else the one
    /// whose last call began longest ago, idle or not (discount). A real
    /// client starts calls all the time; one that holds a single call open
    /// for ever (a health Watch, a message never finished) does not, and
    /// picking idle connections first let such clients evict every real
    /// client between two of its calls. The service says when a call
    /// begins, through the [`super::connection::ConnectionHandle`] in its
    /// extensions, so that only calls it takes count.
    StalestCall,
}

/// How a server treats its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most connections open at once, those in their handshake
    /// included.
    pub max_connections: usize,
    /// Which connections a newcomer at the limit displaces.
    pub eviction: Eviction,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// A connection this old is asked to close (HTTP/2 GOAWAY), so that
    /// long-lived clients re-resolve and spread over new replicas; the
    /// second duration later it is closed whatever it is doing.
    pub max_age: Option<(Duration, Duration)>,
}

/// A server: its hyper builder, the service its requests go to, and its
/// limits.
#[derive(Debug)]
pub struct Server<S> {
    /// Protocol settings and the bounds on what one connection may ask.
    pub http: auto::Builder<TokioExecutor>,
    /// Where requests go.
    pub service: S,
    /// How connections are treated.
    pub limits: Limits,
    /// The gauge of open connections.
    pub open: IntGauge,
    /// Set once the shutdown has begun, before the server stops accepting:
    /// clients are asked to leave from then on (HTTP/2 GOAWAY, HTTP/1
    /// `Connection: close`) if given.
    pub leaving: Option<watch::Receiver<bool>>,
}

/// The line logged for each way of making room; only the first of a kind
/// every interval is written.
fn made_room(eviction: Eviction, kind: Option<usize>) -> &'static str {
    match (kind, eviction) {
        (Some(0), _) => "closed the oldest connection still in its handshake to make room",
        (Some(1), _) => {
            "closed the oldest connection of a client not on the allow-list to make room"
        }
        (Some(_), Eviction::IdleFirst) => "closed the oldest idle connection to make room",
        (Some(_), Eviction::StalestCall) => {
            "closed the connection whose last call began longest ago to make room"
        }
        (None, _) => "every connection is busy; the newcomer waits for one being closed",
    }
}

impl<S: Service> Server<S> {
    /// Serves connections from `listener`, each after `handshake` (which
    /// turns the accepted socket into the stream served, within its own
    /// time limit, or refuses it), until `shutdown` completes, then
    /// stops accepting, asks each connection to close once its requests
    /// are answered, and waits for them for at most `drain_timeout`;
    /// past it the rest are closed. `what` names the requests in the logs
    /// ("calls", "requests").
    ///
    /// Serving itself cannot fail: a connection's errors end that
    /// connection only, and accept errors are retried
    /// ([`super::listener::accept`]).
    pub async fn serve<H, F, IO>(
        self,
        listener: TcpListener,
        handshake: H,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain_timeout: Duration,
        what: &'static str,
    ) where
        H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
        F: Future<Output = Option<Admitted<IO>>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let connections = ConnectionTracker::new();
        let tracker = connections.clone();
        let finished = crate::shutdown::with_drain_limit(shutdown, drain_timeout, move |signal| {
            self.accept(listener, handshake, tracker, signal)
        })
        .await;
        // Past the drain time the server's future was dropped, and with it
        // the tasks serving each connection, which closes their sockets.
        if finished.is_none() {
            let closed = connections.open();
            tracing::warn!(
                connections = closed,
                "closed connections with {what} still in flight"
            );
        }
    }

    /// Accepts and serves connections until `signal`, then asks each to
    /// close when its requests are done and waits for them.
    async fn accept<H, F, IO>(
        self,
        listener: TcpListener,
        handshake: H,
        connections: ConnectionTracker,
        signal: impl Future<Output = ()> + Unpin,
    ) where
        H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
        F: Future<Output = Option<Admitted<IO>>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            http,
            service,
            limits,
            open,
            leaving,
        } = self;
        let http = Arc::new(http);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        // Whom a newcomer at the limit may displace, in order: connections
        // still in their handshake, then those of unlisted clients, then
        // idle ones or all by their last call.
        let displaceable: [ConnectionTracker; 3] = Default::default();
        let (stop, stopping) = watch::channel(false);
        let leaving = leaving.unwrap_or_else(|| stopping.clone());
        let (at_limit, refusals) = (Quiet::default(), Arc::new(Quiet::default()));
        let mut tasks = JoinSet::new();
        let mut signal = signal;
        loop {
            while tasks.try_join_next().is_some() {}
            let (tcp, peer) = tokio::select! {
                () = &mut signal => break,
                accepted = super::listener::accept(&listener) => accepted,
            };
            // Operators need to know the limit is reached, once an
            // interval, not once a connection.
            let logged = |kind: Option<usize>| {
                let what = made_room(limits.eviction, kind);
                if let Some(unlogged) = at_limit.should_log(what, Instant::now()) {
                    let max_connections = limits.max_connections;
                    tracing::warn!(%peer, max_connections, since_last_line = unlogged + 1, "at the connection limit (--max-connections): {what}");
                }
            };
            let ranked: Vec<_> = displaceable.iter().collect();
            let slot = tokio::select! {
                () = &mut signal => break,
                slot = place_under(&slots, &ranked, logged) => slot,
            };
            let Some(slot) = slot else {
                break; // never closed
            };
            let connection = Connection {
                _registration: connections.register().holding(slot).counted(&open),
                displaceable: displaceable.clone(),
                http: Arc::clone(&http),
                service: service.clone(),
                limits: limits.clone(),
                leaving: leaving.clone(),
                stopping: stopping.clone(),
                peer,
                http1: Arc::new(AtomicBool::new(true)),
                refusals: Arc::clone(&refusals),
            };
            let handshaking = displaceable[0].register();
            tasks.spawn(connection.serve(handshaking, handshake(tcp, peer)));
        }
        drop(listener);
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
    }
}
