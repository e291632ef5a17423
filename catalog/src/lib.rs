//! The catalog service: an HTTP API over the product list that asks the
//! discount service, over TLS gRPC, for each product's price for a customer.
//!
//! - [`routes`] holds the router and handlers (`GET /`, `GET /products`,
//!   and the probes `GET /healthz`, `GET /readyz`).
//! - [`customer`] parses `X-USER-ID` and knows the customers.
//! - [`products`] is the product list.
//! - [`discount`] is the gRPC client of the discount service.
//! - [`json`] writes products exactly as the seed's Go catalog did.
//! - [`config`] is the command line.
//!
//! `main.rs` only wires these together, so tests run the real server
//! in-process on `127.0.0.1:0`.

pub mod config;
pub mod customer;
pub mod discount;
pub mod error;
pub mod json;
pub mod products;
pub mod routes;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use common::conn::ConnectionTracker;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::Config;
pub use error::{CatalogError, StartupError};
pub use routes::{AppState, router};

/// How the HTTP server treats connections, requests and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and the
    /// longest an HTTP/1 connection may sit idle between requests. Bounds
    /// slow-header ("slowloris") clients.
    pub header_read_timeout: Duration,
    /// The most connections served at once; further clients wait in the
    /// kernel's queue until one closes.
    pub max_connections: usize,
    /// After the shutdown signal, how long requests in flight get to finish
    /// before their connections are closed.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The largest request head (request line and headers) accepted: 16 KiB,
/// plenty for this API. Larger ones are answered 431.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The most headers in one request; more are answered 431.
pub const MAX_HEADERS: usize = 64;

/// Serves the catalog API on `listener` until `shutdown` completes, then
/// lets requests in flight finish for at most the drain timeout.
///
/// Connections are served with hyper directly rather than `axum::serve`,
/// which sets no timer and so no header timeout, and no connection limit.
///
/// # Errors
/// An I/O error from the HTTP server.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let connections = ConnectionTracker::new();
    let app = router(state, options.request_timeout);
    let tracker = connections.clone();
    let finished =
        common::shutdown::with_drain_limit(shutdown, options.drain_timeout, move |signal| {
            serve(listener, app, options, tracker, signal)
        })
        .await;
    if finished.is_none() {
        let closed = connections.close_all();
        tracing::warn!(
            connections = closed,
            "closed connections with requests still in flight"
        );
    }
    Ok(())
}

/// Accepts and serves connections until `signal`, then waits for the open
/// ones to finish their requests.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    connections: ConnectionTracker,
    signal: impl Future<Output = ()> + Unpin,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD).unwrap_or(u32::MAX))
        // Pings find peers that vanished without closing.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut signal = signal;
    loop {
        let accepted = tokio::select! {
            () = &mut signal => break,
            accepted = accept_within(&listener, &slots) => accepted,
        };
        let Some((slot, tcp, peer)) = accepted else {
            break;
        };
        let registration = connections.register(&tcp);
        let (http, app, watcher) = (Arc::clone(&http), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper-util first reads to tell HTTP/1 from HTTP/2, with no time
            // limit, and hyper's header timer only starts after that: a
            // client that connects and sends nothing would hold its slot
            // forever. So the first byte must come within the header timeout.
            let mut first = [0_u8; 1];
            match tokio::time::timeout(options.header_read_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
            }
            let io = TokioIo::new(registration.wrap(tcp));
            let service = TowerToHyperService::new(app);
            let connection = watcher.watch(http.serve_connection(io, service).into_owned());
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Waits for a free connection slot, then for a connection. `None` only if
/// the semaphore was closed, which never happens.
async fn accept_within(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    let (tcp, peer) = common::net::accept(listener).await;
    Some((slot, tcp, peer))
}
