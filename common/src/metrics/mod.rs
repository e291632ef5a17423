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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pem::PemFile;

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

/// The standard `process_*` metrics, read from `/proc` at each scrape.
#[cfg(target_os = "linux")]
struct Process {
    cpu: prometheus::Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: prometheus::Gauge,
}

#[cfg(target_os = "linux")]
impl Process {
    fn register(metrics: &Metrics) -> Self {
        Self {
            cpu: metrics.add(
                prometheus::Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                ),
                "process_cpu_seconds_total",
            ),
            resident: metrics.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: metrics.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: metrics.gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: metrics.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
            ),
            threads: metrics.gauge("process_threads", "Number of OS threads in the process."),
            start_time: metrics.add(
                prometheus::Gauge::new(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds.",
                ),
                "process_start_time_seconds",
            ),
        }
    }

    /// Reads `/proc/self`; what cannot be read keeps its last value.
    fn read(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Ok(stat) = me.stat() {
            // Fractions of a second count: rate() over a minute of a
            // lightly loaded service is a few hundredths.
            #[allow(clippy::cast_precision_loss)] // clock ticks, far below 2^53
            let total = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
            let delta = total - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            self.resident
                .set(count(stat.rss.saturating_mul(procfs::page_size())));
            self.virtual_memory.set(count(stat.vsize));
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                #[allow(clippy::cast_precision_loss)]
                let started =
                    boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64;
                self.start_time.set(started);
            }
        }
        if let Ok(open) = me.fd_count() {
            self.open_fds.set(count(open as u64));
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            self.max_fds.set(count(max));
        }
    }
}

/// When each loaded certificate file expires, by file and role, for
/// `tls_certificate_expiry_seconds`. Noted when a file is loaded, at start
/// and on each reload that succeeds, so it is the certificate in use, not
/// whatever is on disk now.
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    inner: Arc<Mutex<CertificatesInner>>,
}

#[derive(Debug, Default)]
struct CertificatesInner {
    /// (file, role) to the soonest `notAfter` in it, in Unix seconds.
    expiry: BTreeMap<(String, &'static str), i64>,
    gauge: Option<GaugeVec>,
}

impl Certificates {
    fn lock(&self) -> std::sync::MutexGuard<'_, CertificatesInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_gauge(&self, gauge: GaugeVec) {
        self.lock().gauge = Some(gauge);
    }

    /// Notes the certificates of `file`, loaded for `role` (`server`,
    /// `client`, `client-ca`, `server-ca`). A file with none is ignored.
    pub fn record(&self, role: &'static str, file: &PemFile) {
        let Ok(certificates) = file.certificates() else {
            return;
        };
        let soonest = certificates
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, certificate)| certificate.validity().not_after.timestamp())
            .min();
        if let Some(not_after) = soonest {
            let path = crate::pem::display_path(&file.source().path);
            self.lock().expiry.insert((path, role), not_after);
        }
    }

    fn refresh(&self, now: SystemTime) {
        let inner = self.lock();
        let Some(gauge) = &inner.gauge else {
            return;
        };
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        for ((file, role), not_after) in &inner.expiry {
            #[allow(clippy::cast_precision_loss)] // seconds, far below 2^53
            gauge
                .with_label_values(&[file.as_str(), role])
                .set(not_after.saturating_sub(now) as f64);
        }
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
    use std::time::Duration;

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

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_time_keeps_its_fractions_of_a_second() {
        let metrics = Metrics::new("demo", "0");
        let ticks = |stat: &str| -> f64 {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            // utime and stime: fields 14 and 15 of /proc/PID/stat.
            fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
        };
        // Spin until the CPU time is mid-way between whole seconds, so that
        // whole seconds would be off by at least 0.3.
        let spun = std::time::Instant::now();
        while spun.elapsed() < Duration::from_secs(3) {
            let now = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()) / 100.0;
            if (0.3..0.7).contains(&now.fract()) {
                break;
            }
        }
        let text = metrics.render();
        let after = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()) / 100.0;
        let reported: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
            .unwrap()
            .parse()
            .unwrap();
        // USER_HZ is 100 on Linux; the read after the scrape may be a
        // tick or two later, never a whole second.
        assert!(
            reported <= after && after - reported < 0.05,
            "{reported} against {after}"
        );
    }

    #[test]
    fn certificate_expiry_counts_down_from_the_soonest_certificate() {
        let metrics = Metrics::new("demo", "0");
        let certificates = metrics.certificates().clone();
        certificates
            .lock()
            .expiry
            .insert(("keys/cert.pem".into(), "server"), 1_000);
        certificates.refresh(UNIX_EPOCH + Duration::from_secs(400));
        let text = String::from_utf8({
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut out)
                .unwrap();
            out
        })
        .unwrap();
        assert!(
            text.contains(
                "tls_certificate_expiry_seconds{file=\"keys/cert.pem\",role=\"server\"} 600\n"
            ),
            "{text}"
        );
        certificates.refresh(UNIX_EPOCH + Duration::from_secs(1_300));
        let gauge = certificates.lock().gauge.clone().unwrap();
        assert_eq!(
            gauge.with_label_values(&["keys/cert.pem", "server"]).get(),
            -300.0
        );
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
