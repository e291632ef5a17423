//! What tonic's server learns of a tracked connection: tonic spawns each
//! connection's task itself, so the peer's details and the way to close the
//! connection reach its handlers only through `Connected::connect_info`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::connections::{ConnectionTracker, Registration, Tracked};

/// Lets tonic see the peer address (and TLS details) of a tracked stream,
/// and the handlers close its connection.
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Tracked<T> {
    type ConnectInfo = TrackedInfo<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        TrackedInfo {
            info: self.io.connect_info(),
            closer: Closer(self.registration.token.clone()),
            activity: self.activity.clone(),
        }
    }
}

/// What tonic puts in each request's extensions for a tracked connection:
/// what the stream inside says of itself (tonic's own `TcpConnectInfo` or
/// `TlsConnectInfo`, which `Request::remote_addr` looks for, so move it
/// out to its own extension), and the [`Closer`] of the connection.
#[derive(Debug, Clone)]
pub struct TrackedInfo<I> {
    /// The stream's own connection details.
    pub info: I,
    /// Closes the connection.
    pub closer: Closer,
    /// Counts its requests, if it is watched
    /// ([`Registration::wrap_watched`]).
    pub activity: Option<Arc<Activity>>,
}

/// Closes one tracked connection from outside, as its tracker would.
#[derive(Debug, Clone)]
pub struct Closer(CancellationToken);

impl Closer {
    /// Adds the connection to `tracker` too (for as long as the returned
    /// registration lives), so that the tracker can pick it to close.
    pub fn register_in(&self, tracker: &ConnectionTracker) -> Registration {
        tracker.register_as(&self.0)
    }
}
