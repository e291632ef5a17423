//! The one wrapper of a tonic body the layers share: it tells a watcher,
//! once, how the body ended, whether it ran to its end, failed or was
//! dropped (the call budget frees a place, the call counter reads the code).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http;

/// How a [`Watched`] body ended.
#[derive(Debug)]
pub(crate) enum End<'a> {
    /// It yielded its trailers.
    Trailers(&'a http::HeaderMap),
    /// It yielded an error.
    Failed,
    /// It ended without trailers, or, for a watcher whose
    /// [`Watcher::END_STREAM_ENDS`], said it was at its end.
    Finished,
    /// It was dropped before any of these.
    Dropped,
}

/// What is told of a [`Watched`] body's end.
pub(crate) trait Watcher {
    /// Whether the body saying it is at its end (`is_end_stream`) after a
    /// poll is its end, with no frame left to poll: a request's last data
    /// frame may end it. An answer's status, though, comes in its trailers.
    const END_STREAM_ENDS: bool;

    /// The body ended as `end` says.
    fn on_end(self, end: End<'_>);
}

/// A tonic body, passed on as it is, whose [`Watcher`] is told how it
/// ended.
pub(crate) struct Watched<W: Watcher> {
    body: tonic::body::Body,
    watcher: Option<W>,
}

impl<W: Watcher> Watched<W> {
    /// `body`, watched by `watcher`.
    pub(crate) fn new(body: tonic::body::Body, watcher: W) -> Self {
        Self {
            body,
            watcher: Some(watcher),
        }
    }

    /// Tells the watcher, if it has not been told yet.
    fn end(&mut self, end: End<'_>) {
        if let Some(watcher) = self.watcher.take() {
            watcher.on_end(end);
        }
    }
}

impl<W: Watcher + Unpin> Body for Watched<W> {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(End::Trailers),
            Poll::Ready(Some(Err(_))) => Some(End::Failed),
            Poll::Ready(None) => Some(End::Finished),
            Poll::Pending => None,
        };
        let end = match end {
            None if W::END_STREAM_ENDS && self.body.is_end_stream() => Some(End::Finished),
            end => end,
        };
        if let Some(end) = end {
            self.end(end);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<W: Watcher> Drop for Watched<W> {
    fn drop(&mut self) {
        self.end(End::Dropped);
    }
}
