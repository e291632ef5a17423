//! The catalog service: an HTTP API over the product list that asks the
//! discount service, over mutual TLS gRPC, for each product's price for a
//! customer.
//!
//! - [`routes`] holds the router and handlers (`GET /`, `GET /products`,
//!   and the probes `GET /healthz`, `GET /readyz`).
//! - [`customer`] parses `X-USER-ID`.
//! - [`store`] keeps products and customers in a database (SQLite, made
//!   with the seed's data, or PostgreSQL); [`data`] holds them in memory,
//!   kept fresh, for requests;
//!   [`commands`] migrates, imports and exports from the command line.
//! - [`page`] reads `?page_size` and `?page_token` and writes the `Link`.
//! - [`json`] writes products exactly as the seed's Go catalog did.
//! - [`discount`] is the gRPC client of the discount service.
//! - [`tls`] is the catalog's side of the TLS hop: trust, identity, checks.
//! - [`server`] serves HTTP connections, with limits and a bounded drain.
//! - [`metrics`] counts requests, listings and calls for Prometheus.
//! - [`config`] turns the command line into typed settings.
//! - [`app`] puts them together; `main.rs` and the tests both start the
//!   service through [`Application`].

pub mod app;
pub mod commands;
pub mod config;
pub mod customer;
pub mod data;
pub mod discount;
pub mod discount_status;
pub mod error;
pub mod json;
pub mod metrics;
pub mod page;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;
pub mod unsent;

pub use app::Application;
pub use config::Config;
pub use error::{CatalogError, StartupError};
pub use routes::{AppState, router};
