//! One accepted connection's life: its handshake, then hyper until the
//! client leaves or the connection is asked to close (idle, too old,
//! picked to make room, the server draining), so that none holds its place
//! for ever, and a close that the client stalls ends in a drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::activity::{Activity, Busy};
use super::backlog::Gated;
use super::connections::{ConnectionTracker, Registration};
use super::server::{Eviction, Limits};
use crate::quiet::Quiet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection picked to make room at the connection limit gets
/// to close by itself (an idle one closes at once, its GOAWAY written)
/// before it is dropped: a newcomer waits this long at most for its slot,
/// whatever the connection was doing (sending a head byte by byte, leaving
/// answers unread). Short, because room is made one connection at a time:
/// at 200 ms, 2,048 reconnecting slowloris clients kept real ones waiting
/// 7 to 9 s.
const EVICTION_GRACE: Duration = Duration::from_millis(20);

/// What a handshake lets through: the stream to serve, what every request
/// on it is told of the connection (the client's identity, its address),
/// and whether its client is on the allow-list.
#[derive(Debug)]
pub struct Admitted<IO> {
    /// The stream to serve.
    pub io: IO,
    /// Added to each request's extensions.
    pub extensions: http::Extensions,
    /// Whether its client is on the allow-list (always, with none).
    pub listed: bool,
}

impl<IO> Admitted<IO> {
    /// `io`, with nothing to tell its requests, from a listed client.
    pub fn plain(io: IO) -> Self {
        Self {
            io,
            extensions: http::Extensions::new(),
            listed: true,
        }
    }
}

/// A connection as a call sees it, in its extensions under
/// [`Eviction::StalestCall`]: so the service can say when a call it took
/// begins, and close the connection of an answer left unread.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    activity: Arc<Activity>,
}

impl ConnectionHandle {
    /// A call starts; the connection moves to the back of the ranking by
    /// last call. It counts as in flight until the guard is dropped.
    pub fn begin(&self) -> Busy {
        self.activity.begin()
    }

    /// Adds the connection to `tracker` too (for as long as the returned
    /// registration lives), so that the tracker can pick it to close.
    pub fn register_in(&self, tracker: &ConnectionTracker) -> Registration {
        tracker.register_as(self.activity.evict_token())
    }
}

/// What [`super::server::Server`] serves requests with: a tower service
/// that takes hyper's requests, cloned per request.
pub trait Service: Clone + Send + 'static {
    /// The answers' body.
    type ResBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
    /// What a request that gets no answer fails with.
    type Error: Into<BoxError>;
    /// The answer on its way.
    type Future: Future<Output = Result<http::Response<Self::ResBody>, Self::Error>>
        + Send
        + 'static;
    /// Answers one request.
    fn answer(&self, request: http::Request<Incoming>) -> Self::Future;
}

impl<S, B> Service for S
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type ResBody = B;
    type Error = S::Error;
    type Future = Oneshot<S, http::Request<Incoming>>;

    fn answer(&self, request: http::Request<Incoming>) -> Self::Future {
        self.clone().oneshot(request)
    }
}

/// One accepted connection and what it needs to be served.
pub(super) struct Connection<S> {
    /// In the server's tracker, holding its place under the limit, until
    /// the task serving the connection ends.
    pub(super) _registration: Registration,
    /// Handshaking, unlisted, and idle or ranked connections.
    pub(super) displaceable: [ConnectionTracker; 3],
    pub(super) http: Arc<auto::Builder<TokioExecutor>>,
    pub(super) service: S,
    pub(super) limits: Limits,
    pub(super) leaving: watch::Receiver<bool>,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) peer: SocketAddr,
    /// Whether its requests so far were HTTP/1 (or there were none yet).
    pub(super) http1: Arc<AtomicBool>,
    /// Throttles the log of requests the HTTP parser refused, for the
    /// whole server.
    pub(super) refusals: Arc<Quiet>,
}

impl<S: Service> Connection<S> {
    /// Runs `handshake`, unless the connection is picked to make room
    /// first (it is in `handshaking` meanwhile), then serves requests until the client closes the connection,
    /// or it is closed gracefully (answers in flight are sent first;
    /// HTTP/2 gets a GOAWAY) because the server is stopping, because it has
    /// been idle too long, because it reached its age, or because a
    /// newcomer needed its slot; a client that stalls that close is
    /// dropped.
    ///
    /// Once the server is leaving, clients are asked to go in a way that
    /// cannot cut off a request: an HTTP/2 client gets a GOAWAY at once (it
    /// tells the client which streams were taken), an HTTP/1 client
    /// `Connection: close` on its next answer. Closing an idle HTTP/1
    /// connection instead would race a request the client may be sending
    /// at that moment, which then meets a reset; that is left for the stop,
    /// to clients that sent nothing meanwhile.
    pub(super) async fn serve<IO>(
        mut self,
        handshaking: Registration,
        handshake: impl Future<Output = Option<Admitted<IO>>> + Send,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let displaced = handshaking.closed();
        let admitted = tokio::select! {
            admitted = handshake => admitted,
            () = displaced => None,
        };
        // Picked to make room just as the handshake finished: the newcomer
        // waits for this slot, so give it up.
        if handshaking.leave() {
            tracing::debug!(%peer, "closed in its handshake to make room at the connection limit");
            return;
        }
        let Some(admitted) = admitted else { return };
        let evict = CancellationToken::new();
        let activity = match self.limits.eviction {
            Eviction::IdleFirst => Activity::new(self.displaceable[2].clone(), evict),
            Eviction::StalestCall if admitted.listed => {
                Activity::ranked(self.displaceable[2].clone(), evict)
            }
            Eviction::StalestCall => Activity::ranked(self.displaceable[1].clone(), evict),
        };
        let service = self.requests(admitted.extensions, &activity);
        let io = TokioIo::new(Gated::new(admitted.io));
        let connection = self.http.serve_connection(io, service).into_owned();
        tokio::pin!(connection);
        let (mut closing, mut left, mut picked) = (false, false, false);
        let idle_timeout = self.limits.idle_timeout;
        let started = Deadline::now();
        let old_at = self.limits.max_age.map(|(age, _)| started + age);
        // A graceful close waits for answers still being sent, which a
        // client that never reads (an HTTP/2 window of 0) would make wait
        // for ever, holding the slot: past this it is dropped.
        let mut give_up = self
            .limits
            .max_age
            .map(|(age, grace)| started + age + grace);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        log_connection_error(peer, &*error, &self.refusals);
                    }
                    return;
                }
                _ = self.leaving.wait_for(|leave| *leave), if !closing && !left => {
                    left = true;
                    if self.http1.load(Ordering::Relaxed) {
                        continue; // Connection: close on its next answer
                    }
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {}
                () = idle_for(&activity, idle_timeout), if !closing => {
                    tracing::debug!(%peer, "idle for too long; closing");
                    give_up = earliest(give_up, idle_timeout.map(|limit| Deadline::now() + limit));
                }
                // Also when already closing (at its age, say): a newcomer
                // waits for this slot.
                () = activity.evicted(), if !picked => {
                    tracing::debug!(%peer, "closing to make room at the connection limit");
                    picked = true;
                    give_up = earliest(give_up, Some(Deadline::now() + EVICTION_GRACE));
                }
                () = sleep_until_some(old_at), if !closing => {
                    tracing::debug!(%peer, "reached its maximum age; asking the client to reconnect");
                }
                () = sleep_until_some(give_up) => {
                    tracing::debug!(%peer, "still open after being asked to close (a request or answers unfinished); dropping the connection");
                    return;
                }
            }
            if !closing {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

impl<S: Service> Connection<S> {
    /// The hyper service of this connection: each request gets the
    /// handshake's `extensions`, and is counted as the connection's
    /// activity (by the skeleton while it runs, or by the service under
    /// [`Eviction::StalestCall`], through the [`ConnectionHandle`]); an
    /// HTTP/1 answer once the server is leaving says `Connection: close`.
    fn requests(
        &self,
        extensions: http::Extensions,
        activity: &Arc<Activity>,
    ) -> impl hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<S::ResBody>,
        Error = S::Error,
        Future: Send + 'static,
    > + Send
    + 'static {
        let handle = (self.limits.eviction == Eviction::StalestCall).then(|| ConnectionHandle {
            activity: Arc::clone(activity),
        });
        let (service, activity) = (self.service.clone(), Arc::clone(activity));
        let (leaving, saw_http1) = (self.leaving.clone(), Arc::clone(&self.http1));
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let busy = handle.is_none().then(|| activity.begin());
            let into = request.extensions_mut();
            into.extend(extensions.clone());
            if let Some(handle) = &handle {
                into.insert(handle.clone());
            }
            let http1 = request.version() < http::Version::HTTP_2;
            saw_http1.store(http1, Ordering::Relaxed);
            let close = http1 && *leaving.borrow();
            let answer = service.answer(request);
            // Boxed: hyper keeps each stream's task until its answer is
            // sent, and an unboxed future would stay inline in it, at its
            // full size, after it finished. A client that never reads its
            // answers (an HTTP/2 window of 0) pins that task per stream.
            Box::pin(async move {
                let mut response = answer.await;
                if let Ok(response) = &mut response
                    && close
                {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                drop(busy);
                response
            })
        })
    }
}

/// Completes once `activity` has been idle for `limit`, or never if there
/// is no limit.
async fn idle_for(activity: &Activity, limit: Option<Duration>) {
    match limit {
        Some(limit) => activity.idle_for(limit).await,
        None => std::future::pending().await,
    }
}

/// Completes at `deadline`, or never if there is none.
async fn sleep_until_some(deadline: Option<Deadline>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The earlier of two deadlines, either of which may be none.
fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Logs why a connection ended with an error. A request the HTTP parser
/// refused (malformed, or a head over the limits: hyper answered 400 or
/// 431) never reached the service and its access log, so it is logged
/// here, for the operator wondering where a client's request went;
/// anything else (a client that went away) is routine.
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
