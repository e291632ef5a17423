//! What discount counts, for Prometheus: every gRPC call by method and
//! code, how long it took, the calls in flight and shed, refused TLS
//! handshakes and callers, connections, health. Served by
//! [`common::metrics::serve`] on `--metrics-addr`; the names are listed in
//! `docs/observability.md`.
//!
//! [`ObserveCalls`] is the outermost layer of the router, so a call the
//! allow-list refuses or the budget sheds is counted like any other, with
//! the code the client received.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use common::metrics::{Metrics, Open, grpc_code_name};
use http_body::{Body, Frame, SizeHint};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};
use tonic::codegen::http;
use tower::{Layer, Service};

/// The identities `discount_authz_refusals_total` names one by one; any
/// further one is counted as `other`. Identities come from certificates
/// the client CA signed, so they are few, but the label set must stay
/// bounded whatever is presented.
const NAMED_IDENTITIES: usize = 32;

/// Every metric of one discount.
#[derive(Debug, Clone)]
pub struct DiscountMetrics {
    /// The registry, with what both services export.
    pub common: Metrics,
    calls: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    /// Calls refused with RESOURCE_EXHAUSTED by the call budget.
    pub(crate) shed: IntCounter,
    handshakes_refused: IntCounterVec,
    /// Connections open now, TLS handshakes included.
    pub(crate) connections: IntGauge,
    /// 1 while health says SERVING, 0 from the start of shutdown.
    pub(crate) serving: IntGauge,
    refusals: Refusals,
    reloads: IntCounterVec,
}

/// Calls refused by the allow-list, by the identity presented.
#[derive(Debug, Clone)]
pub(crate) struct Refusals {
    counter: IntCounterVec,
    named: Arc<Mutex<HashSet<String>>>,
}

/// Why a TLS handshake was refused, for `discount_tls_handshakes_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeRefusal {
    /// The client presented no certificate where one is required.
    NoCertificate,
    /// Its certificate is not signed by `--client-ca`.
    UnknownIssuer,
    /// Its certificate has expired or is not valid yet.
    Expired,
    /// Its certificate is not for client authentication.
    WrongPurpose,
    /// It did not finish within `--tls-handshake-timeout`.
    Timeout,
    /// It refused discount's certificate (sent an alert).
    ClientRefused,
    /// Anything else: not TLS, a protocol error, another certificate error.
    Other,
}

impl HandshakeRefusal {
    const ALL: [Self; 7] = [
        Self::NoCertificate,
        Self::UnknownIssuer,
        Self::Expired,
        Self::WrongPurpose,
        Self::Timeout,
        Self::ClientRefused,
        Self::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::WrongPurpose => "wrong_purpose",
            Self::Timeout => "timeout",
            Self::ClientRefused => "client_refused",
            Self::Other => "other",
        }
    }

    /// The reason rustls gave, sorted.
    pub(crate) fn of(error: &rustls::Error) -> Self {
        use rustls::CertificateError as Cert;
        match error {
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::AlertReceived(_) => Self::ClientRefused,
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                Cert::UnknownIssuer | Cert::BadSignature => Self::UnknownIssuer,
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. } => Self::Expired,
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => Self::WrongPurpose,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

impl DiscountMetrics {
    /// Discount's metrics, registered, all at zero.
    pub fn new() -> Self {
        let common = Metrics::new("discount", env!("CARGO_PKG_VERSION"));
        let handshakes_refused = common.counter_vec(
            "discount_tls_handshakes_refused_total",
            "TLS handshakes that failed, by reason: no_certificate, unknown_issuer, expired, wrong_purpose, timeout, client_refused (it refused discount's certificate), other.",
            &["reason"],
        );
        for reason in HandshakeRefusal::ALL {
            handshakes_refused.with_label_values(&[reason.label()]);
        }
        let reloads = common.counter_vec(
            "discount_reloads_total",
            "Reloads of the TLS material (SIGHUP), by outcome: success, or failure (the old material stays).",
            &["outcome"],
        );
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        Self {
            calls: common.counter_vec(
                "discount_grpc_calls_total",
                "gRPC calls answered, by method (unknown for a path no service has) and the code sent.",
                &["method", "code"],
            ),
            duration: common.duration_vec(
                "discount_grpc_call_duration_seconds",
                "Time from a call's headers to the end of its answer, by method.",
                &["method"],
            ),
            in_flight: common.gauge(
                "discount_grpc_calls_in_flight",
                "gRPC calls being answered now.",
            ),
            shed: common.counter(
                "discount_calls_shed_total",
                "Calls refused with RESOURCE_EXHAUSTED at the limit of calls in flight (--max-concurrent-calls).",
            ),
            handshakes_refused,
            connections: common.gauge(
                "discount_connections_open",
                "Connections open now, TLS handshakes in progress included.",
            ),
            serving: common.gauge(
                "discount_serving",
                "1 while the health service says SERVING; 0 once shutting down.",
            ),
            refusals: Refusals {
                counter: common.counter_vec(
                    "discount_authz_refusals_total",
                    "Calls refused PERMISSION_DENIED by the allow-list (--allow-client), by the identity presented (other past the first 32).",
                    &["identity"],
                ),
                named: Arc::default(),
            },
            reloads,
            common,
        }
    }

    /// One handshake refused for `reason`.
    pub(crate) fn handshake_refused(&self, reason: HandshakeRefusal) {
        self.handshakes_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Where refusals by the allow-list are counted.
    pub(crate) fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// One reload of the TLS material, and whether it worked.
    pub fn reloaded(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[outcome]).inc();
    }

    /// The layer that counts every call.
    pub(crate) fn observe_calls(&self) -> ObserveCalls {
        ObserveCalls {
            metrics: self.clone(),
        }
    }
}

impl Default for DiscountMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Refusals {
    /// One call refused for `identity` (as the log shows it).
    pub(crate) fn refused(&self, identity: &str) {
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        let label = if named.contains(identity) {
            identity
        } else if named.len() < NAMED_IDENTITIES {
            named.insert(identity.to_owned());
            identity
        } else {
            "other"
        };
        self.counter.with_label_values(&[label]).inc();
    }
}

/// The `method` label of a call to `path`: the services this server has,
/// by their full gRPC names; anything else is `unknown`, so a client
/// sending random paths adds no series.
fn method_label(path: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "ecommerce.Discount/ApplyDiscount",
        "ecommerce.Discount/ApplyDiscounts",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let path = path.strip_prefix('/').unwrap_or(path);
    KNOWN
        .into_iter()
        .find(|known| *known == path)
        .unwrap_or("unknown")
}

/// A [`tower::Layer`] counting and timing each call (see the module).
#[derive(Debug, Clone)]
pub(crate) struct ObserveCalls {
    metrics: DiscountMetrics,
}

impl<S> Layer<S> for ObserveCalls {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls [`ObserveCalls`] counts.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    metrics: DiscountMetrics,
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
        let call = Call {
            method: method_label(request.uri().path()),
            started: Instant::now(),
            _in_flight: Open::count(&self.metrics.in_flight),
            metrics: self.metrics.clone(),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // A trailers-only answer (every error tonic makes itself) has
            // its status in the headers; otherwise it comes in the
            // trailers, at the end of the body.
            if let Some(code) = tonic::Status::from_header_map(response.headers()) {
                call.ended(code.code());
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Watched {
                    body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// One call being answered.
#[derive(Debug)]
struct Call {
    method: &'static str,
    started: Instant,
    _in_flight: Open,
    metrics: DiscountMetrics,
}

impl Call {
    fn ended(self, code: tonic::Code) {
        self.metrics
            .calls
            .with_label_values(&[self.method, grpc_code_name(code)])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// An answer's body, watched for the status in its trailers.
struct Watched {
    body: tonic::body::Body,
    call: Option<Call>,
}

impl Body for Watched {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(tonic::Code::Unknown, |status| status.code());
                    if let Some(call) = self.call.take() {
                        call.ended(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.ended(tonic::Code::Internal);
                }
            }
            // An answer that ended without trailers carried no status.
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.ended(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Watched {
    /// The answer was dropped before its status was sent: the client went
    /// away, or the connection was closed.
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.ended(tonic::Code::Cancelled);
        }
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

    #[test]
    fn refusals_name_at_most_32_identities() {
        let metrics = DiscountMetrics::new();
        let refusals = metrics.refusals();
        for n in 0..40 {
            refusals.refused(&format!("spiffe://x/{n}"));
        }
        refusals.refused("spiffe://x/3");
        let counter = &metrics.refusals.counter;
        assert_eq!(counter.with_label_values(&["other"]).get(), 8);
        assert_eq!(counter.with_label_values(&["spiffe://x/3"]).get(), 2);
    }
}
