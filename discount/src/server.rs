//! Serving the discount service on TLS connections.
//!
//! The TLS handshake is done here with rustls rather than by tonic's built-in
//! TLS, for three reasons: each handshake runs in its own task with a time
//! limit, so a client that connects and says nothing ties up neither the
//! accept loop nor memory for long; a failed handshake (a client without a
//! certificate, or with one from another CA) is logged with the peer
//! address and rustls' reason, which is the first thing anyone asks when
//! "the catalog cannot reach discount"; and each connection takes the TLS
//! configuration current when it arrives, so certificates can be replaced
//! without a restart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::conn::{ConnectionTracker, Tracked};
use ecommerce_proto::pb::discount_server::{Discount, DiscountServer};
use http_body::Frame;
use http_body_util::BodyExt;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic_health::ServingStatus;
use tower::util::MapResponseLayer;

use crate::error::StartupError;
use crate::service::DiscountService;

/// Handshaken connections waiting for the gRPC server to pick them up.
const READY_QUEUE: usize = 128;

/// The largest request or response message: 64 KiB. A DiscountRequest is a
/// few hundred bytes; tonic's default of 4 MiB per call would let a client
/// make the server buffer far more than any real request needs.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// How connections are secured.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS with the configuration current when each connection arrives:
    /// certificate, key, client verification, protocol versions and ALPN.
    Tls(watch::Receiver<Arc<ServerConfig>>),
    /// No TLS. Only behind a service mesh that secures connections itself.
    Plaintext,
}

impl Transport {
    /// TLS with a configuration that never changes.
    pub fn tls(config: Arc<ServerConfig>) -> Self {
        // The receiver keeps the last value after the sender is gone.
        Self::Tls(watch::channel(config).1)
    }
}

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TLS or plaintext.
    pub transport: Transport,
    /// The time a client has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// After the shutdown signal: how long to keep serving while health
    /// says NOT_SERVING, so that load balancers and health-checking clients
    /// move away before connections are refused.
    pub shutdown_delay: Duration,
    /// Then: how long calls in flight get to finish before their
    /// connections are closed.
    pub drain_timeout: Duration,
}

impl ServerOptions {
    /// Options with `transport` and the defaults of the command line.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            handshake_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `ecommerce.Discount`, the standard health service and server
/// reflection on `listener` until `shutdown` completes, then drains.
///
/// Takes an already-bound listener so that callers (tests in particular) can
/// bind port 0 and read the real port before the server starts.
///
/// # Errors
/// [`StartupError::Serve`] if the gRPC server fails.
pub async fn run(
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    serve(listener, options, DiscountService, shutdown).await
}

/// [`run`] with any implementation of the Discount service, for tests that
/// need a discount which fails or stalls on purpose.
///
/// Shutting down goes: health turns NOT_SERVING (for the server as a whole,
/// `""`, and for `ecommerce.Discount`); calls are still served for
/// `shutdown_delay`; then no new connections or calls are taken, and calls
/// in flight get `drain_timeout` to finish.
///
/// # Errors
/// As [`run`].
pub async fn serve<S: Discount>(
    listener: TcpListener,
    options: ServerOptions,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DiscountServer<S>>().await;
    // Both reflection versions: grpcurl speaks v1, grpcio's reflection
    // client (and older tools) only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ecommerce_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);

    let delay = options.shutdown_delay;
    let shutdown = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
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
    let router = tonic::transport::Server::builder()
        .layer(MapResponseLayer::new(oversized_is_resource_exhausted))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(discount);
    let limit = options.handshake_timeout;
    let tracker = connections.clone();
    let finished =
        common::shutdown::with_drain_limit(shutdown, options.drain_timeout, move |signal| {
            let serving: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
                match options.transport {
                    Transport::Tls(tls) => {
                        let incoming = incoming(listener, tracker, move |tcp, peer| {
                            let acceptor = TlsAcceptor::from(Arc::clone(&tls.borrow()));
                            handshake(acceptor, tcp, peer, limit)
                        });
                        Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                    }
                    Transport::Plaintext => {
                        let incoming =
                            incoming(listener, tracker, |tcp, _| std::future::ready(Some(tcp)));
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

/// Accepts TCP connections, turns each into a stream with `upgrade` (the
/// TLS handshake, or nothing) in a task of its own, and yields those that
/// come through, tracked.
///
/// The accept loop stops when the returned stream is dropped, which is what
/// tonic does when it shuts down.
fn incoming<IO, F, U>(
    listener: TcpListener,
    connections: ConnectionTracker,
    upgrade: U,
) -> ReceiverStream<io::Result<Tracked<IO>>>
where
    IO: Send + 'static,
    F: Future<Output = Option<IO>> + Send + 'static,
    U: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
{
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = ready.closed() => break,
                accepted = common::net::accept(&listener) => accepted,
            };
            let registration = connections.register(&tcp);
            let upgraded = upgrade(tcp, peer);
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(stream) = upgraded.await {
                    // Err only when the server is shutting down.
                    let _ = ready.send(Ok(registration.wrap(stream))).await;
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Runs one server-side TLS handshake, bounded by `limit`.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        // A TCP connect and close with no TLS at all is what port probes and
        // load balancer checks do: not worth a warning.
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "connection closed before the TLS handshake");
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?limit, "TLS handshake timed out; closing the connection");
            None
        }
    }
}

/// tonic answers a request over the size limit with OUT_OF_RANGE; the gRPC
/// status code specification, grpc-go and grpcio say RESOURCE_EXHAUSTED, and
/// clients retry or alert on that code. The status travels in the trailers
/// (or, for a trailers-only answer, in the headers); both are rewritten.
fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite_oversized_status(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_oversized_status(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

fn rewrite_oversized_status(headers: &mut http::HeaderMap) {
    let oversized = tonic::Status::from_header_map(headers).is_some_and(|status| {
        status.code() == tonic::Code::OutOfRange
            && status
                .message()
                .starts_with("Error, decoded message length too large")
    });
    if oversized {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
}
