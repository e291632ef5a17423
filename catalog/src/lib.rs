//! The catalog service: an HTTP API over the product list that asks the
//! discount service, over mutual TLS gRPC, for each product's price for a
//! customer.
//!
//! - [`routes`] holds the router and handlers (`GET /`, `GET /products`,
//!   and the probes `GET /healthz`, `GET /readyz`).
//! - [`customer`] parses `X-USER-ID` and knows the customers.
//! - [`products`] is the product list.
//! - [`json`] writes products exactly as the seed's Go catalog did.
//! - [`discount`] is the gRPC client of the discount service.
//! - [`tls`] is the catalog's side of the TLS hop: trust, identity, checks.
//! - [`server`] serves HTTP connections, with limits and a bounded drain.
//! - [`metrics`] counts requests, listings and calls for Prometheus.
//! - [`config`] turns the command line into typed settings.
//! - [`app`] puts them together; `main.rs` and the tests both start the
//!   service through [`Application`].

pub mod app;
pub mod config;
pub mod customer;
pub mod discount;
pub mod discount_status;
pub mod error;
pub mod json;
pub mod metrics;
pub mod products;
pub mod routes;
pub mod server;
pub mod tls;

pub use app::Application;
pub use config::Config;
pub use error::{CatalogError, StartupError};
pub use routes::{AppState, router};
