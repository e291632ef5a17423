//! What a call is told of its connection: the details the accept loop and
//! the TLS handshake gathered, put where tonic and the layers look for them.

use common::serve::connect_info::TrackedInfo;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::authz::AuthenticatedInfo;

/// Moves what tonic was told about a call's connection ([`TrackedInfo`],
/// from [`Tracked`]) apart: the stream's own details go where tonic's
/// accessors (`Request::remote_addr`, the peer's certificates) look for
/// them, the client's identity where [`Authorize`] looks for it, and the
/// connection's [`common::serve::connect_info::Closer`] and
/// [`common::serve::activity::Activity`] beside them, for [`CallBudget`].
///
/// [`Tracked`]: common::serve::connections::Tracked
/// [`Authorize`]: crate::authz::Authorize
/// [`CallBudget`]: crate::shed::CallBudget
pub(super) fn expose_peer(
    mut request: http::Request<tonic::body::Body>,
) -> http::Request<tonic::body::Body> {
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
