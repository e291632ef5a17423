//! The catalog service: an HTTP API over the product list that asks the
//! discount service, over TLS gRPC, for each product's price for a customer.
//!
//! - [`routes`] holds the router and handlers (`GET /`, `GET /products`).
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

use tokio::net::TcpListener;

pub use config::Config;
pub use error::{CatalogError, StartupError};
pub use routes::{AppState, router};

/// Serves the catalog API on `listener` until `shutdown` completes, then
/// lets requests in flight finish.
///
/// # Errors
/// An I/O error from the HTTP server.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    // Responses are small and written at once; Nagle would only add delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
