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

/// The encoded `FileDescriptorSet` of `ecommerce.proto`, for gRPC server
/// reflection: it lets tools such as `grpcurl` list and call the service
/// without a copy of the proto.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ecommerce_descriptor.bin"));
