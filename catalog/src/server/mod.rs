//! Serving HTTP: hyper directly (HTTP/1.1 and h2c), with a header timeout,
//! limits on header size and count and on connections, and a drain with a
//! time limit at shutdown.
//!
//! `run` here takes the shutdown steps (the delay while `/readyz` answers
//! 503, then a bounded drain); the accept loop and the connection limit are
//! in `accept.rs`, one connection's life in `connection.rs`, the limits on
//! each connection's requests and the hyper builder in `limits.rs`.

mod accept;
mod connection;
mod limits;

pub use limits::{MAX_HEADERS, MAX_REQUEST_HEAD};

use std::future::Future;
use std::time::Duration;

use common::serve::connections::ConnectionTracker;
use tokio::net::TcpListener;
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
///
/// Serving itself cannot fail: a connection's errors end that connection
/// only, and accept errors are retried ([`common::serve::listener::accept`]).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = ConnectionTracker::new();
    let app = router(state.clone(), options.request_timeout);
    let open = state.metrics.connections.clone();
    let delay = options.shutdown_delay;
    let (drain, draining) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        state.begin_shutdown();
        drain.send_replace(true);
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "/readyz answers 503; still serving for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("no longer accepting; draining requests in flight");
    };
    let tracker = connections.clone();
    let finished =
        common::shutdown::with_drain_limit(shutdown, options.drain_timeout, move |signal| {
            accept::serve(listener, app, options, tracker, open, draining, signal)
        })
        .await;
    if finished.is_none() {
        let closed = connections.close_all();
        tracing::warn!(
            connections = closed,
            "closed connections with requests still in flight"
        );
    }
}
