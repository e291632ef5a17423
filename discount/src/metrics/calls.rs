//! Every call counted and timed, by method and the code sent; for
//! `ecommerce.Discount`, also its span ([`call_span`], for tower-http's
//! `TraceLayer`) and its `call answered` line.
//!
//! [`ObserveCalls`] is the outermost layer of the router but for the
//! `TraceLayer` (its line is in the span), so a call the allow-list refuses
//! or the budget sheds is counted like any other, with the code the client
//! received. Its `call answered` line, though, is
//! rate-limited like the line of the layer that refused it ([`Quieted`]):
//! one connection refused 14,546 times in 5 s wrote as many lines, and
//! rotated the one warning that mattered out of the log in about 25 s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use common::metrics::{Open, grpc_code_name};
use common::quiet::Quiet;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::body::{End, Watched, Watcher};

/// Set on an answer by a layer that refused the call and logs that at most
/// once per cause an interval (the allow-list, per identity; the call
/// budget, per way of shedding): the call's `call answered` line then
/// follows the same limit, with the count of lines left out, so a client
/// that is refused thousands of times a second writes a couple of lines
/// every few seconds, not one per call. Answered calls keep a line each.
#[derive(Debug, Clone)]
pub(crate) struct Quieted(pub(crate) String);

/// The `method` label values: the services this server has, by their
/// full gRPC names, and `unknown` for any other path, so a client sending
/// random paths adds no series.
const METHODS: [&str; 7] = [
    "ecommerce.Discount/ApplyDiscount",
    "ecommerce.Discount/ApplyDiscounts",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "unknown",
];

/// The first [`METHODS`], those of `ecommerce.Discount`: traced and logged.
const DISCOUNT_METHODS: usize = 2;

/// The index in [`METHODS`] of a call to `path`.
fn method_index(path: &str) -> usize {
    let path = path.strip_prefix('/').unwrap_or(path);
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|known| *known == path)
        .unwrap_or(METHODS.len() - 1)
}

/// The `method` label of a call to `path`.
#[cfg(test)]
fn method_label(path: &str) -> &'static str {
    METHODS[method_index(path)]
}

/// The span of a call, for tower-http's `TraceLayer` (which the router sets
/// to write no line of its own: the `call answered` line is this file's).
/// For `ecommerce.Discount`, the child of the caller's span when the call
/// carries a `traceparent` (the catalog sends one); none for the other
/// services: health checks come every second from every catalog, and would
/// be a trace each.
pub(crate) fn call_span(request: &http::Request<tonic::body::Body>) -> tracing::Span {
    let index = method_index(request.uri().path());
    if index >= DISCOUNT_METHODS {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "call",
        otel.name = METHODS[index],
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = METHODS[index],
        rpc.grpc.status_code = tracing::field::Empty,
    );
    common::telemetry::continue_trace(&span, request.headers());
    span
}

/// The series every call touches, looked up once rather than by label
/// values on each call (which hashes them and takes a lock): per method,
/// calls answered OK and the duration histogram. Other codes are looked up
/// when they happen.
#[derive(Debug)]
struct CallSeries {
    ok: [IntCounter; METHODS.len()],
    duration: [Histogram; METHODS.len()],
    calls: IntCounterVec,
    in_flight: IntGauge,
    /// When the `call answered` line of each [`Quieted`] cause was last
    /// written.
    quiet: Quiet,
}

/// A [`tower::Layer`] counting and timing each call (see the module).
#[derive(Debug, Clone)]
pub(crate) struct ObserveCalls {
    series: Arc<CallSeries>,
}

impl ObserveCalls {
    /// Counts calls in `calls` (by method and code) and `in_flight`, and
    /// times them in `duration` (by method).
    pub(super) fn new(
        calls: &IntCounterVec,
        duration: &HistogramVec,
        in_flight: &IntGauge,
    ) -> Self {
        Self {
            series: Arc::new(CallSeries {
                ok: METHODS.map(|method| calls.with_label_values(&[method, "OK"])),
                duration: METHODS.map(|method| duration.with_label_values(&[method])),
                calls: calls.clone(),
                in_flight: in_flight.clone(),
                quiet: Quiet::default(),
            }),
        }
    }
}

impl<S> Layer<S> for ObserveCalls {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            series: Arc::clone(&self.series),
        }
    }
}

/// A service whose calls [`ObserveCalls`] counts.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    series: Arc<CallSeries>,
}

/// The code in a `grpc-status` header, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    // A constant name: `get("grpc-status")` would parse it on every call.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(&GRPC_STATUS)
        .map(|code| tonic::Code::from_bytes(code.as_bytes()))
}

impl<S> Service<http::Request<tonic::body::Body>> for Observed<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut call = Call {
            method: method_index(request.uri().path()),
            started: Instant::now(),
            _in_flight: Open::count(&self.series.in_flight),
            series: Arc::clone(&self.series),
            // [`call_span`]'s, entered by the `TraceLayer` around this call.
            span: tracing::Span::current(),
            quieted: None,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            call.quieted = response.extensions_mut().remove::<Quieted>();
            // A trailers-only answer (every error tonic makes itself) has
            // its status in the headers; otherwise it comes in the
            // trailers, at the end of the body.
            if let Some(code) = grpc_status(response.headers()) {
                call.ended(code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(Watched::new(body, call))))
        })
    }
}

/// One call being answered.
#[derive(Debug)]
struct Call {
    /// Its index in [`METHODS`].
    method: usize,
    started: Instant,
    _in_flight: Open,
    series: Arc<CallSeries>,
    /// Its span (for `ecommerce.Discount`), entered for its line even
    /// when the answer is dropped unsent, outside the `TraceLayer`'s body.
    span: tracing::Span,
    /// Why a layer below refused it, if one did.
    quieted: Option<Quieted>,
}

impl Call {
    fn ended(self, code: tonic::Code) {
        let series = &self.series;
        if code == tonic::Code::Ok {
            series.ok[self.method].inc();
        } else {
            series
                .calls
                .with_label_values(&[METHODS[self.method], grpc_code_name(code)])
                .inc();
        }
        let took = self.started.elapsed();
        series.duration[self.method].observe(took.as_secs_f64());
        // discount's access log: one line per ecommerce.Discount call, in
        // its span, so that it carries the trace id the catalog's line for
        // the same listing carries; for calls refused or shed, as often as
        // their refusal is logged.
        if self.method >= DISCOUNT_METHODS {
            return;
        }
        self.span.record("rpc.grpc.status_code", code as i32);
        let (method, code) = (METHODS[self.method], grpc_code_name(code));
        let _entered = self.span.enter();
        match &self.quieted {
            None => tracing::info!(method, code, latency = ?took, "call answered"),
            Some(Quieted(cause)) => {
                if let Some(unlogged) = series.quiet.should_log(cause, Instant::now()) {
                    tracing::info!(method, code, latency = ?took, unlogged, "call answered");
                }
            }
        }
    }
}

impl Watcher for Call {
    /// An answer's status comes in its trailers, after its last data.
    const END_STREAM_ENDS: bool = false;

    fn on_end(self, end: End<'_>) {
        let code = match end {
            End::Trailers(trailers) => grpc_status(trailers).unwrap_or(tonic::Code::Unknown),
            End::Failed => tonic::Code::Internal,
            // An answer that ended without trailers carried no status.
            End::Finished => tonic::Code::Unknown,
            // The answer was dropped before its status was sent: the client
            // went away, or the connection was closed.
            End::Dropped => tonic::Code::Cancelled,
        };
        self.ended(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_paths_are_named() {
        assert_eq!(
            method_label("/ecommerce.Discount/ApplyDiscount"),
            "ecommerce.Discount/ApplyDiscount"
        );
        for path in [
            "/",
            "/ecommerce.Discount/Nope",
            "/x/../ecommerce.Discount/ApplyDiscount",
            "//ecommerce.Discount/ApplyDiscount",
        ] {
            assert_eq!(method_label(path), "unknown", "{path}");
        }
    }
}
