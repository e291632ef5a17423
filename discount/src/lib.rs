//! The discount service: `ecommerce.Discount/ApplyDiscount` over TLS gRPC.
//!
//! - [`rule`] is the business rule, pure and exact (`rust_decimal`).
//! - [`service`] adapts it to the generated tonic trait and validates input.
//! - [`server`] accepts TLS connections and serves the service on them,
//!   with `grpc.health.v1.Health` and server reflection beside it.
//! - [`config`] is the command line, and turns it into a TLS configuration.
//!
//! `main.rs` only wires these together, so tests run the real server
//! in-process on `127.0.0.1:0`.

pub mod config;
pub mod error;
pub mod rule;
pub mod server;
pub mod service;

pub use config::Config;
pub use error::{DiscountError, StartupError};
pub use server::{ServerOptions, Transport, run, serve};
pub use service::DiscountService;
