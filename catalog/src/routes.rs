//! The HTTP API: router and handlers.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::customer;
use crate::discount::DiscountClient;
use crate::error::CatalogError;
use crate::json;
use crate::products;

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

/// The catalog's routes, with an access log.
///
/// Only `/` and `/products` exist. The seed answered every unknown path
/// with `It is working.` because Go's `ServeMux` treats the `/` pattern as a
/// catch-all; here unknown paths get 404 and other methods 405.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/products", get(list_products))
        .fallback(not_found)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
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
    let products = match customer {
        Some(customer) => {
            tracing::debug!(customer_id = customer.id, "pricing products for customer");
            state.discount.apply_to_all(&customer, products).await
        }
        None => products,
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json::products(&products),
    )
        .into_response())
}

/// Anything else: Go's `http.NotFound` body, for clients that match on it.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "404 page not found\n")
}
