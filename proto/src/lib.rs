//! Rust types and gRPC client/server stubs for the `ecommerce` package.
//!
//! The code is generated at build time from `ecommerce.proto` (see
//! `build.rs`); both services depend on this crate so that there is exactly
//! one copy of the wire contract.

/// Everything generated from `package ecommerce;`.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("ecommerce");
}
