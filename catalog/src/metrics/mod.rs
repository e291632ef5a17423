//! What the catalog counts, for Prometheus: its HTTP requests, its
//! listings, its calls to discount, and the state of its replicas and
//! connections. Served by [`common::admin::serve`] on `--metrics-addr`.
//!
//! The metric names and labels are documented in `docs/observability.md`;
//! the handles live here, and each is updated at the one place that knows
//! the fact: [`TrackRequests`] for requests, the handler for listings,
//! the discount client for calls, retries and ejections.
//!
//! The series touched on every listing are looked up once, not per
//! request: the listing statuses here, each replica's successful calls in
//! [`ReplicaSeries`]. A lookup by label values hashes them and takes a
//! lock; the benchmark saw those lookups, and a per-request middleware
//! boxing a clone of the router, cost 7 to 9% of the listings a second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use common::metrics::{Metrics, grpc_code_name};
use http::Method;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tower::{Layer, Service};

use crate::discount_status::DiscountStatus;

/// Every metric of one catalog.
#[derive(Debug, Clone)]
pub struct CatalogMetrics {
    /// The registry, with what both services export.
    pub common: Metrics,
    /// HTTP requests, by route.
    pub http: HttpMetrics,
    /// `GET /products` answers by `X-Discount-Status`, one per status:
    /// applied, partial, unavailable, not asked.
    listings: [IntCounter; 4],
    /// The client of discount.
    pub discount: ClientMetrics,
    /// HTTP connections open now.
    pub connections: IntGauge,
    /// SIGHUP reloads of the TLS material, by outcome.
    reloads: IntCounterVec,
}

/// HTTP requests by route template, method and status, and how long they
/// took.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

/// One replica's series for the calls that succeed, looked up once when
/// the replica joins; other codes are rarer and looked up when they happen.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSeries {
    /// The `replica` label.
    addr: String,
    /// By [`CALLED_METHODS`] index: calls answered OK, and durations.
    ok: [IntCounter; 2],
    duration: [Histogram; 2],
}

/// The calls the catalog sends to discount.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounter,
    refused_answers: IntCounter,
    ejections: IntCounterVec,
    replicas: IntGaugeVec,
    /// Where the client's certificates' expiry is noted.
    pub(crate) certificates: common::metrics::Certificates,
}

/// The `method` label values: the two methods of `ecommerce.Discount` the
/// catalog calls, by their full gRPC names, as discount's own metrics and
/// both services' spans name them.
const CALLED_METHODS: [&str; 2] = [
    "ecommerce.Discount/ApplyDiscount",
    "ecommerce.Discount/ApplyDiscounts",
];

impl CatalogMetrics {
    /// The catalog's metrics, registered, all at zero.
    pub fn new() -> Self {
        let common = Metrics::new("catalog", env!("CARGO_PKG_VERSION"));
        let http = HttpMetrics {
            requests: common.counter_vec(
                "catalog_http_requests_total",
                "HTTP requests answered, by route template (unmatched for unknown paths), method and status.",
                &["route", "method", "status"],
            ),
            duration: common.duration_vec(
                "catalog_http_request_duration_seconds",
                "Time from a request's head to its answer, by route template and method.",
                &["route", "method"],
            ),
        };
        let listings = common.counter_vec(
            "catalog_listings_total",
            "GET /products answers, by X-Discount-Status (not_asked: no known customer, so discount was not asked).",
            &["discount_status"],
        );
        let listings = ["applied", "partial", "unavailable", "not_asked"]
            .map(|status| listings.with_label_values(&[status]));
        let ejections = common.counter_vec(
            "catalog_discount_ejections_total",
            "Discount replicas taken out of rotation, by reason.",
            &["reason"],
        );
        // Every reason exists from the start, at 0, so that rate() and
        // alerts have a series before the first ejection.
        for reason in [
            "unreachable",
            "tls_handshake_failed",
            "calls_failing",
            "health_check_unanswered",
            "health_check_refused",
            "refused",
        ] {
            ejections.with_label_values(&[reason]);
        }
        let discount = ClientMetrics {
            calls: common.counter_vec(
                "catalog_discount_calls_total",
                "Calls sent to discount, by method, replica address and gRPC code (DEADLINE_EXCEEDED also when the catalog's own deadline passed).",
                &["method", "replica", "code"],
            ),
            duration: common.duration_vec(
                "catalog_discount_call_duration_seconds",
                "How long calls to discount took, by method and replica address.",
                &["method", "replica"],
            ),
            retries: common.counter(
                "catalog_discount_retries_total",
                "Listings sent a second time: the products a replica failed, to another replica (or, for a call never processed, the same one on a new connection), or the whole listing to another replica when the first had not answered within a third of the deadline (hedged).",
            ),
            refused_answers: common.counter(
                "catalog_discount_answers_refused_total",
                "Products whose answer from discount was refused as impossible (for another product or price, pct outside 0..1, a price after the discount that is not the price less pct): listed without a discount and held against the replica.",
            ),
            ejections,
            replicas: common.gauge_vec(
                "catalog_discount_replicas",
                "Discount replicas known, by whether they are in rotation (serving) or not (not_serving).",
                &["state"],
            ),
            certificates: common.certificates().clone(),
        };
        let connections = common.gauge(
            "catalog_http_connections_open",
            "HTTP connections open now.",
        );
        let reloads = common.counter_vec(
            "catalog_reloads_total",
            "Reloads of the TLS material (SIGHUP), by outcome: success, or failure (the old material stays).",
            &["outcome"],
        );
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        Self {
            common,
            http,
            listings,
            discount,
            connections,
            reloads,
        }
    }

    /// One `GET /products` answered with `status` (`None`: discount was
    /// not asked).
    pub fn listing(&self, status: Option<DiscountStatus>) {
        let index = match status {
            Some(DiscountStatus::Applied) => 0,
            Some(DiscountStatus::Partial) => 1,
            Some(DiscountStatus::Unavailable) => 2,
            None => 3,
        };
        self.listings[index].inc();
    }

    /// One reload of the TLS material, and whether it worked.
    pub fn reloaded(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[outcome]).inc();
    }
}

impl Default for CatalogMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientMetrics {
    /// The series of the replica at `addr`.
    pub(crate) fn series(&self, addr: SocketAddr) -> ReplicaSeries {
        let addr = addr.to_string();
        ReplicaSeries {
            ok: CALLED_METHODS.map(|method| self.calls.with_label_values(&[method, &addr, "OK"])),
            duration: CALLED_METHODS
                .map(|method| self.duration.with_label_values(&[method, &addr])),
            addr,
        }
    }

    /// One call of `method` (`ApplyDiscount` or `ApplyDiscounts`) to the
    /// replica of `series` that ended with `code` after `took`.
    pub(crate) fn call(
        &self,
        series: &ReplicaSeries,
        method: &'static str,
        code: tonic::Code,
        took: Duration,
    ) {
        let index = usize::from(method == "ApplyDiscounts");
        if code == tonic::Code::Ok {
            series.ok[index].inc();
        } else {
            self.calls
                .with_label_values(&[CALLED_METHODS[index], &series.addr, grpc_code_name(code)])
                .inc();
        }
        series.duration[index].observe(took.as_secs_f64());
    }

    /// One listing sent again to another replica.
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// One product's answer refused as impossible.
    pub(crate) fn refused_answer(&self) {
        self.refused_answers.inc();
    }

    /// One replica ejected, for `why` (the words `/readyz` shows).
    pub(crate) fn ejected(&self, why: &str) {
        let reason = why.to_ascii_lowercase().replace(' ', "_");
        self.ejections.with_label_values(&[&reason]).inc();
    }

    /// `replica` left: its series go, so that replicas coming and going
    /// (pods rescheduled) do not grow the label set for ever.
    pub(crate) fn forget(&self, replica: SocketAddr) {
        let replica = replica.to_string();
        for method in CALLED_METHODS {
            let _ = self.duration.remove_label_values(&[method, &replica]);
            for code in 0..=16 {
                let code = grpc_code_name(tonic::Code::from_i32(code));
                let _ = self.calls.remove_label_values(&[method, &replica, code]);
            }
        }
    }

    /// Sets the replica gauge: `serving` of `known` in rotation.
    pub(crate) fn replicas(&self, serving: usize, known: usize) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.replicas
            .with_label_values(&["serving"])
            .set(count(serving));
        self.replicas
            .with_label_values(&["not_serving"])
            .set(count(known.saturating_sub(serving)));
    }
}

/// The `route` label for a request: the template it matched, or
/// `unmatched`, so a scan of random paths adds no series.
fn route(matched: Option<&MatchedPath>) -> &str {
    matched.map_or("unmatched", MatchedPath::as_str)
}

/// The `method` label: the standard methods by name, any other as `other`.
pub(crate) fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

impl HttpMetrics {
    /// The layer that counts and times every request the router answers,
    /// for each route and the fallback, so the matched template is known.
    pub fn layer(&self) -> TrackRequests {
        TrackRequests {
            metrics: self.clone(),
        }
    }
}

/// See [`HttpMetrics::layer`].
#[derive(Debug, Clone)]
pub struct TrackRequests {
    metrics: HttpMetrics,
}

impl<S> Layer<S> for TrackRequests {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A route whose requests [`TrackRequests`] counts.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S> Service<Request> for Tracked<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let method = method(request.method());
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await?;
            let route = route(matched.as_ref());
            metrics
                .requests
                .with_label_values(&[route, method, response.status().as_str()])
                .inc();
            metrics
                .duration
                .with_label_values(&[route, method])
                .observe(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}
