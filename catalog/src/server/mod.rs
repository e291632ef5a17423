//! Serving HTTP: hyper directly (HTTP/1.1 and h2c), with a header timeout,
//! limits on header size and count and on connections, and a drain with a
//! time limit at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::quiet::Quiet;
use common::serve::activity::Activity;
use common::serve::connections::{ConnectionTracker, Registration};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::routes::{AppState, router};

/// How the HTTP server treats connections, requests and shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and the
    /// longest a connection may sit with no request in flight. Bounds
    /// slow-header ("slowloris") and idle clients.
    pub header_read_timeout: Duration,
    /// The most connections served at once; see the flag.
    pub max_connections: usize,
    /// The most requests open at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// After the shutdown signal, how long to keep serving while `/readyz`
    /// answers 503, so that load balancers stop sending first.
    pub shutdown_delay: Duration,
    /// Then, how long requests in flight get to finish before their
    /// connections are closed.
    pub drain_timeout: Duration,
}

/// How long a connection picked to make room at the connection limit gets
/// to close by itself (an idle HTTP/1 or HTTP/2 one closes at once, its
/// GOAWAY written) before it is dropped: a newcomer waits this long at
/// most for its slot, whatever the connection was doing (sending a head
/// byte by byte, leaving answers unread). Short, because room is made one
/// connection at a time: at 200 ms, 2,048 reconnecting slowloris clients
/// kept real ones waiting 7 to 9 s.
const EVICTION_GRACE: Duration = Duration::from_millis(20);

/// The largest request head (request line and headers) accepted: 16 KiB,
/// plenty for this API. Larger ones are answered 431.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The most headers in one request; more are answered 431.
pub const MAX_HEADERS: usize = 64;

/// How many bytes of one request's body an HTTP/2 client may send before
/// the catalog reads them (the stream flow-control window): no route takes
/// a body, so this only bounds what a client can make the server buffer.
/// hyper's default is 1 MiB.
const H2_STREAM_WINDOW: u32 = 64 * 1024;

/// The same for all of a connection's requests together.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The most of one answer buffered for sending while the client's window
/// is closed; a product list is under a kilobyte. hyper's default is
/// about 400 KiB.
const H2_SEND_BUFFER: usize = 64 * 1024;

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
/// only, and accept errors are retried ([`common::serve::listener::accept`]).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = ConnectionTracker::new();
    let app = router(state.clone(), options.request_timeout);
    let open = state.metrics.connections.clone();
    let delay = options.shutdown_delay;
    let (drain, draining) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        state.begin_shutdown();
        drain.send_replace(true);
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
            serve(listener, app, options, tracker, open, draining, signal)
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

/// Accepts and serves connections until `signal`, then asks each to close
/// when its requests are done and waits for them. From `draining` (the
/// start of the shutdown delay) on, clients are asked to go: see
/// [`Connection::serve`].
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    connections: ConnectionTracker,
    open: IntGauge,
    draining: watch::Receiver<bool>,
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
        .max_concurrent_streams(options.http2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        // Pings find peers that vanished without closing.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    // Connections with no request in flight, oldest idle first.
    let idle = ConnectionTracker::new();
    let (stop, stopping) = watch::channel(false);
    let refusals = Arc::new(Quiet::default());
    let at_limit = Quiet::default();
    let mut tasks = JoinSet::new();
    let mut signal = signal;
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = common::serve::listener::accept(&listener) => accepted,
        };
        // At the limit, make room as nginx does: a client waiting for its
        // first answer counts for more than one idling between requests.
        // Logged once an interval: operators need to know the limit is
        // reached, not every connection it cost.
        let made_room = |closed: bool| {
            let what = if closed {
                "closed the oldest idle connection to make room"
            } else {
                "every connection has a request in flight; the newcomer waits"
            };
            if let Some(unlogged) = at_limit.should_log(what, Instant::now()) {
                tracing::warn!(%peer, max_connections = options.max_connections, since_last_line = unlogged + 1, "at the connection limit (--max-connections): {what}");
            }
        };
        let slot = tokio::select! {
            () = &mut signal => break,
            slot = idle.place_under(&slots, made_room) => slot,
        };
        let Some(slot) = slot else {
            break; // never closed
        };
        let registration = connections.register().holding(slot).counted(&open);
        let connection = Connection {
            http: Arc::clone(&http),
            app: app.clone(),
            activity: Activity::new(idle.clone(), CancellationToken::new()),
            http1: Arc::new(AtomicBool::new(true)),
            draining: draining.clone(),
            stopping: stopping.clone(),
            options,
            peer,
            refusals: Arc::clone(&refusals),
        };
        tasks.spawn(connection.serve(tcp, registration));
    }
    drop(listener);
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
}

/// One accepted connection and what it needs to be served.
struct Connection {
    http: Arc<auto::Builder<TokioExecutor>>,
    app: axum::Router,
    activity: Arc<Activity>,
    /// Whether its requests so far were HTTP/1 (or there were none yet).
    http1: Arc<AtomicBool>,
    draining: watch::Receiver<bool>,
    stopping: watch::Receiver<bool>,
    options: ServeOptions,
    peer: SocketAddr,
    /// Throttles the log of requests the HTTP parser refused, for the
    /// whole server.
    refusals: Arc<Quiet>,
}

impl Connection {
    /// Serves requests until the client closes the connection, or it is
    /// closed gracefully (answers in flight are sent first; HTTP/2 gets a
    /// GOAWAY) because the server is stopping, because it has been idle for
    /// the header timeout, or because a newcomer needed its slot.
    ///
    /// Once the server is draining, clients are asked to leave in a way
    /// that cannot cut off a request: an HTTP/2 client gets a GOAWAY at
    /// once (it tells the client which streams were taken), an HTTP/1
    /// client `Connection: close` on its next answer. Closing an idle
    /// HTTP/1 connection instead would race a request the client may be
    /// sending at that moment, which then meets a reset; that is left for
    /// the end of the shutdown delay, to clients that sent nothing during
    /// it.
    async fn serve(mut self, tcp: TcpStream, registration: Registration) {
        let peer = self.peer;
        // hyper-util first reads to tell HTTP/1 from HTTP/2, with no time
        // limit, and hyper's header timer only starts after that: a client
        // that connects and sends nothing would hold its slot forever. So
        // the first byte must come within the header timeout.
        // Until then it counts as idle, so a newcomer at the connection
        // limit may pick it: that must close it at once too.
        let mut first = [0_u8; 1];
        let limit = self.options.header_read_timeout;
        tokio::select! {
            first_byte = tokio::time::timeout(limit, tcp.peek(&mut first)) => {
                match first_byte {
                    Ok(Ok(read)) if read > 0 => {}
                    Ok(_) => {
                        tracing::debug!(%peer, "closed by the client before sending anything");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no request within the header timeout; closing");
                        return;
                    }
                }
            }
            () = self.activity.evicted() => {
                tracing::debug!(%peer, "closing a connection that has sent nothing, to make room at the connection limit");
                return;
            }
        }
        let (app, activity) = (self.app.clone(), Arc::clone(&self.activity));
        let (draining, saw_http1) = (self.draining.clone(), Arc::clone(&self.http1));
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (app, busy) = (app.clone(), activity.begin());
            let http1 = request.version() < http::Version::HTTP_2;
            saw_http1.store(http1, Ordering::Relaxed);
            let draining = draining.clone();
            async move {
                let mut response = app.oneshot(request).await;
                if let Ok(response) = &mut response
                    && http1
                    && *draining.borrow()
                {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                drop(busy);
                response
            }
        });
        let io = TokioIo::new(registration.wrap(tcp));
        let connection = self
            .http
            .serve_connection(io, TowerToHyperService::new(service))
            .into_owned();
        tokio::pin!(connection);
        let (mut closing, mut drained) = (false, false);
        // A connection closed for being idle or to make room has no request
        // in flight, but a graceful close also waits for answers still
        // being sent, which a client that never reads (an HTTP/2 window of
        // 0) would make wait for ever, holding the slot: after the header
        // timeout it is dropped.
        let mut give_up = None;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        log_connection_error(peer, &*error, &self.refusals);
                    }
                    return;
                }
                _ = self.draining.wait_for(|drain| *drain), if !closing && !drained => {
                    drained = true;
                    if self.http1.load(Ordering::Relaxed) {
                        continue; // Connection: close on its next answer
                    }
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {}
                () = self.activity.idle_for(limit), if !closing => {
                    tracing::debug!(%peer, "idle for the header timeout; closing");
                    give_up = Some(tokio::time::Instant::now() + limit);
                }
                () = self.activity.evicted(), if !closing => {
                    tracing::debug!(%peer, "closing to make room at the connection limit");
                    give_up = Some(tokio::time::Instant::now() + EVICTION_GRACE);
                }
                () = sleep_until_some(give_up) => {
                    tracing::debug!(%peer, "still open after being asked to close (a request head or answers unfinished); dropping the connection");
                    return;
                }
            }
            connection.as_mut().graceful_shutdown();
            closing = true;
        }
    }
}

/// Completes at `deadline`, or never if there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Logs why a connection ended with an error. A request the HTTP parser
/// refused (malformed, or a head over the limits: hyper answered 400 or
/// 431) never reached the router and its access log, so it is logged here,
/// for the operator wondering where a client's request went; anything
/// else (a client that went away) is routine.
///
/// Anyone can send such requests as fast as the network allows, so each
/// kind of refusal is logged at most once an interval ([`Quiet`]), with
/// how many went unlogged.
fn log_connection_error(
    peer: SocketAddr,
    error: &(dyn std::error::Error + 'static),
    quiet: &Quiet,
) {
    let refused = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_parse() || e.is_parse_too_large());
    if refused {
        if let Some(unlogged) = quiet.should_log(&error.to_string(), Instant::now()) {
            tracing::info!(%peer, %error, since_last_line = unlogged + 1, "refused a request the HTTP parser could not accept");
        }
    } else {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
