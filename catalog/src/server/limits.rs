//! The bounds on each connection's requests (head size and count, HTTP/2
//! windows, send buffer, pings), so that no client can make the server hold
//! more than these, and the hyper builder that applies them.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::ServeOptions;

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

/// The most of one answer h2 buffers for sending, beyond what the socket
/// has taken: one piece of a large answer (`unsent.rs`). At 64 KiB, clients
/// with huge windows that never read their socket let h2 hold 64 KiB a
/// stream: 50 such connections of 32 pages took a debug build from 29 to
/// 114 MiB, at 16 KiB to 69. hyper's default is about 400 KiB.
const H2_SEND_BUFFER: usize = 16 * 1024;

/// How often an HTTP/2 connection is pinged, to find peers that vanished
/// without closing it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The hyper connection builder for HTTP/1.1 and h2c, holding every
/// connection to these limits and to `options`' header timeout and stream
/// limit.
pub(super) fn builder(options: ServeOptions) -> auto::Builder<TokioExecutor> {
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
    http
}
