//! Logging set-up shared by both binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` events to stderr, filtered by `RUST_LOG`.
///
/// Without `RUST_LOG` the filter is `default_filter` (each binary passes
/// `info` for itself and `warn` for its dependencies), so a fresh start shows
/// the start-up lines and problems, and `RUST_LOG=debug` shows every call.
/// An invalid `RUST_LOG` is reported and the default is used, rather than
/// silently logging nothing.
///
/// Both binaries keep the `h2` crate at `error`: its WARN lines (a peer
/// reached a reset limit) come once per offending connection, unthrottled,
/// 50 to 70 a second from one attacker; `RUST_LOG=...,h2=warn` shows them.
///
/// Call it once, first thing in `main`; tests do not call it and stay quiet.
pub fn init(default_filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("ignoring RUST_LOG={spec:?}: {e}; using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
