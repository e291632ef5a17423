//! Generates the Rust code for `ecommerce.proto`.
//!
//! The proto is parsed by `protox`, a protobuf compiler written in Rust, so
//! building needs no `protoc` binary on the machine. tonic-prost-build then
//! turns the descriptors into prost messages and tonic client/server stubs;
//! it does not care where the descriptors came from. The encoded
//! descriptors are also written out for gRPC server reflection.

use std::error::Error;
use std::path::PathBuf;

use protox::prost::Message;

const PROTO: &str = "ecommerce.proto";

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build only prints rerun-if-changed when it runs protoc
    // itself; without this line edits to the proto would be ignored.
    println!("cargo:rerun-if-changed={PROTO}");

    let descriptors = protox::compile([PROTO], ["."])?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);
    std::fs::write(
        out_dir.join("ecommerce_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services implement only what they need; the rest answer
        // UNIMPLEMENTED, as peers built from an older proto do.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
