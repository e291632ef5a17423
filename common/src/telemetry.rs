//! Logs and traces, set up the same way in both binaries.
//!
//! Every `tracing` span is also an OpenTelemetry span: the catalog's span
//! for an HTTP request, its span for each call to discount, and discount's
//! span for each call it answers. The trace context crosses the hop in the
//! W3C `traceparent` / `tracestate` headers ([`extract`], [`inject`]), so
//! one request is one trace in both services, and every log line written
//! inside a request carries its `trace_id` and `span_id` (in the JSON
//! format), which joins the two services' logs.
//!
//! All of this happens when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and spans are exported
//! over OTLP (gRPC); without it there are no OpenTelemetry spans (see
//! [`init`] for why). `--max-traces-per-second` caps the traces recorded,
//! whatever callers ask ([`cap`]).

pub mod cap;
pub mod ids;
mod json;
mod propagation;
mod untrusted;

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

pub use json::JsonLines;
pub use propagation::{MAX_TRACESTATE, continue_trace, extract, inject, propagate};
pub use untrusted::Untrusted;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise (a container, a file, a
    /// pipe to a log shipper).
    Auto,
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message`, `fields`, `span`, and `trace_id` / `span_id` inside a
    /// request.
    Json,
}

impl LogFormat {
    /// The format `--log-format` names.
    ///
    /// # Errors
    /// Not one of `auto`, `text`, `json`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!(
                "{text:?} is not a log format; write text, json, or auto (text on a terminal, json otherwise)"
            )),
        }
    }

    /// `Auto` decided for this process's stderr.
    fn resolved(self) -> Self {
        match self {
            Self::Auto if std::io::stderr().is_terminal() => Self::Text,
            Self::Auto => Self::Json,
            other => other,
        }
    }
}

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans not yet
/// exported before the process exits.
#[derive(Debug)]
pub struct Telemetry {
    /// Present when spans are exported.
    provider: Option<SdkTracerProvider>,
}

/// The longest [`Telemetry::shutdown`] waits for the last spans to leave:
/// an unreachable collector must not hold up a stopping service.
const EXPORT_AT_EXIT: Duration = Duration::from_secs(3);

impl Telemetry {
    /// Exports the spans still buffered (at most [`EXPORT_AT_EXIT`]), then
    /// stops exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(EXPORT_AT_EXIT, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "could not export the last spans");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(timeout = ?EXPORT_AT_EXIT, "gave up exporting the last spans");
            }
        }
    }
}

/// Sends `tracing` events to stderr in `format`, filtered by `RUST_LOG`,
/// and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, makes every span an
/// OpenTelemetry span of `service` (`OTEL_SERVICE_NAME` overrides it),
/// exported over OTLP/gRPC.
///
/// Without an endpoint there are no OpenTelemetry spans at all: building
/// them costs the catalog about 45% more instructions per listing
/// (measured with callgrind), for spans nobody collects. Each span gets
/// trace and span ids all the same ([`ids`]), for the logs and the gRPC
/// hop, so the two services' logs join without a collector.
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
/// At most `traces_per_second` traces entering the process are recorded
/// each second ([`cap`]).
///
/// Call it once, first thing in `main`, inside the Tokio runtime (the
/// exporter runs on it); tests that do not call it stay quiet.
pub fn init(
    service: &'static str,
    default_filter: &str,
    format: LogFormat,
    traces_per_second: NonZeroU32,
) -> Telemetry {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("ignoring RUST_LOG={spec:?}: {e}; using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    // The traces' own variable wins, as in the exporter.
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    });
    let (provider, export_error) = if endpoint.is_some() {
        match exporting_provider(service, None, traces_per_second) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    init_with(
        filter,
        format.resolved(),
        provider.as_ref(),
        service,
        std::io::stderr,
    );
    if let Some(error) = export_error {
        tracing::error!(%error, "cannot export traces; check OTEL_EXPORTER_OTLP_ENDPOINT (spans are not exported, everything else works)");
    } else if let (Some(endpoint), Some(_)) = (&endpoint, &provider) {
        tracing::info!(%endpoint, max_traces_per_second = traces_per_second.get(), "exporting traces over OTLP/gRPC; a failing export is logged as a warning");
    }
    Telemetry { provider }
}

/// The subscriber of [`init`] with its parts given: for tests that set up
/// telemetry in-process with a writer of their own. With `provider`, spans
/// are OpenTelemetry spans and go to it.
pub fn init_with<W>(
    filter: EnvFilter,
    format: LogFormat,
    provider: Option<&SdkTracerProvider>,
    service: &'static str,
    writer: W,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Traces do not depend on RUST_LOG: the services' own spans are at
    // INFO, the libraries' below it.
    let spans = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(LevelFilter::INFO)
    });
    // Without spans to export, each span still gets trace and span ids,
    // for the logs and the gRPC hop ([`ids`]). Under the log's own filter:
    // a layer of its own at INFO would enable the libraries' INFO spans
    // and events too, which cost discount 8.5% more instructions a call.
    let ids = provider.is_none().then(ids::TraceIdsLayer::default);
    let registry = tracing_subscriber::registry().with(spans);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    // Each span's fields kept as a JSON object.
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_ansi(false)
                    .with_writer(writer)
                    .and_then(ids)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    // Colours only for a person at a terminal, never in files or pipes.
                    .with_ansi(std::io::stderr().is_terminal())
                    .and_then(ids)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Err(error) = installed {
        eprintln!("logging was already set up: {error}");
    }
}

/// A tracer provider exporting over OTLP/gRPC to `endpoint`, or, without
/// one, to where the standard `OTEL_EXPORTER_OTLP_*` variables say. The
/// resource's `service.name` is `OTEL_SERVICE_NAME` if set, else `service`.
/// The sampler is the one `OTEL_TRACES_SAMPLER` names (parent-based, all
/// new traces, by default), capped at `traces_per_second` traces entering
/// the process ([`cap`]).
///
/// # Errors
/// The exporter could not be built (an endpoint that is not a URI).
pub fn exporting_provider(
    service: &'static str,
    endpoint: Option<&str>,
    traces_per_second: NonZeroU32,
) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let resource = Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| service.to_owned()),
        )
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|error| error.to_string())?;
    // The batch processor on the service's own Tokio runtime: the tonic
    // exporter needs one, and the SDK's default processor exports from a
    // thread of its own that has none.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    // The SDK's default configuration is read from the environment; its
    // sampler is the one `OTEL_TRACES_SAMPLER` asks for.
    let configured = opentelemetry_sdk::trace::Config::default().sampler;
    Ok(SdkTracerProvider::builder()
        .with_sampler(cap::Capped::new(configured, traces_per_second.get()))
        .with_resource(resource)
        .with_span_processor(processor)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn a_traceparent_crosses_from_http_headers_to_grpc_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = extract(&headers);
        let span = cx.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&cx, &mut metadata);
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }

    #[test]
    fn a_tracestate_over_the_limit_is_dropped_and_the_trace_kept() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        // 31 entries, each within the W3C limits (256-byte keys and
        // values): valid, and 16 KB.
        let entry = |n: usize| format!("k{n}{}={}", "k".repeat(200), "v".repeat(250));
        let long = (0..31).map(entry).collect::<Vec<_>>().join(",");
        for (state, passed_on) in [("vendor=abc", "vendor=abc"), (long.as_str(), "")] {
            headers.insert("tracestate", http::HeaderValue::from_str(state).unwrap());
            let mut metadata = tonic::metadata::MetadataMap::new();
            inject(&extract(&headers), &mut metadata);
            assert!(metadata.get("traceparent").is_some());
            let sent = metadata.get("tracestate").map(|v| v.to_str().unwrap());
            assert_eq!(sent.unwrap_or(""), passed_on, "{} bytes", state.len());
        }
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-nonsense-01"),
        );
        assert!(!extract(&headers).span().span_context().is_valid());
    }

    #[test]
    fn log_formats_parse_and_refuse_with_the_choices() {
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        let refused = LogFormat::parse("xml").unwrap_err();
        assert!(refused.contains("text, json, or auto"), "{refused}");
    }
}
