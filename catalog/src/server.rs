//! Serving HTTP: hyper directly (HTTP/1.1 and h2c), with a header timeout,
//! limits on header size and count and on connections, and a drain with a
//! time limit at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::connections::ConnectionTracker;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::routes::{AppState, router};

/// How the HTTP server treats connections, requests and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and the
    /// longest an HTTP/1 connection may sit idle between requests. Bounds
    /// slow-header ("slowloris") clients.
    pub header_read_timeout: Duration,
    /// The most connections served at once; further clients wait in the
    /// kernel's queue until one closes.
    pub max_connections: usize,
    /// After the shutdown signal, how long to keep serving while `/readyz`
    /// answers 503, so that load balancers stop sending first.
    pub shutdown_delay: Duration,
    /// Then, how long requests in flight get to finish before their
    /// connections are closed.
    pub drain_timeout: Duration,
}

/// The largest request head (request line and headers) accepted: 16 KiB,
/// plenty for this API. Larger ones are answered 431.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The most headers in one request; more are answered 431.
pub const MAX_HEADERS: usize = 64;

/// How often an HTTP/2 connection is pinged, to find peers that vanished
/// without closing it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the catalog API on `listener` until `shutdown` completes, then
/// lets requests in flight finish for at most the drain timeout.
///
/// Connections are served with hyper directly rather than `axum::serve`,
/// which sets no timer and so no header timeout, and no connection limit.
///
/// Serving itself cannot fail: a connection's errors end that connection
/// only, and accept errors are retried ([`common::listener::accept`]).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = ConnectionTracker::new();
    let app = router(state.clone(), options.request_timeout);
    let delay = options.shutdown_delay;
    let shutdown = async move {
        shutdown.await;
        state.begin_shutdown();
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "/readyz answers 503; still serving for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!("no longer accepting; draining requests in flight");
    };
    let tracker = connections.clone();
    let finished =
        common::shutdown::with_drain_limit(shutdown, options.drain_timeout, move |signal| {
            serve(listener, app, options, tracker, signal)
        })
        .await;
    if finished.is_none() {
        let closed = connections.close_all();
        tracing::warn!(
            connections = closed,
            "closed connections with requests still in flight"
        );
    }
}

/// Accepts and serves connections until `signal`, then waits for the open
/// ones to finish their requests.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    connections: ConnectionTracker,
    signal: impl Future<Output = ()> + Unpin,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD).unwrap_or(u32::MAX))
        // Pings find peers that vanished without closing.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut signal = signal;
    loop {
        let accepted = tokio::select! {
            () = &mut signal => break,
            accepted = accept_within(&listener, &slots) => accepted,
        };
        let Some((slot, tcp, peer)) = accepted else {
            break;
        };
        let registration = connections.register().holding(slot);
        let (http, app, watcher) = (Arc::clone(&http), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper-util first reads to tell HTTP/1 from HTTP/2, with no time
            // limit, and hyper's header timer only starts after that: a
            // client that connects and sends nothing would hold its slot
            // forever. So the first byte must come within the header timeout.
            let mut first = [0_u8; 1];
            match tokio::time::timeout(options.header_read_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
            }
            let io = TokioIo::new(registration.wrap(tcp));
            let service = TowerToHyperService::new(app);
            let connection = watcher.watch(http.serve_connection(io, service).into_owned());
            if let Err(error) = connection.await {
                log_connection_error(peer, &*error);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Logs why a connection ended with an error. A request the HTTP parser
/// refused (malformed, or a head over the limits: hyper answered 400 or
/// 431) never reached the router and its access log, so it is logged here,
/// for the operator wondering where a client's request went; anything
/// else (a client that went away) is routine.
fn log_connection_error(peer: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    let refused = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_parse() || e.is_parse_too_large());
    if refused {
        tracing::info!(%peer, %error, "refused a request the HTTP parser could not accept");
    } else {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Waits for a free connection slot, then for a connection. `None` only if
/// the semaphore was closed, which never happens.
async fn accept_within(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    let (tcp, peer) = common::listener::accept(listener).await;
    Some((slot, tcp, peer))
}
