//! Prometheus metrics: the registry each service fills, and what both
//! export (build information, the process, certificate expiry). The
//! plaintext listener that serves them is the admin listener.
//!
//! Each running service owns its [`Metrics`] rather than a process-wide
//! registry: the tests start a catalog and several discounts in one
//! process and read each one's counters exactly. The text is Prometheus'
//! text format 0.0.4, which `promtool check metrics` reads and every
//! Prometheus scrapes.
//!
//! Labels are bounded by construction: route templates, method and status
//! names, gRPC codes, replica addresses the catalog was told about,
//! certificate files. Never a raw path, a customer or a client address.
//!
//! This file holds the registry and what fills it at each scrape; the
//! `process_*` series are read in `process.rs`, certificates' expiry kept
//! in `certificates.rs`.

mod certificates;
#[cfg(target_os = "linux")]
mod process;

pub use certificates::Certificates;
#[cfg(target_os = "linux")]
use process::Process;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets of the duration histograms, in seconds: from 0.5 ms (a call
/// on a warm connection takes about that) to the 5 s request timeout.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A function run before each scrape, to set gauges read from state
/// (replicas in rotation, health).
type Hook = Box<dyn Fn() + Send + Sync>;

/// One service's metrics, and the text a scrape returns.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    certificates: Certificates,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for `service` with what every service exports:
    /// `<service>_build_info{version}`, the `process_*` metrics,
    /// `tls_certificate_expiry_seconds`, and
    /// `<service>_traces_dropped_total`.
    pub fn new(service: &str, version: &str) -> Self {
        let registry = Registry::new();
        let metrics = Self {
            registry,
            certificates: Certificates::default(),
            hooks: Arc::default(),
        };
        let version_label = Opts::new(
            format!("{service}_build_info"),
            format!("Always 1; the labels say which build of {service} runs."),
        )
        .const_label("version", version);
        let name = version_label.name.clone();
        metrics
            .add(IntGauge::with_opts(version_label), &name)
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let process = Process::register(&metrics);
            metrics.on_scrape(move || process.read());
        }
        let expiry = metrics.add(
            GaugeVec::new(
                Opts::new(
                    "tls_certificate_expiry_seconds",
                    "Seconds until the certificate expires (the soonest in its file); negative once it has.",
                ),
                &["file", "role"],
            ),
            "tls_certificate_expiry_seconds",
        );
        metrics.certificates.set_gauge(expiry);
        // The cap belongs to the process's tracer, set up before any
        // service: the count is read from it at each scrape.
        let dropped = metrics.counter(
            &format!("{service}_traces_dropped_total"),
            "Traces not recorded because --max-traces-per-second was reached (each would have been exported).",
        );
        metrics.on_scrape(move || {
            let more = crate::telemetry::cap::traces_dropped().saturating_sub(dropped.get());
            dropped.inc_by(more);
        });
        metrics
    }

    /// Registers `collector` (built from `built`) and returns it.
    ///
    /// Metric names and labels are constants of the code, and every test
    /// that starts a service builds them all: an invalid or repeated one
    /// is a bug found at once, not something a user or the network can
    /// cause, so it panics with the metric's name.
    #[allow(clippy::expect_used)]
    fn add<C: Collector + Clone + 'static>(&self, built: prometheus::Result<C>, name: &str) -> C {
        let collector = built.expect(name);
        self.registry
            .register(Box::new(collector.clone()))
            .expect(name);
        collector
    }

    /// A counter, registered.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help), name)
    }

    /// A counter with `labels`, registered.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels), name)
    }

    /// A gauge, registered.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help), name)
    }

    /// A gauge of a fractional value (seconds), registered.
    pub fn float_gauge(&self, name: &str, help: &str) -> prometheus::Gauge {
        self.add(prometheus::Gauge::new(name, help), name)
    }

    /// A gauge with `labels`, registered.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels), name)
    }

    /// A histogram of durations in seconds ([`DURATION_BUCKETS`]) with
    /// `labels`, registered.
    pub fn duration_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels), name)
    }

    /// Runs `hook` before every scrape: for gauges read from state.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Where the loaded certificates' expiry is noted.
    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// The metrics now, in the Prometheus text format.
    pub fn render(&self) -> String {
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            hook();
        }
        self.certificates.refresh(SystemTime::now());
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Counts one open thing (a connection, a call in flight) in a gauge
/// until dropped, whichever way its task ends.
#[derive(Debug)]
pub struct Open(IntGauge);

impl Open {
    /// Adds one to `gauge` until the result is dropped.
    pub fn count(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The name of a gRPC status code as the specification writes it
/// (`DEADLINE_EXCEEDED`), for the `code` label.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_is_one_with_the_version() {
        let metrics = Metrics::new("demo", "1.2.3");
        let text = metrics.render();
        assert!(
            text.contains("demo_build_info{version=\"1.2.3\"} 1\n"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(text.contains("\nprocess_open_fds "), "{text}");
    }

    #[test]
    fn every_code_has_its_specification_name() {
        for (number, name) in [
            (0, "OK"),
            (4, "DEADLINE_EXCEEDED"),
            (14, "UNAVAILABLE"),
            (16, "UNAUTHENTICATED"),
        ] {
            assert_eq!(grpc_code_name(tonic::Code::from_i32(number)), name);
        }
    }
}
