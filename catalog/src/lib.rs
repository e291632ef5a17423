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

use common::conn::{ConnectionTracker, Tracked};
use tokio::net::{TcpListener, TcpStream};

pub use config::Config;
pub use error::{CatalogError, StartupError};
pub use routes::{AppState, router};

/// How the HTTP server treats requests and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// After the shutdown signal, how long requests in flight get to finish
    /// before their connections are closed.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves the catalog API on `listener` until `shutdown` completes, then
/// lets requests in flight finish for at most the drain timeout.
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
    let listener = TrackedListener {
        listener,
        connections: connections.clone(),
    };
    let app = router(state, options.request_timeout);
    let finished = common::shutdown::with_drain_limit(shutdown, options.drain_timeout, |signal| {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .into_future()
    })
    .await;
    match finished {
        Some(result) => result,
        None => {
            let closed = connections.close_all();
            tracing::warn!(
                connections = closed,
                "closed connections with requests still in flight"
            );
            Ok(())
        }
    }
}

/// The TCP listener, with every connection tracked so that the ones still
/// busy at the end of the drain time can be closed.
#[derive(Debug)]
struct TrackedListener {
    listener: TcpListener,
    connections: ConnectionTracker,
}

impl axum::serve::Listener for TrackedListener {
    type Io = Tracked<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, peer) = common::net::accept(&self.listener).await;
        (self.connections.register(&tcp).wrap(tcp), peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
