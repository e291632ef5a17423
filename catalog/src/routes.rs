//! The HTTP API: router and handlers.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderName, StatusCode, header};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::customer;
use crate::discount::DiscountClient;
use crate::error::CatalogError;
use crate::json;
use crate::products;

/// Says whether the listing has discount's answers: `applied`, `partial`
/// or `unavailable`. Present only when discount was asked, that is, for a
/// known customer.
pub const DISCOUNT_STATUS: HeaderName = HeaderName::from_static("x-discount-status");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    discount: DiscountClient,
}

impl AppState {
    /// State around the client of discount.
    pub fn new(discount: DiscountClient) -> Self {
        Self { discount }
    }
}

/// The catalog's routes.
///
/// Only `/` and `/products` are the API, with an access log; `/healthz`
/// and `/readyz` are for orchestrators and stay out of the access log,
/// which probes would otherwise fill. The seed answered every unknown path
/// with `It is working.` because Go's `ServeMux` treats the `/` pattern as
/// a catch-all; here unknown paths get 404 and other methods 405. A request
/// still unanswered after `request_timeout` gets 503.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route("/", get(root))
        .route("/products", get(list_products))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        );
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    api.merge(probes)
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .with_state(state)
}

/// `GET /`: a liveness answer, as in the seed.
async fn root() -> &'static str {
    "It is working."
}

/// `GET /products`: the product list, discounted for the customer named by
/// `X-USER-ID` when it is a known one.
async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, CatalogError> {
    let products = products::all();
    let customer = customer::customer_id(&headers)?.and_then(customer::find);
    let Some(customer) = customer else {
        return Ok(json_response(&products, None));
    };
    tracing::debug!(customer_id = customer.id, "pricing products for customer");
    let priced = state.discount.apply_to_all(&customer, products).await;
    Ok(json_response(
        &priced.products,
        Some(priced.status.as_str()),
    ))
}

fn json_response(
    products: &[ecommerce_proto::pb::Product],
    discount_status: Option<&'static str>,
) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        json::products(products),
    )
        .into_response();
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

/// `GET /readyz`: 200 when discount's health service reports SERVING
/// within the call deadline; 503 with the reason otherwise.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.discount.check_health().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        ),
    }
}

/// Anything else: Go's `http.NotFound` body, for clients that match on it.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "404 page not found\n")
}
