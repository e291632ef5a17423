//! What the two services share: reading TLS material with errors a person can
//! act on, binding listeners, tracking connections, telemetry set-up, and the
//! shutdown signal with a bounded drain.
//!
//! Kept deliberately small: anything specific to one service lives in that
//! service's crate.

pub mod conn;
pub mod doctor;
pub mod net;
pub mod reload;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use shutdown::shutdown_signal;
