//! Who may call what: discount's allow-list of workload identities.
//!
//! TLS authenticates a client (its certificate is signed by
//! `--client-ca`); this authorizes it. Each connection's identity is read
//! once, from the verified client certificate, when its handshake ends
//! ([`Authenticated`]); every call to `ecommerce.Discount` (indeed every
//! call but health and reflection) is then checked against
//! `--allow-client` ([`Authorize`]). Health and reflection stay open to any
//! client the TLS layer let in, so probes and operators need no place on
//! the list.
//!
//! A refusal is `PERMISSION_DENIED` naming the identity presented and the
//! flag that would allow it, never what the list holds, and one log line
//! with the peer, the identity and the method, at most one per identity
//! every few seconds under a flood; the call's `call answered` line
//! follows the same limit ([`Quieted`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::metrics::{Quieted, Refusals};
use common::doctor::{Report, Severity};
use common::identity::{PeerIdentity, parse_prefix, parse_uri, shown, trust_domain};
use common::pem::{PemFile, PemSource};
use common::quiet::Quiet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http;
use tonic::transport::server::Connected;
use tower::{Layer, Service};

/// The services any client the TLS layer let in may call. Everything else
/// (`ecommerce.Discount`, and any path that names no known service) needs
/// an allowed identity: deny by default, so no spelling of a path that the
/// router might still match gets around the list.
const OPEN: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// One entry of `--allow-client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// `any`: every client the TLS layer let in, with a certificate or,
    /// under `--client-auth optional`, without.
    Any,
    /// This identity exactly.
    Exactly(String),
    /// Every identity under this prefix, which ends with `/`: the entry
    /// `spiffe://ecommerce.local/*`, the whole trust domain.
    Under(String),
}

impl Allowed {
    /// Parses one entry: `any`, an identity URI, or a URI prefix ending
    /// in `/*`.
    ///
    /// # Errors
    /// What is wrong with `text`, with the forms that work.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("any") {
            return Ok(Self::Any);
        }
        let forms = "an entry is an identity (spiffe://ecommerce.local/catalog), every identity under a prefix (spiffe://ecommerce.local/*), or any";
        if let Some(prefix) = text.strip_suffix('*') {
            if !prefix.ends_with('/') || prefix.contains('*') {
                return Err(format!(
                    "{text:?}: a * may only stand for everything after the last /; {forms}"
                ));
            }
            let prefix = parse_prefix(prefix).map_err(|e| format!("{e}; {forms}"))?;
            return Ok(Self::Under(prefix));
        }
        if text.contains('*') {
            return Err(format!("{text:?}: a * may only end the entry; {forms}"));
        }
        parse_uri(text)
            .map(Self::Exactly)
            .map_err(|e| format!("{e}; {forms}"))
    }

    /// Whether some identity starting with `prefix` would be admitted.
    fn reaches_into(&self, prefix: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(uri) => uri.starts_with(prefix),
            Self::Under(under) => under.starts_with(prefix) || prefix.starts_with(under.as_str()),
        }
    }

    fn admits(&self, identity: &PeerIdentity) -> bool {
        match (self, identity.uri()) {
            (Self::Any, _) => true,
            (Self::Exactly(allowed), Some(uri)) => uri == allowed,
            (Self::Under(prefix), Some(uri)) => {
                uri.len() > prefix.len() && uri.starts_with(prefix.as_str())
            }
            (_, None) => false,
        }
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => write!(f, "any"),
            Self::Exactly(uri) => write!(f, "{uri}"),
            Self::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// What the certificate doctor says of the allow-list `allowed`, given
/// discount's certificate `cert` and the client CA `client_ca`: a warning
/// when no entry could admit a client of discount's own trust domain, and,
/// in the development layout (the catalog's `client.pem` beside the client
/// CA), whether the catalog's identity is admitted.
pub fn check_allow_list(allowed: &[Allowed], cert: &PemFile, client_ca: &PemSource) -> Report {
    let mut report = Report::default();
    let listed = allowed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // Findings about the flag, not a file: named after it.
    let flag = PemSource::new("--allow-client", "--allow-client / DISCOUNT_ALLOW_CLIENTS");
    if allowed.contains(&Allowed::Any) {
        report.add(
            Severity::Warning,
            &flag,
            "any: every client the TLS layer accepts may call ecommerce.Discount, whatever its identity",
        );
        return report;
    }
    report.add(
        Severity::Info,
        &flag,
        format!("ecommerce.Discount is open to {listed}"),
    );
    let own = cert
        .certificates()
        .ok()
        .map(|chain| PeerIdentity::of_chain(Some(&chain)));
    if let Some(domain) = own
        .as_ref()
        .and_then(PeerIdentity::uri)
        .and_then(trust_domain)
        && !allowed.iter().any(|entry| entry.reaches_into(&domain))
    {
        report.add(
            Severity::Warning,
            cert.source(),
            format!(
                "--allow-client ({listed}) names no identity in discount's own trust domain {domain}: clients with certificates from this PKI are refused; allow one with --allow-client {domain}<workload>"
            ),
        );
    }
    let Some(dir) = client_ca.path.parent() else {
        return report;
    };
    let sibling = PemSource::new(dir.join("client.pem"), "the catalog's client certificate");
    let Ok(file) = PemFile::read(&sibling) else {
        return report;
    };
    let identity = PeerIdentity::of_chain(file.certificates().ok().as_deref());
    if allowed.iter().any(|entry| entry.admits(&identity)) {
        report.add(
            Severity::Info,
            &sibling,
            format!(
                "the catalog's certificate beside --client-ca, {identity}, is on the allow-list"
            ),
        );
    } else {
        report.add(
            Severity::Warning,
            &sibling,
            format!(
                "the catalog's certificate beside --client-ca presents {identity}, which --allow-client ({listed}) does not admit: discount will refuse its calls"
            ),
        );
    }
    report
}

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
            // Debug formatting: the identity comes from a certificate, and
            // must not forge log lines.
            tracing::warn!(%peer, identity = ?key, method, unlogged,
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

/// A connection whose TLS handshake is done, with the identity its client
/// certificate carries, read once for all its calls.
#[derive(Debug)]
pub struct Authenticated<IO> {
    io: IO,
    identity: Arc<PeerIdentity>,
}

impl<IO> Authenticated<IO> {
    /// `io`, whose client presented `identity`.
    pub fn new(io: IO, identity: PeerIdentity) -> Self {
        Self {
            io,
            identity: Arc::new(identity),
        }
    }
}

/// What tonic is told of an [`Authenticated`] connection: what the stream
/// inside says, and the identity (moved into each request's extensions by
/// `server::expose_peer`).
#[derive(Debug, Clone)]
pub struct AuthenticatedInfo<I> {
    /// The inner stream's own information (`TlsConnectInfo`).
    pub info: I,
    /// The client's identity.
    pub identity: Arc<PeerIdentity>,
}

impl<IO: Connected> Connected for Authenticated<IO> {
    type ConnectInfo = AuthenticatedInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        AuthenticatedInfo {
            info: self.io.connect_info(),
            identity: Arc::clone(&self.identity),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Authenticated<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Authenticated<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
