//! The tower layer that checks each call against the allow-list, and the
//! PERMISSION_DENIED answer (and its log line) for those it refuses.
//!
//! Not a tonic interceptor: that runs behind the router and sees no path, so an unknown path or another
//! spelling would get UNIMPLEMENTED, not PERMISSION_DENIED, and a refusal could name no method nor carry [`Quieted`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use common::identity::{PeerIdentity, shown};
use common::quiet::Quiet;
use common::telemetry::Untrusted;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::Allowed;
use crate::metrics::{Quieted, Refusals};

/// The services any client the TLS layer let in may call. Everything else
/// (`ecommerce.Discount`, and any path that names no known service) needs
/// an allowed identity: deny by default, so no spelling of a path that the
/// router might still match gets around the list.
const OPEN: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The allow-list, or none when there is no identity to check
/// (`--client-auth none`, plaintext).
#[derive(Debug, Clone)]
pub struct Authorize {
    allowed: Option<Arc<[Allowed]>>,
    quiet: Arc<Quiet>,
    refusals: Option<Refusals>,
}

impl Authorize {
    /// Checks calls against `allowed`.
    pub fn allowing(allowed: &[Allowed]) -> Self {
        Self {
            allowed: Some(allowed.into()),
            quiet: Arc::new(Quiet::default()),
            refusals: None,
        }
    }

    /// Also counts each refusal, by identity, in `refusals`.
    #[must_use]
    pub(crate) fn counted(mut self, refusals: Refusals) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// Checks nothing.
    pub fn off() -> Self {
        Self {
            allowed: None,
            quiet: Arc::new(Quiet::default()),
            refusals: None,
        }
    }

    /// Whether `identity` may call `ecommerce.Discount`.
    pub fn admits(&self, identity: &PeerIdentity) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|entry| entry.admits(identity)))
    }

    /// The refusal of a call to `method` by `identity` from `peer`, logged.
    fn refuse(
        &self,
        identity: &PeerIdentity,
        method: &str,
        peer: Option<SocketAddr>,
    ) -> http::Response<tonic::body::Body> {
        let message = match identity {
            PeerIdentity::Uri(uri) => {
                // At most a couple of hundred characters of it: the
                // answer's size must not be the certificate's choice.
                let uri = shown(uri);
                format!(
                    "the client identity {uri} may not call {method}; to let it in, add {uri} to discount's allow-list, keeping the entries already there (--allow-client, repeated, or DISCOUNT_ALLOW_CLIENTS, comma-separated; the flag replaces the default)"
                )
            }
            PeerIdentity::Anonymous => format!(
                "{method} needs a client certificate with an allowed identity and none was presented; present one, or let anonymous clients in with --allow-client any on discount"
            ),
            other => format!(
                "the client presented {other}, so it may not call {method}; issue its certificate with one URI subjectAltName such as spiffe://ecommerce.local/<workload> and add that to discount's allow-list (--allow-client)"
            ),
        };
        let key = match identity {
            PeerIdentity::Uri(uri) => shown(uri),
            other => other.to_string(),
        };
        if let Some(refusals) = &self.refusals {
            refusals.refused(&key);
        }
        if let Some(unlogged) = self.quiet.should_log(&key, Instant::now()) {
            let peer = peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string());
            // Escaped: the identity comes from a certificate, and
            // must not forge log lines.
            tracing::warn!(%peer, identity = %Untrusted(&key), method, unlogged,
                "call refused by the allow-list (--allow-client)");
        }
        let mut refusal = tonic::Status::permission_denied(message).into_http();
        refusal
            .extensions_mut()
            .insert(Quieted(format!("refused {key}")));
        refusal
    }
}

impl<S> Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            authorize: self.clone(),
        }
    }
}

/// A service whose `ecommerce.Discount` calls are checked by [`Authorize`].
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    authorize: Authorize,
}

impl<S> Service<http::Request<tonic::body::Body>> for Authorized<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
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
        let path = request.uri().path();
        let open = OPEN.iter().any(|service| path.starts_with(service));
        if self.authorize.allowed.is_some() && !open {
            let anonymous = PeerIdentity::Anonymous;
            let identity = request
                .extensions()
                .get::<Arc<PeerIdentity>>()
                .map_or(&anonymous, AsRef::as_ref);
            if !self.authorize.admits(identity) {
                let peer = request
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|info| info.remote_addr())
                    .or_else(|| {
                        request
                            .extensions()
                            .get::<tonic::transport::server::TlsConnectInfo<
                                tonic::transport::server::TcpConnectInfo,
                            >>()
                            .and_then(|info| info.get_ref().remote_addr())
                    });
                // The path as the client sent it, bounded: it goes into
                // the answer and the log.
                let method: String = path.get(1..).unwrap_or(path).chars().take(128).collect();
                let refusal = self.authorize.refuse(identity, &method, peer);
                return Box::pin(std::future::ready(Ok(refusal)));
            }
        }
        Box::pin(self.inner.call(request))
    }
}
