//! What discount counts, for Prometheus: every gRPC call by method and
//! code, how long it took, the calls in flight and shed, refused TLS
//! handshakes and callers, connections, health. Served by
//! [`common::admin::serve`] on `--metrics-addr`; the names are listed in
//! `docs/observability.md`.
//!
//! This file holds the registry of them all, [`DiscountMetrics`]; the
//! layer that counts calls is in `calls.rs`, the labels of refused
//! handshakes in `handshake.rs` and of refused callers in `refusals.rs`.

mod calls;
mod handshake;
mod refusals;

use common::metrics::Metrics;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

pub(crate) use calls::{ObserveCalls, Quieted, call_span};
pub(crate) use handshake::HandshakeRefusal;
pub(crate) use refusals::Refusals;

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
            "Reloads of the TLS material (its files changed, or SIGHUP), by outcome: success, or failure (the old material stays).",
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
            refusals: Refusals::new(common.counter_vec(
                "discount_authz_refusals_total",
                "Calls refused PERMISSION_DENIED by the allow-list (--allow-client), by the identity presented (other past the first 32).",
                &["identity"],
            )),
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
        ObserveCalls::new(&self.calls, &self.duration, &self.in_flight)
    }
}

impl Default for DiscountMetrics {
    fn default() -> Self {
        Self::new()
    }
}
