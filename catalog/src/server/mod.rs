//! Serving HTTP: hyper directly (HTTP/1.1 and h2c) through the skeleton
//! both services share ([`common::serve::server`]), with a header timeout,
//! limits on header size and count and on connections, and a drain with a
//! time limit at shutdown.
//!
//! `run` here takes the shutdown steps (the delay while `/readyz` answers
//! 503, then a bounded drain); the limits on each connection's requests and
//! the hyper builder are in `limits.rs`.

mod limits;

pub use limits::{MAX_HEADERS, MAX_REQUEST_HEAD};

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::serve::connection::Admitted;
use common::serve::server::{Eviction, Limits, Server};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::routes::{AppState, router};

/// How the HTTP server treats connections, requests and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and the
    /// longest a connection may sit with no request in flight. Bounds
    /// slow-header ("slowloris") and idle clients.
    pub header_read_timeout: Duration,
    /// The most connections served at once; see the flag.
    pub max_connections: usize,
    /// The most requests open at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// After the shutdown signal, how long to keep serving while `/readyz`
    /// answers 503, so that load balancers stop sending first.
    pub shutdown_delay: Duration,
    /// Then, how long requests in flight get to finish before their
    /// connections are closed.
    pub drain_timeout: Duration,
}

/// Serves the catalog API on `listener` until `shutdown` completes, then
/// lets requests in flight finish for at most the drain timeout.
///
/// Connections are served with hyper directly rather than `axum::serve`,
/// which sets no timer and so no header timeout, and no connection limit.
/// From the start of the shutdown delay clients are asked to leave
/// (HTTP/2 GOAWAY, HTTP/1 `Connection: close`).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(state.clone(), options.request_timeout);
    let open = state.metrics.connections.clone();
    let delay = options.shutdown_delay;
    let (leave, leaving) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        state.begin_shutdown();
        leave.send_replace(true);
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "/readyz answers 503; still serving for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("no longer accepting; draining requests in flight");
    };
    let limit = options.header_read_timeout;
    let server = Server {
        http: limits::builder(options),
        service: app,
        limits: Limits {
            max_connections: options.max_connections,
            eviction: Eviction::IdleFirst,
            idle_timeout: Some(limit),
            max_age: None,
        },
        open,
        leaving: Some(leaving),
    };
    server
        .serve(
            listener,
            move |tcp, peer| first_byte(tcp, peer, limit),
            shutdown,
            options.drain_timeout,
            "requests",
        )
        .await;
}

/// The catalog's handshake: the first byte within the header timeout.
/// hyper-util first reads to tell HTTP/1 from HTTP/2, with no time limit,
/// and hyper's header timer only starts after that: a client that connects
/// and sends nothing would hold its slot forever.
async fn first_byte(
    tcp: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<Admitted<TcpStream>> {
    let mut first = [0_u8; 1];
    match tokio::time::timeout(limit, tcp.peek(&mut first)).await {
        Ok(Ok(read)) if read > 0 => Some(Admitted::plain(tcp)),
        Ok(_) => {
            tracing::debug!(%peer, "closed by the client before sending anything");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "no request within the header timeout; closing");
            None
        }
    }
}
