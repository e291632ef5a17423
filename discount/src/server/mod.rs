//! Serving: the gRPC router (discount, health, reflection) with its layers,
//! the message size limit, and shutdown in three steps (health
//! NOT_SERVING, a delay, a bounded drain). Connections go through the
//! skeleton both services share ([`common::serve::server`]), each after
//! the TLS handshake of [`crate::tls`], which also tells every call the
//! client's identity; the HTTP/2 limits are in `http2.rs`, each call's time
//! limit in `deadline.rs`, the status of a
//! message over the size limit in `oversized.rs`.

mod deadline;
mod http2;
mod oversized;

pub use http2::Http2Limits;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::quiet::Quiet;
use common::serve::connection::Admitted;
use common::serve::server::{Eviction, Limits, Server};
use ecommerce_proto::pb::discount_server::{Discount, DiscountServer};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http;
use tonic::service::{RecoverErrorLayer, Routes};
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;

use crate::authz::Authorize;
use crate::error::StartupError;
use crate::metrics::DiscountMetrics;
use crate::shed::CallBudget;
use crate::tls::{self, Transport};
use deadline::call_deadline;
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
/// [`StartupError::Reflection`] if the reflection service cannot be built;
/// serving itself cannot fail.
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
    let discount = DiscountServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(discount)
        .prepare();
    let limits = options.http2;
    let app = ServiceBuilder::new()
        .map_request(|request: http::Request<hyper::body::Incoming>| {
            request.map(tonic::body::Body::new)
        })
        // What fails below becomes a gRPC status, as tonic's server does.
        .layer(RecoverErrorLayer::new())
        .layer(call_deadline(limits.max_call_duration))
        // Each call's span, with no line of tower-http's own.
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
        .layer(MapResponseLayer::new(oversized_is_resource_exhausted))
        // Before the budget: a refused call takes no place in it.
        .layer(options.authorize.clone().counted(metrics.refusals()))
        .layer(CallBudget::new(options.max_concurrent_calls, &metrics.shed))
        .service(routes);
    let connection_limits = Limits {
        max_connections: options.max_connections,
        eviction: Eviction::StalestCall,
        idle_timeout: None,
        // A GOAWAY at the age; unary calls then end within
        // max_call_duration. A stream that outlives that is cut.
        max_age: Some((limits.max_connection_age, limits.max_call_duration)),
    };
    let server = Server {
        http: limits.builder(),
        service: app,
        limits: connection_limits,
        open: metrics.connections.clone(),
        leaving: None,
    };
    let drain = options.drain_timeout;
    match transport {
        Transport::Tls(tls) => {
            let limit = options.handshake_timeout;
            let authorize = options.authorize.clone();
            let quiet = Arc::new(Quiet::default());
            let metrics = metrics.clone();
            let handshake = move |tcp: TcpStream, peer: SocketAddr| {
                let config = Arc::clone(&tls.borrow());
                let (quiet, authorize, metrics) =
                    (Arc::clone(&quiet), authorize.clone(), metrics.clone());
                async move {
                    let stream = tls::handshake(config, tcp, peer, limit, &quiet, &metrics).await?;
                    let identity = tls::client_identity(&stream);
                    let listed = authorize.admits(&identity);
                    let mut extensions = http::Extensions::new();
                    // Where tonic's `remote_addr` and `peer_certs` look.
                    extensions.insert(stream.connect_info());
                    extensions.insert(Arc::new(identity));
                    Some(Admitted {
                        io: stream,
                        extensions,
                        listed,
                    })
                }
            };
            server
                .serve(listener, handshake, shutdown, drain, "calls")
                .await;
        }
        Transport::Plaintext => {
            let handshake = |tcp: TcpStream, _| {
                let mut extensions = http::Extensions::new();
                extensions.insert(tcp.connect_info());
                std::future::ready(Some(Admitted {
                    io: tcp,
                    extensions,
                    listed: true,
                }))
            };
            server
                .serve(listener, handshake, shutdown, drain, "calls")
                .await;
        }
    }
    Ok(())
}
