//! What the two services share: reading PEM files with errors a person can
//! act on, the certificate doctor, the crypto provider, binding and
//! accepting, workload identities in certificates, tracking connections and whether they are idle, reloading on SIGHUP, telemetry set-up, Prometheus metrics and the admin listener that serves them and the probes, the `--healthcheck` probe,
//! and the shutdown signal with a bounded drain.
//!
//! Kept deliberately small: anything specific to one service, and each
//! side's TLS configuration, lives in that service's crate.

pub mod admin;
pub mod crypto;
pub mod doctor;
pub mod flags;
pub mod identity;
pub mod metrics;
pub mod pem;
pub mod probe;
pub mod quiet;
pub mod reload;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::shutdown_signal;
