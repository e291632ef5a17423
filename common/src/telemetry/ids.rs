//! Trace ids for the logs when no spans are exported.
//!
//! With an OTLP endpoint, the OpenTelemetry layer gives every span a trace
//! and span id, which the JSON lines carry and the gRPC hop passes on.
//! Without one that layer is not installed (building OpenTelemetry spans
//! only to drop them cost the catalog 45% more instructions), and the two
//! services' logs could not be joined. This layer gives each span just
//! the ids: a new span id, and the trace id of its parent span, of the
//! `traceparent` its request carried ([`adopt`]), or a new one. The JSON
//! lines read them ([`of`]), and the catalog's call to discount sends them
//! on as its `traceparent`.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// One span's place in a trace, kept in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace the span belongs to.
    pub trace_id: TraceId,
    /// The span's own id.
    pub span_id: SpanId,
    /// Whether the caller that began the trace records it (its
    /// `traceparent`'s flag); a trace begun here is not recorded.
    pub sampled: bool,
}

impl TraceIds {
    /// These ids as the parent of a call: what `traceparent` carries.
    pub fn context(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span = SpanContext::new(
            self.trace_id,
            self.span_id,
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }
}

/// The layer that gives each new span its [`TraceIds`].
#[derive(Debug, Default)]
pub struct TraceIdsLayer {
    ids: RandomIdGenerator,
}

impl<S> Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let inherited = span
            .parent()
            .and_then(|parent| parent.extensions().get::<TraceIds>().copied());
        let ids = TraceIds {
            trace_id: inherited.map_or_else(|| self.ids.new_trace_id(), |p| p.trace_id),
            span_id: self.ids.new_span_id(),
            sampled: inherited.is_some_and(|p| p.sampled),
        };
        span.extensions_mut().insert(ids);
    }
}

/// Puts `span` in the trace of `parent` (a request's `traceparent`), if
/// that names one; before any child of `span` is made.
pub fn adopt(span: &tracing::Span, parent: &opentelemetry::Context) {
    let remote = parent.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    with_span(span, |span| {
        if let Some(ids) = span.extensions_mut().get_mut::<TraceIds>() {
            ids.trace_id = remote.trace_id();
            ids.sampled = remote.is_sampled();
        }
    });
}

/// The ids [`TraceIdsLayer`] gave `span`, if it runs.
pub fn of(span: &tracing::Span) -> Option<TraceIds> {
    with_span(span, |span| span.extensions().get::<TraceIds>().copied()).flatten()
}

/// `f` over the registry's record of `span`, when the subscriber is
/// built on tracing-subscriber's `Registry` (as `init` builds it).
fn with_span<T>(span: &tracing::Span, f: impl FnOnce(SpanRef<'_, Registry>) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch): (&Id, &Dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        registry.span(id).map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn children_share_the_trace_and_a_traceparent_is_adopted() {
        let subscriber = tracing_subscriber::registry().with(TraceIdsLayer::default());
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request");
            let fresh = of(&request).unwrap();
            assert_ne!(fresh.trace_id, TraceId::INVALID);
            assert!(!fresh.sampled, "a trace begun here is not recorded");

            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            adopt(&request, &super::super::extract(&headers));
            let adopted = of(&request).unwrap();
            assert_eq!(
                adopted.trace_id.to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(adopted.span_id, fresh.span_id, "the span keeps its own id");
            assert!(adopted.sampled);

            let call = request.in_scope(|| tracing::info_span!("call"));
            let child = of(&call).unwrap();
            assert_eq!(child.trace_id, adopted.trace_id);
            assert_ne!(child.span_id, adopted.span_id);
            assert!(child.sampled);
        });
    }
}
