//! The HTTP API: router and handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::telemetry::Untrusted;
use http::{HeaderMap, HeaderName, StatusCode, header};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Level;

use crate::customer;
use crate::data::Data;
use crate::discount::DiscountClient;
use crate::error::CatalogError;
use crate::json;
use crate::metrics::CatalogMetrics;
use crate::page::PageRequest;
use crate::unsent::Unsent;

/// Says whether the listing has discount's answers: `applied`, `partial`
/// or `unavailable`. Present only when discount was asked, that is, for a
/// known customer.
pub const DISCOUNT_STATUS: HeaderName = HeaderName::from_static("x-discount-status");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    discount: DiscountClient,
    /// The products and customers, in memory.
    data: Data,
    shutting_down: Arc<AtomicBool>,
    /// Why `/readyz` last said no, to log each change once.
    not_ready: Arc<Mutex<Option<String>>>,
    /// Behind an `Arc`: the state is cloned for every request, and the
    /// metrics are some thirty handles.
    pub(crate) metrics: Arc<CatalogMetrics>,
    /// The memory answers waiting for their clients may hold.
    unsent: Arc<Unsent>,
}

impl AppState {
    /// State around the client of discount and the data, counting in
    /// `metrics`, with at most `max_unsent` bytes of large answers waiting
    /// for their clients ([`Unsent`]).
    pub fn new(
        discount: DiscountClient,
        data: Data,
        metrics: CatalogMetrics,
        max_unsent: usize,
    ) -> Self {
        let unsent = Unsent::new(
            max_unsent,
            metrics.unsent_bytes.clone(),
            metrics.unsent_dropped.clone(),
        );
        Self {
            discount,
            data,
            shutting_down: Arc::new(AtomicBool::new(false)),
            not_ready: Arc::new(Mutex::new(None)),
            metrics: Arc::new(metrics),
            unsent: Arc::new(unsent),
        }
    }

    /// From now on `/readyz` answers 503, so that load balancers stop
    /// sending new requests while the ones already sent are still served.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

/// The catalog's routes.
///
/// `/`, `/products` and everything unknown (404, 405) go through the
/// access log; `/healthz` and `/readyz` are for orchestrators and stay out
/// of it, which probes would otherwise fill. (Requests the HTTP parser
/// rejects never reach the router; `server/connection.rs` logs those.) The seed answered every unknown path
/// with `It is working.` because Go's `ServeMux` treats the `/` pattern as
/// a catch-all; here unknown paths get 404 and other methods 405. A request
/// still unanswered after `request_timeout` gets 503. Every answer, the
/// 503 included, is counted by route in the metrics.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route("/", get(root))
        .route("/products", get(list_products))
        .route("/products/{id}", get(one_product))
        .fallback(not_found)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(access_span)
                .on_response(
                    |response: &Response, latency: Duration, span: &tracing::Span| {
                        span.record("http.response.status_code", response.status().as_u16());
                        DefaultOnResponse::new()
                            .level(Level::INFO)
                            .on_response(response, latency, span);
                    },
                ),
        );
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    api.merge(probes)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(state.metrics.http.layer())
        .with_state(state)
}

/// The most of a request's URI the access log shows.
const LOGGED_URI: usize = 256;

/// The most of a request's method the access log shows: hyper takes any
/// token as a method, up to the 16 KiB head limit.
const LOGGED_METHOD: usize = 24;

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The access log's span for `request`: its method, version and URI, the
/// URI cut at [`LOGGED_URI`] bytes with the length of the rest noted. A
/// client controls the URI, up to the 16 KiB head limit: written whole,
/// pipelined 404s with 15 KB URIs made 815 MB of log in 5 seconds. The
/// method, any token to hyper, is cut at [`LOGGED_METHOD`] bytes likewise.
///
/// It is also the request's server span in the trace (`otel.*` fields),
/// named by the route template, the child of the `traceparent` the request
/// came with if any.
fn access_span<B>(request: &http::Request<B>) -> tracing::Span {
    let uri = request.uri().to_string();
    // hyper takes UTF-8 in a path or query: cut at a character boundary,
    // or a character across byte 256 would log the whole URI.
    let shown = cut(&uri, LOGGED_URI);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let method = request.method().as_str();
    let shown_method = cut(method, LOGGED_METHOD);
    // A span name must come from a bounded set: a method outside the
    // standard nine is `_OTHER`, as OpenTelemetry's conventions say.
    let named_method = match crate::metrics::method(request.method()) {
        "other" => "_OTHER",
        standard => standard,
    };
    let span = tracing::info_span!(
        "request",
        method = %Untrusted(shown_method),
        uri = %Untrusted(shown),
        uri_bytes_not_shown = tracing::field::Empty,
        version = ?request.version(),
        otel.name = %format_args!("{named_method} {route}"),
        otel.kind = "server",
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    if shown.len() < uri.len() {
        span.record("uri_bytes_not_shown", uri.len() - shown.len());
    }
    common::telemetry::continue_trace(&span, request.headers());
    span
}

/// `GET /`: a liveness answer, as in the seed.
async fn root() -> &'static str {
    "It is working."
}

/// `GET /products`: a page of the product list (`?page_size`,
/// `?page_token`), discounted for the customer named by `X-USER-ID` when
/// it is a known one; the next page is in the `Link` header.
async fn list_products(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, CatalogError> {
    let asked = PageRequest::from_query(&query)?;
    let customer_id = customer::customer_id(&headers)?;
    let page = state.data.page(asked.after, asked.size)?;
    let link = page.next_after.map(|last| asked.next_link(last));
    let customer = customer_id.and_then(|id| state.data.customer(id));
    let mut response = match customer {
        None => {
            state.metrics.listing(None);
            json_response(&state, json::products(&page.products), None)
        }
        Some(customer) => {
            tracing::debug!(customer_id = customer.id, "pricing products for customer");
            let priced = state.discount.apply_to_all(&customer, page.products).await;
            state.metrics.listing(Some(priced.status));
            json_response(
                &state,
                json::products(&priced.products),
                Some(priced.status.as_str()),
            )
        }
    };
    if let Some(link) = link.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// `GET /products/{id}`: one product as an object, discounted for a known
/// `X-USER-ID` as a listing is.
async fn one_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CatalogError> {
    let id: i64 = id.parse().map_err(|_| CatalogError::BadProductId)?;
    let customer_id = customer::customer_id(&headers)?;
    let product = i32::try_from(id)
        .ok()
        .map(|id| state.data.product(id))
        .transpose()?
        .flatten()
        .ok_or(CatalogError::ProductNotFound)?;
    let Some(customer) = customer_id.and_then(|id| state.data.customer(id)) else {
        return Ok(json_response(&state, json::product(&product), None));
    };
    let priced = state
        .discount
        .apply_to_all(&customer, vec![product.clone()])
        .await;
    // The client never drops a product; the plain one is there if it did.
    let body = json::product(priced.products.first().unwrap_or(&product));
    Ok(json_response(&state, body, Some(priced.status.as_str())))
}

/// A JSON answer of `body`, held in the budget of unsent answers when it
/// is large.
fn json_response(
    state: &AppState,
    body: Vec<u8>,
    discount_status: Option<&'static str>,
) -> Response {
    let body = state.unsent.body(body);
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(status) = discount_status {
        response
            .headers_mut()
            .insert(DISCOUNT_STATUS, http::HeaderValue::from_static(status));
    }
    response
}

/// `GET /healthz`: the process is up and serving HTTP. Says nothing about
/// discount, so an orchestrator does not restart the catalog for a
/// discount outage.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while at least one discount replica is serving
/// (its health check says SERVING, or it has no health service and
/// answers) and not ejected; 503 otherwise, and from the moment the
/// catalog starts shutting down. The body lists each replica and its
/// state; causes are in the log. A change of readiness is logged once.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        );
    }
    let (discount_ready, discount) = state.discount.readiness();
    let data_loaded = state.data.is_loaded();
    let ready = discount_ready && data_loaded;
    let replicas = format!("{discount}{}\n", state.data.describe());
    let mut not_ready = state
        .not_ready
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if ready {
        if not_ready.take().is_some() {
            tracing::info!("ready again: a discount replica is serving and the data is loaded");
        }
        (StatusCode::OK, format!("ready: {replicas}"))
    } else {
        if not_ready.is_none() {
            let replicas_now = replicas.trim_end().replace('\n', "; ");
            tracing::warn!(replicas = %replicas_now, "not ready: no discount replica is serving, or no data yet");
            *not_ready = Some(replicas.clone());
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {replicas}"),
        )
    }
}

/// Anything else: Go's `http.NotFound` body, for clients that match on it.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "404 page not found\n")
}

/// The routes that need no discount, on the router alone: no sockets, no
/// certificates. Everything that involves discount is tested end to end in
/// `tests/`.
#[cfg(test)]
mod tests {
    use super::*;

    /// A character across the cut is left out, not the cut given up: the
    /// whole URI in the log was the flood `LOGGED_URI` stops.
    #[test]
    fn a_cut_stops_before_a_character_it_would_split() {
        assert_eq!(cut("ab\u{e9}cd", 3), "ab");
        assert_eq!(cut("ab\u{e9}cd", 4), "ab\u{e9}");
        assert_eq!(cut("abc", 256), "abc");
        let long = format!("/x?{}\u{e9}{}", "a".repeat(252), "a".repeat(14_700));
        assert_eq!(cut(&long, LOGGED_URI).len(), 255);
    }
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::discount::{DiscountClient, DiscountSettings, SystemResolver};
    use crate::tls::Security;

    /// The state around a client of a discount that is never dialled here.
    fn state() -> AppState {
        let settings = DiscountSettings {
            targets: "127.0.0.1:9".parse().unwrap(),
            server_name: "localhost".to_owned(),
            security: Security::Plaintext,
            deadline: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            dial_per_request: false,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            resolve_interval: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
        };
        let metrics = CatalogMetrics::new();
        let client = DiscountClient::start(
            &settings,
            std::sync::Arc::new(SystemResolver),
            metrics.discount.clone(),
        )
        .unwrap();
        let data = crate::data::Data::fixed(
            crate::store::seed::products(),
            crate::store::seed::customers(),
        );
        AppState::new(client, data, metrics, 16 << 20)
    }

    /// The router around [`state`].
    fn app() -> Router {
        router(state(), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_request_future_is_small_so_boxing_it_copies_little() {
        let listing = list_products(State(state()), Query(Vec::new()), HeaderMap::new());
        let size = std::mem::size_of_val(&listing);
        assert!(size < 2048, "GET /products's future is {size} bytes");
    }

    struct Answer {
        status: StatusCode,
        content_type: Option<String>,
        discount_status: Option<String>,
        body: String,
    }

    async fn send(method: &str, path: &str, user_id: Option<&str>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(user_id) = user_id {
            request = request.header("X-USER-ID", user_id);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let header = |name: HeaderName| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (content_type, discount_status) =
            (header(header::CONTENT_TYPE), header(DISCOUNT_STATUS));
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            discount_status,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// The seed's products without discounts, as `json::products` writes
    /// them (the exact bytes are tested in `json.rs` and `tests/it/api.rs`).
    fn plain() -> String {
        String::from_utf8(json::products(&crate::store::seed::products())).unwrap()
    }

    #[tokio::test]
    async fn the_root_says_it_is_working() {
        let answer = send("GET", "/", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "It is working.");
    }

    #[tokio::test]
    async fn products_without_a_known_customer_are_listed_without_asking_discount() {
        for user_id in [None, Some(""), Some("  "), Some("3"), Some("-1")] {
            let answer = send("GET", "/products", user_id).await;
            assert_eq!(answer.status, StatusCode::OK, "{user_id:?}");
            assert_eq!(answer.content_type.as_deref(), Some("application/json"));
            assert_eq!(answer.body, plain(), "{user_id:?}");
            assert_eq!(answer.discount_status, None, "{user_id:?}");
        }
    }

    #[tokio::test]
    async fn a_user_id_that_is_not_a_number_is_400_with_the_seeds_text() {
        let answer = send("GET", "/products", Some("abc")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.content_type.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(answer.body, "Customer ID is not a number.\n");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_other_methods_405_and_healthz_is_ok() {
        let answer = send("GET", "/nope", None).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::NOT_FOUND, "404 page not found\n")
        );
        assert_eq!(
            send("POST", "/products", None).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            send("DELETE", "/", None).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let answer = send("GET", "/healthz", None).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "ok\n")
        );
    }
}
