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
//!
//! This file holds the registry of them all, [`CatalogMetrics`]; the
//! series of calls to discount are in `client.rs`, those of HTTP requests
//! and the layer that counts them in `requests.rs`.

mod client;
mod requests;

pub use client::ClientMetrics;
pub(crate) use client::ReplicaSeries;
pub(crate) use requests::method;
pub use requests::{HttpMetrics, TrackRequests, Tracked};

use common::metrics::Metrics;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge};

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
    /// Reloads of the TLS material, by outcome.
    reloads: IntCounterVec,
    /// Seconds since the store last answered.
    data_age: Gauge,
    /// Products held in memory.
    products: IntGauge,
    /// Bytes of large answers waiting for their clients.
    pub(crate) unsent_bytes: IntGauge,
    /// Large answers dropped unsent to make room for new ones.
    pub(crate) unsent_dropped: IntCounter,
}

impl CatalogMetrics {
    /// The catalog's metrics, registered, all at zero.
    pub fn new() -> Self {
        let common = Metrics::new("catalog", env!("CARGO_PKG_VERSION"));
        let http = HttpMetrics::new(&common);
        let listings = common.counter_vec(
            "catalog_listings_total",
            "GET /products answers, by X-Discount-Status (not_asked: no known customer, so discount was not asked).",
            &["discount_status"],
        );
        let listings = ["applied", "partial", "unavailable", "not_asked"]
            .map(|status| listings.with_label_values(&[status]));
        let discount = ClientMetrics::new(&common);
        let connections = common.gauge(
            "catalog_http_connections_open",
            "HTTP connections open now.",
        );
        let reloads = common.counter_vec(
            "catalog_reloads_total",
            "Reloads of the TLS material (its files changed, or SIGHUP), by outcome: success, or failure (the old material stays).",
            &["outcome"],
        );
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        let data_age = common.float_gauge(
            "catalog_data_age_seconds",
            "Seconds since the store last answered a refresh of the products and customers (-1 before the first load).",
        );
        let products = common.gauge(
            "catalog_products",
            "Products the catalog holds in memory and serves.",
        );
        let unsent_bytes = common.gauge(
            "catalog_unsent_answer_bytes",
            "Bytes of large answers built and not yet sent to their clients, counted against --max-unsent-mib.",
        );
        let unsent_dropped = common.counter(
            "catalog_unsent_answers_dropped_total",
            "Large answers dropped unsent, their streams reset, because unread answers held all of --max-unsent-mib.",
        );
        Self {
            common,
            http,
            listings,
            discount,
            connections,
            reloads,
            data_age,
            products,
            unsent_bytes,
            unsent_dropped,
        }
    }

    /// The age and size of the data, read at each scrape.
    pub fn data(&self, data: &crate::data::Data) {
        let (age, _) = data.freshness();
        self.data_age.set(age.map_or(-1.0, |age| age.as_secs_f64()));
        self.products
            .set(i64::try_from(data.product_count()).unwrap_or(i64::MAX));
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
