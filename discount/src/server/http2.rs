//! The bounds on each HTTP/2 connection, and the tonic server settings
//! that hold a connection to them whatever the client sends.

use std::time::Duration;

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
    /// A tonic server builder that holds every connection to these limits.
    pub(super) fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            // tonic ends a call at the smaller of this and the client's
            // grpc-timeout.
            .timeout(self.max_call_duration)
            // Not max_connection_age_grace: in tonic 0.14 setting it replaces
            // the GOAWAY at the age with a hard close at age + grace, failing
            // the calls in flight. Calls end within max_call_duration anyway.
            .max_connection_age(self.max_connection_age)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_header_list_size(self.max_header_list_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            // tonic passes None here by default, which hyper takes as "no
            // limit" on streams the server itself resets for protocol errors
            // (RUSTSEC-2024-0003); a client provoking them gets a GOAWAY.
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_resets))
    }
}
