//! The W3C trace context (`traceparent`, `tracestate`) across the hops:
//! read from a request's HTTP headers, written into a gRPC call's
//! metadata, with or without spans exported ([`super::ids`]).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::ids;

/// Makes `span` (a request's) a child of the trace context its request
/// carried in `headers`; with none, `span` starts a trace.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    let parent = extract(headers);
    ids::adopt(span, &parent);
    // Fails only for a span already started, which a new one is not.
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context into the metadata of the gRPC call it
/// stands for.
pub fn propagate(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    if context.span().span_context().is_valid() {
        inject(&context, metadata);
    } else if let Some(ids) = ids::of(span) {
        // No spans exported: the ids alone, so that the logs join.
        inject(&ids.context(), metadata);
    }
}

/// The trace context a request arrived with (`traceparent`,
/// `tracestate`), or an empty one: the parent of the span that serves it.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Writes the trace context `cx` into `metadata` (`traceparent`,
/// `tracestate`), so the callee's span becomes a child of the caller's.
pub fn inject(cx: &opentelemetry::Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut Metadata(metadata));
}

/// The longest `tracestate` passed on; a longer one is dropped (the
/// `traceparent` still is). The W3C recommendation asks vendors to keep
/// theirs short and allows dropping entries; a client's 16 KB one, copied
/// into every call's metadata, made discount answer 431 (over its header
/// limit) and the catalog eject healthy replicas, and into every exported
/// span, made batches too large for a collector.
pub const MAX_TRACESTATE: usize = 512;

/// HTTP headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        if key.eq_ignore_ascii_case("tracestate") && value.len() > MAX_TRACESTATE {
            return None;
        }
        value.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// gRPC metadata as the propagator writes it.
struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value);
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}
