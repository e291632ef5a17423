//! Serving: the gRPC router (discount, health, reflection), the accept
//! loop that hands each connection to the TLS handshake of [`crate::tls`],
//! the message size limit, and shutdown in three steps (health
//! NOT_SERVING, a delay, a bounded drain).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::connections::{ConnectionTracker, Tracked, TrackedInfo, place_under};
use common::quiet::Quiet;
use ecommerce_proto::pb::discount_server::{Discount, DiscountServer};
use http_body::Frame;
use http_body_util::BodyExt;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_health::ServingStatus;
use tower::util::{MapRequestLayer, MapResponseLayer};

use crate::authz::{Authenticated, AuthenticatedInfo, Authorize};
use crate::error::StartupError;
use crate::metrics::DiscountMetrics;
use crate::shed::CallBudget;
use crate::tls::{self, Transport};

/// Handshaken connections waiting for the gRPC server to pick them up.
const READY_QUEUE: usize = 128;

/// How many streams the server may reset on one connection for the
/// client's protocol errors (opening streams past the limit, for one)
/// before it closes the connection: hyper's own default, set explicitly.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

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

/// The bounds on one HTTP/2 connection, so that no client can make the
/// server hold more than these whatever it sends. The flags of `Config`
/// say what each is for.
#[derive(Debug, Clone, Copy)]
pub struct Http2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// The ceiling on a call's `grpc-timeout`.
    pub max_call_duration: Duration,
    /// When a connection is asked to close (GOAWAY).
    pub max_connection_age: Duration,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Streams the client may reset before the server accepts them.
    pub max_pending_resets: usize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub stream_window: u32,
    /// The connection's flow-control window.
    pub connection_window: u32,
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
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // tonic ends a call at the smaller of this and the client's
        // grpc-timeout.
        .timeout(limits.max_call_duration)
        // Not max_connection_age_grace: in tonic 0.14 setting it replaces
        // the GOAWAY at the age with a hard close at age + grace, failing
        // the calls in flight. Calls end within max_call_duration anyway.
        .max_connection_age(limits.max_connection_age)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .http2_max_header_list_size(limits.max_header_list_size)
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        // tonic passes None here by default, which hyper takes as "no
        // limit" on streams the server itself resets for protocol errors
        // (RUSTSEC-2024-0003); a client provoking them gets a GOAWAY.
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_resets))
        // Outermost: calls refused or shed below are counted too.
        .layer(metrics.observe_calls())
        .layer(MapRequestLayer::new(expose_peer))
        .layer(MapResponseLayer::new(oversized_is_resource_exhausted))
        // Before the budget: a refused call takes no place in it.
        .layer(options.authorize.clone().counted(metrics.refusals()))
        .layer(CallBudget::new(options.max_concurrent_calls).counted(metrics.shed.clone()))
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

/// How many connections [`incoming`] keeps open, and for how long.
#[derive(Debug, Clone)]
struct ConnectionBounds {
    /// The gauge of open connections.
    open: IntGauge,
    max_connections: usize,
    /// Past this a connection is closed whatever it is doing.
    lifetime: Duration,
}

/// Accepts TCP connections, turns each into a stream with `upgrade` (the
/// TLS handshake, or nothing) in a task of its own, and yields those that
/// come through, tracked. `upgrade` also says whether the client's
/// identity is on the allow-list.
///
/// At most `max_connections` are open at once, those still in their
/// handshake included. At the limit, to make room, the oldest connection
/// still in its handshake is closed, or else the oldest whose client is
/// not on the allow-list (it can reach health and reflection only, so
/// churning such connections cannot push an allowed client out), or else
/// the one whose last call (or whose start, if none) began longest ago,
/// idle or not. So neither
/// clients that connect and say nothing (with a valid certificate or
/// without) nor clients that each hold one call open for ever (a health
/// Watch, a message never finished) and reconnect when closed can keep a
/// real client out: a real client starts calls all the time, and is the
/// last to be picked. (Picking idle connections first let such clients
/// evict every real client between two of its calls.)
///
/// Each connection lives at most `lifetime`, so no stream left open keeps
/// it past the GOAWAY of `--max-connection-age` for good.
///
/// The accept loop stops when the returned stream is dropped, which is what
/// tonic does when it shuts down.
fn incoming<IO, F, U>(
    listener: TcpListener,
    connections: ConnectionTracker,
    bounds: ConnectionBounds,
    upgrade: U,
) -> ReceiverStream<io::Result<Tracked<IO>>>
where
    IO: Send + 'static,
    F: Future<Output = Option<(IO, bool)>> + Send + 'static,
    U: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
{
    let ConnectionBounds {
        open,
        max_connections,
        lifetime,
    } = bounds;
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let slots = Arc::new(Semaphore::new(max_connections));
    let handshaking = ConnectionTracker::new();
    // Connections past their handshake whose client is not on the
    // allow-list, oldest first.
    let unlisted = ConnectionTracker::new();
    // Connections past their handshake by when their last call began.
    let by_last_call = ConnectionTracker::new();
    let quiet = Arc::new(Quiet::default());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = ready.closed() => break,
                accepted = common::listener::accept(&listener) => accepted,
            };
            // Operators need to know the limit is reached, once an
            // interval, not once a connection.
            let made_room = |closed: Option<usize>| {
                let what = match closed {
                    Some(0) => "closed the oldest unfinished TLS handshake to make room",
                    Some(1) => {
                        "closed the oldest connection of a client not on the allow-list to make room"
                    }
                    Some(_) => {
                        "closed the connection whose last call began longest ago to make room"
                    }
                    None => "waiting for a connection being closed",
                };
                if let Some(unlogged) = quiet.should_log(what, std::time::Instant::now()) {
                    tracing::warn!(%peer, max_connections, since_last_line = unlogged + 1, "at the connection limit (--max-connections): {what}");
                }
            };
            // Idle connections are not picked before busy ones: a real
            // client is idle between its calls, while one that holds a
            // call open (a Watch) and reconnects whenever it is closed
            // never is. By when the last call began, the one that holds a
            // call open goes first.
            let displaceable = [&handshaking, &unlisted, &by_last_call];
            let slot = tokio::select! {
                () = ready.closed() => break,
                slot = place_under(&slots, &displaceable, made_room) => slot,
            };
            let Some(slot) = slot else {
                break; // never closed
            };
            let registration = connections.register().holding(slot).counted(&open);
            let handshake = handshaking.register();
            let evicted = handshake.closed();
            let upgraded = upgrade(tcp, peer);
            let (ready, by_last_call, unlisted) =
                (ready.clone(), by_last_call.clone(), unlisted.clone());
            // None only for a lifetime too long to represent: no end.
            let end_of_life = tokio::time::Instant::now().checked_add(lifetime);
            tokio::spawn(async move {
                let stream = tokio::select! {
                    stream = upgraded => stream,
                    () = evicted => None,
                };
                // Picked to make room just as the handshake finished: the
                // newcomer waits for this slot, so give it up.
                let evicted = handshake.leave();
                if let Some((stream, admitted)) = stream.filter(|_| !evicted) {
                    let ranked = if admitted { &by_last_call } else { &unlisted };
                    let mut tracked = registration.wrap_watched(stream, ranked);
                    if let Some(end_of_life) = end_of_life {
                        tracked = tracked.closing_at(end_of_life);
                    }
                    // Err only when the server is shutting down.
                    let _ = ready.send(Ok(tracked)).await;
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Moves what tonic was told about a call's connection ([`TrackedInfo`],
/// from [`Tracked`]) apart: the stream's own details go where tonic's
/// accessors (`Request::remote_addr`, the peer's certificates) look for
/// them, the client's identity where [`Authorize`] looks for it, and the
/// connection's [`common::connections::Closer`] and
/// [`common::activity::Activity`] beside them, for [`CallBudget`].
fn expose_peer(mut request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    let extensions = request.extensions_mut();
    type TlsInfo = AuthenticatedInfo<TlsConnectInfo<TcpConnectInfo>>;
    if let Some(tracked) = extensions.remove::<TrackedInfo<TlsInfo>>() {
        extensions.insert(tracked.info.info);
        extensions.insert(tracked.info.identity);
        extensions.insert(tracked.closer);
        extensions.insert(tracked.activity);
    } else if let Some(tracked) = extensions.remove::<TrackedInfo<TcpConnectInfo>>() {
        extensions.insert(tracked.info);
        extensions.insert(tracked.closer);
        extensions.insert(tracked.activity);
    }
    request
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; the gRPC
/// status code specification, grpc-go and grpcio say RESOURCE_EXHAUSTED, and
/// clients retry or alert on that code. The status travels in the trailers
/// (or, for a trailers-only answer, in the headers); both are rewritten.
///
/// The rewrite goes by the code alone, not tonic's wording, so a tonic
/// release that rewords its message cannot silently undo it. That is sound
/// because no service on this server answers OUT_OF_RANGE itself: the
/// discount handlers answer INVALID_ARGUMENT ([`crate::DiscountError`]), and
/// health and reflection never use it. A handler that one day needs
/// OUT_OF_RANGE must narrow this. `a_message_over_the_size_limit_is_resource_exhausted`
/// in `tests/hostile.rs` checks the result over the wire.
fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite_out_of_range(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_out_of_range(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

fn rewrite_out_of_range(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == OUT_OF_RANGE.as_bytes());
    if out_of_range {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
}

/// `grpc-status` of OUT_OF_RANGE, as it appears on the wire.
const OUT_OF_RANGE: &str = "11";

#[cfg(test)]
mod tests {
    use super::*;

    fn status_after_rewrite(code: tonic::Code) -> Option<tonic::Code> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
        headers.insert("grpc-message", http::HeaderValue::from_static("whatever"));
        rewrite_out_of_range(&mut headers);
        tonic::Status::from_header_map(&headers).map(|status| status.code())
    }

    #[test]
    fn out_of_range_becomes_resource_exhausted_whatever_the_message() {
        assert_eq!(tonic::Code::OutOfRange as i32, 11);
        assert_eq!(
            status_after_rewrite(tonic::Code::OutOfRange),
            Some(tonic::Code::ResourceExhausted)
        );
    }

    #[test]
    fn every_other_status_is_left_alone() {
        for code in [
            tonic::Code::Ok,
            tonic::Code::InvalidArgument,
            tonic::Code::Internal,
            tonic::Code::Unavailable,
        ] {
            assert_eq!(status_after_rewrite(code), Some(code));
        }
        let mut none = http::HeaderMap::new();
        rewrite_out_of_range(&mut none);
        assert!(none.is_empty());
    }
}
