//! Load shedding: one budget of calls in flight for the whole server.
//!
//! Not tower's `GlobalConcurrencyLimitLayer` + `LoadShedLayer`: they free a place when the answer's headers are
//! ready, not when its body is sent, and shed in `poll_ready`, before the call, so nothing stalled can make room.
//!
//! The per-connection bounds of the server's `Http2Limits` do not add up
//! to a bound on the process: every call in flight may hold up to a message
//! (64 KiB) being received, and 1,024 connections × 256 streams is a quarter
//! of a million calls. A client that sends part of a message on every
//! stream, or a burst larger than the server can answer within the
//! callers' deadlines, would grow memory and latency without limit.
//!
//! So the server as a whole takes at most `--max-concurrent-calls` at once.
//! A call holds its place until its answer has been sent, so a streaming
//! call (reflection) counts for its whole life, and so does an answer the
//! client does not read.
//!
//! At the limit, a newcomer displaces a call that is waiting on its client,
//! as the catalog's connection limit displaces idle connections: an honest
//! client sends its message and reads its answer within microseconds, so
//! the call waiting longest is the one holding a place for nothing. First
//! the oldest call still waiting for its request message, which is ended;
//! then the oldest answer still unread, whose whole connection is closed
//! (hyper gives no way to end one stream whose answer waits for flow
//! control window). So a client that sends part of a message on every
//! stream, or never reads, cannot keep real calls out. When every call is
//! being worked on (the server is truly busy), the newcomer is answered
//! RESOURCE_EXHAUSTED at once instead of queuing past its caller's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::quiet::Quiet;
use common::serve::connection::ConnectionHandle;
use common::serve::connections::{ConnectionTracker, Registration};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::body::{End, Watched, Watcher};
use crate::metrics::Quieted;

/// How long a newcomer waits for the place of the call it displaced.
const DISPLACE_WAIT: Duration = Duration::from_millis(100);

/// The budget's line when it ends calls still waiting for their request.
const ENDING: &str = "ending calls whose request had not arrived, to make room";

/// The budget of calls in flight, shared by every connection: a
/// [`tower::Layer`] for the server's router.
#[derive(Debug, Clone)]
pub struct CallBudget {
    places: Arc<Semaphore>,
    /// Calls still receiving their request, oldest first.
    receiving: ConnectionTracker,
    /// The connections of answers not yet sent, oldest answer first.
    sending: ConnectionTracker,
    limit: usize,
    quiet: Arc<Quiet>,
    /// Counts the calls refused.
    shed: prometheus::IntCounter,
}

impl CallBudget {
    /// A budget of `limit` calls in flight, counting each call refused in
    /// `shed`.
    pub fn new(limit: usize, shed: &prometheus::IntCounter) -> Self {
        Self {
            places: Arc::new(Semaphore::new(limit)),
            receiving: ConnectionTracker::new(),
            sending: ConnectionTracker::new(),
            limit,
            quiet: Arc::new(Quiet::default()),
            shed: shed.clone(),
        }
    }

    /// A place for a new call: a free one, or that of a call waiting on its
    /// client (see the module's documentation). `None` when every call in
    /// flight is being worked on.
    async fn place(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(place) = Arc::clone(&self.places).try_acquire_owned() {
            return Some(place);
        }
        if self.receiving.close_oldest() {
            self.log(ENDING);
        } else if self.sending.close_oldest() {
            self.log("closing connections whose answers were not read, to make room");
        } else {
            return None;
        }
        let displaced = Arc::clone(&self.places).acquire_owned();
        tokio::time::timeout(DISPLACE_WAIT, displaced)
            .await
            .ok()?
            .ok()
    }

    /// Logs, once per interval with the count meanwhile, that calls are
    /// refused.
    fn log(&self, what: &'static str) {
        if let Some(unlogged) = self.quiet.should_log(what, Instant::now()) {
            tracing::warn!(
                limit = self.limit,
                since_last_line = unlogged + 1,
                "at the limit of calls in flight (--max-concurrent-calls): {what}"
            );
        }
    }

    /// A call refused, counted: RESOURCE_EXHAUSTED saying the limit, then
    /// `why`, whose `call answered` line is limited like the budget's own
    /// line for `cause` ([`Quieted`]).
    fn refuse(&self, cause: &str, why: &str) -> http::Response<tonic::body::Body> {
        self.shed.inc();
        let limit = self.limit;
        let message = format!(
            "discount is at its limit of {limit} calls in flight (--max-concurrent-calls){why}"
        );
        let mut answer = tonic::Status::resource_exhausted(message).into_http();
        answer
            .extensions_mut()
            .insert(Quieted(format!("shed: {cause}")));
        answer
    }
}

impl<S> Layer<S> for CallBudget {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }
}

/// A service whose calls are taken only within the [`CallBudget`].
#[derive(Debug, Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: CallBudget,
}

impl<S> Service<http::Request<tonic::body::Body>> for Budgeted<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The inner service was made ready for this call; the clone takes
        // its place, as tower's documentation advises.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = self.budget.clone();
        Box::pin(async move {
            let Some(place) = budget.place().await else {
                const REFUSING: &str = "refusing calls with RESOURCE_EXHAUSTED";
                budget.log(REFUSING);
                return Ok(budget.refuse(REFUSING, "; try again shortly"));
            };
            let displaced = CancellationToken::new();
            let connection = request.extensions().get::<ConnectionHandle>().cloned();
            // The connection is busy for as long as the call holds its
            // place (see [`common::serve::activity`]).
            let busy = connection.as_ref().map(ConnectionHandle::begin);
            let request = request.map(|body| {
                let receiving = Receiving(budget.receiving.register_as(&displaced));
                tonic::body::Body::new(Watched::new(body, receiving))
            });
            let response = tokio::select! {
                response = inner.call(request) => response?,
                () = displaced.cancelled() => {
                    const WHY: &str = " and this call's request message had not arrived; it was ended to make room";
                    return Ok(budget.refuse(ENDING, WHY));
                }
            };
            // The place is given back, and the connection leaves the
            // unread answers, when the answer's body is done with (sent,
            // or dropped with the connection).
            let unread = connection.map(|connection| connection.register_in(&budget.sending));
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _held = (&place, &unread, &busy);
                    frame
                }))
            }))
        })
    }
}

/// A request that counts as "still receiving" in the budget's tracker
/// until its body ends.
struct Receiving(Registration);

impl Watcher for Receiving {
    const END_STREAM_ENDS: bool = true;

    /// Leaves the tracker.
    fn on_end(self, _: End<'_>) {
        drop(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A service that answers with a one-byte body (an empty body would be
    /// done with at once), after reading the request to its end; with the
    /// header `stall` it never reads the request nor answers, as a call
    /// whose message never comes.
    #[derive(Clone)]
    struct Script;

    impl Service<http::Request<tonic::body::Body>> for Script {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                if request.headers().contains_key("stall") {
                    // Holds the request, unread, for ever.
                    std::future::pending::<()>().await;
                }
                let _ = request.into_body().collect().await;
                let body = http_body_util::Full::new(bytes::Bytes::from_static(b"x"));
                Ok(http::Response::new(tonic::body::Body::new(body)))
            })
        }
    }

    fn request(stall: bool) -> http::Request<tonic::body::Body> {
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"message"));
        let mut request = http::Request::new(tonic::body::Body::new(body));
        if stall {
            request
                .headers_mut()
                .insert("stall", http::HeaderValue::from_static("1"));
        }
        request
    }

    /// The gRPC status of an answer and its message (`None`: no status, a
    /// normal answer whose status would come in its trailers).
    fn status(response: &http::Response<tonic::body::Body>) -> Option<(tonic::Code, String)> {
        tonic::Status::from_header_map(response.headers())
            .map(|s| (s.code(), s.message().to_owned()))
    }

    fn shed() -> prometheus::IntCounter {
        prometheus::IntCounter::new("shed", "calls shed").unwrap()
    }

    async fn call(
        service: &mut Budgeted<Script>,
        stall: bool,
    ) -> http::Response<tonic::body::Body> {
        match service.ready().await {
            Ok(ready) => match ready.call(request(stall)).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn when_every_call_has_its_request_newcomers_are_refused_until_a_place_is_free() {
        let mut service = CallBudget::new(2, &shed()).layer(Script);
        // Two answers not yet sent hold both places.
        let mut held = vec![
            call(&mut service, false).await,
            call(&mut service, false).await,
        ];
        assert_eq!(status(&held[0]), None);
        let refused = call(&mut service, false).await;
        let (code, message) = status(&refused).unwrap_or((tonic::Code::Ok, String::new()));
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(message.contains("--max-concurrent-calls"), "{message}");

        // An answer done with gives its place back.
        drop(held.pop());
        assert_eq!(status(&call(&mut service, false).await), None);
    }

    #[tokio::test]
    async fn a_call_still_waiting_for_its_request_makes_room_for_a_newcomer() {
        let service = CallBudget::new(2, &shed()).layer(Script);
        let stalled: Vec<_> = (0..2)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move { call(&mut service, true).await })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;

        // The newcomer is served; the oldest stalled call is ended for it.
        let mut newcomer = service.clone();
        assert_eq!(status(&call(&mut newcomer, false).await), None);
        let mut ended = 0;
        for call in stalled {
            if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(200), call).await {
                let (code, message) = status(&answer).unwrap_or((tonic::Code::Ok, String::new()));
                assert_eq!(code, tonic::Code::ResourceExhausted);
                assert!(message.contains("had not arrived"), "{message}");
                ended += 1;
            }
        }
        assert_eq!(ended, 1, "one stalled call makes room, the other waits on");
    }
}
