//! Serving: the gRPC router (discount, health, reflection), the message
//! size limit, and shutdown in three steps (health NOT_SERVING, a delay, a
//! bounded drain). The accept loop that hands each connection to the TLS
//! handshake of [`crate::tls`] is in `accept.rs`; the HTTP/2 limits in
//! `http2.rs`; what a call is told of its connection in `connect_info.rs`;
//! the status of a message over the size limit in `oversized.rs`.

mod accept;
mod connect_info;
mod http2;
mod oversized;

pub use http2::Http2Limits;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::quiet::Quiet;
use common::serve::connections::ConnectionTracker;
use ecommerce_proto::pb::discount_server::{Discount, DiscountServer};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tower::util::{MapRequestLayer, MapResponseLayer};

use crate::authz::{Authenticated, Authorize};
use crate::error::StartupError;
use crate::metrics::DiscountMetrics;
use crate::shed::CallBudget;
use crate::tls::{self, Transport};
use accept::{ConnectionBounds, incoming};
use connect_info::expose_peer;
use oversized::oversized_is_resource_exhausted;

/// The largest request or response message: 64 KiB. A DiscountRequest is a
/// few hundred bytes; tonic's default of 4 MiB per call would let a client
/// make the server buffer far more than any real request needs.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// How the server treats connections, calls and shutdown.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The time a client has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// The most connections open at once, those in their handshake
    /// included.
    pub max_connections: usize,
    /// The most calls in flight over all connections.
    pub max_concurrent_calls: usize,
    /// After the shutdown signal: how long to keep serving while health
    /// says NOT_SERVING, so that load balancers and health-checking clients
    /// move away before connections are refused.
    pub shutdown_delay: Duration,
    /// Then: how long calls in flight get to finish before their
    /// connections are closed.
    pub drain_timeout: Duration,
    /// Who may call `ecommerce.Discount`.
    pub authorize: Authorize,
    /// What one connection may ask of the server.
    pub http2: Http2Limits,
    /// Where calls, connections and refusals are counted.
    pub metrics: DiscountMetrics,
}

/// Serves `service` as `ecommerce.Discount`, beside the standard health
/// service and server reflection, on `listener` until `shutdown`
/// completes, then drains.
///
/// Takes an already-bound listener so that callers (tests in particular) can
/// bind port 0 and read the real port before the server starts.
///
/// Shutting down goes: health turns NOT_SERVING (for the server as a whole,
/// `""`, and for `ecommerce.Discount`); calls are still served for
/// `shutdown_delay`; then no new connections or calls are taken, and calls
/// in flight get `drain_timeout` to finish.
///
/// # Errors
/// [`StartupError::Reflection`] if the reflection service cannot be built,
/// [`StartupError::Serve`] if the gRPC server fails.
pub async fn serve<S: Discount>(
    listener: TcpListener,
    transport: Transport,
    options: ServerOptions,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Every service gets the same message size limit: tonic's default of
    // 4 MiB would let a client pin that much per stream on health or
    // reflection by sending part of a message.
    let health_service = health_service.max_decoding_message_size(MAX_MESSAGE_SIZE);
    health.set_serving::<DiscountServer<S>>().await;
    let metrics = options.metrics.clone();
    metrics.serving.set(1);
    let serving_gauge = metrics.serving.clone();
    // Both reflection versions: grpcurl speaks v1, grpcio's reflection
    // client (and older tools) only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ecommerce_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(MAX_MESSAGE_SIZE);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(MAX_MESSAGE_SIZE);

    let delay = options.shutdown_delay;
    let shutdown = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        serving_gauge.set(0);
        health.set_not_serving::<DiscountServer<S>>().await;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "health is NOT_SERVING; still serving for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("no longer accepting; draining calls in flight");
    };
    let connections = ConnectionTracker::new();
    let discount = DiscountServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let limits = options.http2;
    let router = limits
        .server()
        // Outermost: each call's span, with no line of tower-http's own.
        .layer(
            tower_http::trace::TraceLayer::new_for_grpc()
                .make_span_with(crate::metrics::call_span)
                .on_request(())
                .on_response(())
                .on_eos(())
                .on_failure(()),
        )
        // In the span: calls refused or shed below are counted too.
        .layer(metrics.observe_calls())
        .layer(MapRequestLayer::new(expose_peer))
        .layer(MapResponseLayer::new(oversized_is_resource_exhausted))
        // Before the budget: a refused call takes no place in it.
        .layer(options.authorize.clone().counted(metrics.refusals()))
        .layer(CallBudget::new(options.max_concurrent_calls, &metrics.shed))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(discount);
    let limit = options.handshake_timeout;
    let authorize = options.authorize.clone();
    let bounds = ConnectionBounds {
        open: metrics.connections.clone(),
        max_connections: options.max_connections,
        // tonic sends GOAWAY at the age; unary calls then end within
        // max_call_duration. A stream that outlives that is cut.
        lifetime: limits
            .max_connection_age
            .saturating_add(limits.max_call_duration),
    };
    let tracker = connections.clone();
    let finished =
        common::shutdown::with_drain_limit(shutdown, options.drain_timeout, move |signal| {
            let serving: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
                match transport {
                    Transport::Tls(tls) => {
                        let quiet = Arc::new(Quiet::default());
                        let incoming = incoming(listener, tracker, bounds, move |tcp, peer| {
                            let config = Arc::clone(&tls.borrow());
                            let quiet = Arc::clone(&quiet);
                            let authorize = authorize.clone();
                            let metrics = metrics.clone();
                            async move {
                                let stream =
                                    tls::handshake(config, tcp, peer, limit, &quiet, &metrics)
                                        .await?;
                                let identity = tls::client_identity(&stream);
                                let admitted = authorize.admits(&identity);
                                Some((Authenticated::new(stream, identity), admitted))
                            }
                        });
                        Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                    }
                    Transport::Plaintext => {
                        let incoming = incoming(listener, tracker, bounds, |tcp, _| {
                            std::future::ready(Some((tcp, true)))
                        });
                        Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                    }
                };
            serving
        })
        .await;
    match finished {
        Some(result) => result?,
        None => {
            let closed = connections.close_all();
            tracing::warn!(
                connections = closed,
                "closed connections with calls still in flight"
            );
        }
    }
    Ok(())
}
