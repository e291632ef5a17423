//! How a discount replica is dialled: the endpoint settings of its HTTP/2
//! connection (timeouts, keepalive, what a cancelled call leaves behind)
//! and the TLS material of one generation, remade on every reload.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Endpoint;

use super::DiscountSettings;
use crate::error::StartupError;
use crate::metrics::ClientMetrics;
use crate::tls::ClientTls;

/// How many cancelled calls a connection remembers (for a second), so
/// that answers crossing the cancel are dropped quietly: four times
/// discount's default stream limit a connection.
const CANCELLED_STREAMS_REMEMBERED: usize = 1024;

/// What every replica's endpoint is made from: one generation of the TLS
/// material and the connection settings.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    pub(crate) scheme: &'static str,
    pub(crate) tls: Option<ClientTls>,
    pub(crate) connect_timeout: Duration,
    /// The health check period, also the HTTP/2 keepalive ping period and
    /// its timeout.
    pub(crate) health_interval: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) dial_per_request: bool,
    /// Where the replicas' calls and ejections are counted.
    pub(crate) metrics: ClientMetrics,
}

impl Dialer {
    /// The endpoint of the replica at `addr`.
    pub(super) fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, StartupError> {
        let uri = format!("{}://{addr}", self.scheme);
        let failed = |error| StartupError::Endpoint {
            addr: addr.to_string(),
            error,
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(failed)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A replica that stops answering (frozen, cut off by the
            // network) is noticed within two periods even with calls in
            // flight, whose connection is then closed and retried
            // elsewhere. No pings on an idle connection: peers such as
            // grpcio count those as abuse and close the connection.
            .http2_keep_alive_interval(self.health_interval)
            .keep_alive_timeout(self.health_interval)
            // A call past its deadline is cancelled (RST_STREAM) while
            // discount's answer may already be on the wire. h2 remembers
            // only the last 50 streams it cancelled, answers a frame for
            // an older one with a reset of its own and counts it, and at
            // 1,024 such resets in the connection's life tears the
            // connection down itself (GOAWAY ENHANCE_YOUR_CALM), failing
            // every call on it: a `/products` flood with expiring
            // deadlines did that. So remember more, and drop the lifetime
            // cap, which never counts down and guards against a peer we
            // authenticated.
            .http2_max_concurrent_reset_streams(CANCELLED_STREAMS_REMEMBERED)
            .http2_max_local_error_reset_streams(None);
        match &self.tls {
            Some(tls) => tls.apply(endpoint).map_err(failed),
            None => Ok(endpoint),
        }
    }
}

impl Dialer {
    /// One generation of the connection set-up: the TLS material as it is
    /// now ([`crate::tls::Security::client_tls`] reads and checks it). Runs at start
    /// and on every reload.
    pub(super) fn new(
        settings: &DiscountSettings,
        metrics: &ClientMetrics,
    ) -> Result<Self, StartupError> {
        Ok(Self {
            scheme: settings.security.scheme(),
            tls: settings.security.client_tls(
                &settings.server_name,
                settings.connect_timeout,
                &metrics.certificates,
            )?,
            metrics: metrics.clone(),
            connect_timeout: settings.connect_timeout,
            health_interval: settings.health_interval,
            backoff: (settings.backoff_min, settings.backoff_max),
            dial_per_request: settings.dial_per_request,
        })
    }
}
