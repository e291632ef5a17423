//! The catalog's HTTP requests, for Prometheus: counted and timed by route
//! template, method and status, by a layer on each route so that the
//! template matched is known.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use common::metrics::Metrics;
use http::Method;
use prometheus::{HistogramVec, IntCounterVec};
use tower::{Layer, Service};

/// HTTP requests by route template, method and status, and how long they
/// took.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// The series of HTTP requests, registered in `common`, all at zero.
    pub(super) fn new(common: &Metrics) -> Self {
        Self {
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
        }
    }

    /// The layer that counts and times every request the router answers,
    /// for each route and the fallback, so the matched template is known.
    pub fn layer(&self) -> TrackRequests {
        TrackRequests {
            metrics: self.clone(),
        }
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
