//! The catalog's calls to discount, for Prometheus: by method, replica and
//! code, how long they took, retries, refused answers, ejections and the
//! replicas in rotation; each replica's successful calls looked up once.

use std::net::SocketAddr;
use std::time::Duration;

use common::metrics::{Metrics, grpc_code_name};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

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

impl ClientMetrics {
    /// The series of the client of discount, registered in `common`, all at
    /// zero.
    pub(super) fn new(common: &Metrics) -> Self {
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
        Self {
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
        }
    }

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
