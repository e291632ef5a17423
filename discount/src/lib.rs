//! The discount service: `ecommerce.Discount` over TLS gRPC.
//!
//! - [`rule`] is the business rule, pure and exact (`rust_decimal`).
//! - [`service`] adapts it to the generated tonic trait and validates input.
//! - [`tls`] is discount's side of the TLS hop: the server configuration,
//!   client verification, reloading, the handshake.
//! - [`server`] serves the service on accepted connections, with
//!   `grpc.health.v1.Health` and server reflection beside it.
//! - [`authz`] is who may call what: each connection's workload identity
//!   and the allow-list (`--allow-client`) that `ecommerce.Discount` calls
//!   are checked against.
//! - [`shed`] is the budget of calls in flight for the whole server, and
//!   the RESOURCE_EXHAUSTED answer past it.
//! - [`metrics`] counts calls, refusals and connections for Prometheus.
//! - `body` is the one wrapper of a tonic body that the layers share: it
//!   tells them how the body ended.
//! - [`config`] turns the command line into typed settings.
//! - [`app`] puts them together; `main.rs` and the tests both start the
//!   service through [`Application`].

pub mod app;
pub mod authz;
mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod rule;
pub mod server;
pub mod service;
pub mod shed;
pub mod tls;

pub use app::Application;
pub use config::Config;
pub use error::{DiscountError, StartupError};
pub use service::DiscountService;
