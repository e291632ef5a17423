//! One accepted connection's life: its first byte within the header timeout,
//! then hyper until the client leaves or it is asked to close (idle, evicted
//! for a newcomer, the server draining), so that none holds its slot for ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::quiet::Quiet;
use common::serve::activity::Activity;
use common::serve::connections::Registration;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use super::ServeOptions;

/// How long a connection picked to make room at the connection limit gets
/// to close by itself (an idle HTTP/1 or HTTP/2 one closes at once, its
/// GOAWAY written) before it is dropped: a newcomer waits this long at
/// most for its slot, whatever the connection was doing (sending a head
/// byte by byte, leaving answers unread). Short, because room is made one
/// connection at a time: at 200 ms, 2,048 reconnecting slowloris clients
/// kept real ones waiting 7 to 9 s.
const EVICTION_GRACE: Duration = Duration::from_millis(20);

/// One accepted connection and what it needs to be served.
pub(super) struct Connection {
    pub(super) http: Arc<auto::Builder<TokioExecutor>>,
    pub(super) app: axum::Router,
    pub(super) activity: Arc<Activity>,
    /// Whether its requests so far were HTTP/1 (or there were none yet).
    pub(super) http1: Arc<AtomicBool>,
    pub(super) draining: watch::Receiver<bool>,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) options: ServeOptions,
    pub(super) peer: SocketAddr,
    /// Throttles the log of requests the HTTP parser refused, for the
    /// whole server.
    pub(super) refusals: Arc<Quiet>,
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
    pub(super) async fn serve(mut self, tcp: TcpStream, registration: Registration) {
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
