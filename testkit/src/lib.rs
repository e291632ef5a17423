//! Test support shared by the services' integration tests.
//!
//! - [`logs`]: log output captured for one test.
//! - [`pki`]: a CA and identities (good, expired, for the wrong purpose)
//!   made at run time.
//! - [`discount`]: the real discount service in-process, started from a
//!   real command line, and [`ScriptedDiscount`], one that fails or stalls.
//! - [`grpc`]: requests, channels and answers, as a client of discount.
//! - [`proxy`]: a connection-counting forwarder and a peer that never
//!   answers.
//! - [`readme`]: the flag tables of `docs/configuration.md` checked against
//!   the code.
//! - [`refusing`]: a discount replica that refuses every call's stream.
//! - [`process`]: a service binary as a child process (peak memory,
//!   signals).
//! - [`otlp`]: an OTLP trace receiver, keeping the spans it is sent.
//! - [`wire`]: raw TLS and hand-written HTTP/2 frames, for what no
//!   well-behaved client sends.
//! - [`postgres`]: a throw-away PostgreSQL cluster (`initdb`, `pg_ctl`)
//!   on a loopback port, for the catalog's store.
//! - [`stall`]: a file whose reading blocks until the test lets it go.
//! - [`task`]: a server in a task, and the one stop handle that asserts a
//!   clean exit.
//! - [`scrape`]: one metric's value from a service's `/metrics`.
//! - [`volume`]: TLS files published as the kubelet publishes a Secret.

pub mod discount;
pub mod grpc;
pub mod logs;
#[cfg(test)]
mod modules;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod readme;
pub mod refusing;
pub mod scrape;
pub mod stall;
pub mod task;
pub mod volume;
pub mod wire;

use std::time::Duration;

pub use discount::{DiscountServer, ScriptedDiscount, SeedStylePeer};
pub use grpc::{
    customer, discount_request, discount_value, error_chain, grpc_channel, grpc_channel_with,
    product,
};
pub use logs::Logs;
pub use otlp::{ReceivedSpan, TraceReceiver};
pub use pki::{CATALOG_IDENTITY, ClientCert, DISCOUNT_IDENTITY, Pki, SERVER_NAMES};
pub use postgres::Postgres;
pub use process::Process;
pub use proxy::{CountingProxy, silent_peer};
pub use refusing::RefusingPeer;
pub use scrape::metric;
pub use stall::StalledFile;
pub use task::ServerTask;
pub use volume::SecretVolume;

/// Result type for test set-up: any failure there is a failed test.
pub type SetupResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Longer than anything in these tests should take; reaching it is a hang,
/// which is itself the failure. Generous, because a debug build on a loaded
/// CI machine is slow, and a passing test never waits for it.
pub const HANG: Duration = Duration::from_secs(10);
