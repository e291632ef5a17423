//! The bounds on each HTTP/2 connection, and the hyper settings that hold
//! a connection to them whatever the client sends.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// How many streams the server may reset on one connection for the
/// client's protocol errors (opening streams past the limit, for one)
/// before it closes the connection: hyper's own default, set explicitly.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

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

impl Http2Limits {
    /// The hyper builder that holds every connection to these limits:
    /// HTTP/2 only, as tonic's server is, with tonic's server settings.
    pub(super) fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut http = auto::Builder::new(TokioExecutor::new()).http2_only();
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .max_header_list_size(self.max_header_list_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            // hyper's own default, set explicitly: with none, a client
            // provoking resets for protocol errors is never cut off
            // (RUSTSEC-2024-0003); past it the client gets a GOAWAY.
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_pending_accept_reset_streams(Some(self.max_pending_resets));
        http
    }
}
