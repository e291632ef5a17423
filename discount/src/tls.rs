//! discount's side of the TLS hop: who it is, which clients it lets in, how
//! that is reloaded, and the handshake itself.
//!
//! - [`ServerTls`] names the files (`--cert`, `--key`, `--client-ca`) and the
//!   client-authentication mode; [`ServerTls::load`] reads them once, checks
//!   them with the certificate doctor and builds the rustls configuration
//!   from those same bytes.
//! - [`TlsReloader`] rebuilds that configuration on SIGHUP; [`Transport`]
//!   hands each new connection the configuration current when it arrives,
//!   so connections already open finish on what they started with.
//! - [`handshake`] runs one server-side handshake with a time limit and
//!   logs a refusal with the peer address and rustls' reason.
//!
//! The handshake is done here with rustls rather than by tonic's built-in
//! TLS for three reasons: each handshake runs in its own task with a time
//! limit, so a client that connects and says nothing ties up neither the
//! accept loop nor memory for long; a failed handshake (a client without a
//! certificate, or with one from another CA) is logged with the peer
//! address and the reason, which is the first thing anyone asks when "the
//! catalog cannot reach discount"; and each connection takes the
//! configuration current when it arrives, so certificates can be replaced
//! without a restart.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::doctor::{self, Report, Role};
use common::identity::PeerIdentity;
use common::metrics::Certificates;
use common::pem::{PemFile, PemSource};
use common::quiet::Quiet;
use common::reload::Reloadable;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::authz::{Allowed, check_allow_list};
use crate::error::StartupError;
use crate::metrics::{DiscountMetrics, HandshakeRefusal};

/// Which clients discount accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Only clients presenting a certificate signed by `--client-ca`
    /// (mutual TLS). The default.
    Required,
    /// Clients with no certificate too; a certificate that is presented must
    /// still be valid. For migrating clients one at a time.
    Optional,
    /// Anyone who can reach the port and trusts the server certificate, as
    /// in the seed. For peers that cannot present a certificate.
    None,
}

/// The TLS material of the server and how clients are verified.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert: PemSource,
    /// Its private key.
    pub key: PemSource,
    /// Which clients are let in.
    pub client_auth: ClientAuth,
    /// The CA(s) that sign client certificates (unused with
    /// [`ClientAuth::None`]).
    pub client_ca: PemSource,
    /// Names clients dial; the doctor requires `cert` to cover each. Empty:
    /// it only warns when `localhost` is not covered.
    pub server_names: Vec<String>,
    /// The allow-list, which the doctor checks against the identities in
    /// sight ([`crate::authz::check_allow_list`]).
    pub allow_clients: Vec<Allowed>,
}

/// Re-reads the TLS files into the configuration new connections use.
pub type TlsReloader = Reloadable<Arc<ServerConfig>>;

impl ServerTls {
    /// What the certificate doctor finds in the certificate, the key and
    /// (unless client authentication is off) the client CA.
    pub fn check_certificates(&self) -> Report {
        let now = SystemTime::now();
        let mut report = doctor::check_identity(&self.cert, &self.key, &self.role(), now);
        if self.client_auth != ClientAuth::None {
            report.extend(doctor::check_ca(&self.client_ca, now));
            if let Ok(cert) = PemFile::read(&self.cert) {
                report.extend(check_allow_list(
                    &self.allow_clients,
                    &cert,
                    &self.client_ca,
                ));
            }
        }
        report
    }

    /// Reads the files once, checks them with the certificate doctor, and
    /// builds the rustls server configuration from the same bytes, so a file
    /// replaced between a check and a second read cannot be used unchecked.
    /// Runs at start and on every reload, so broken replacement files are
    /// refused.
    ///
    /// # Errors
    /// [`StartupError::Pem`] when a file cannot be read,
    /// [`StartupError::Certificates`] with the doctor's findings, or
    /// [`StartupError::Identity`] / [`StartupError::ClientCa`] if rustls
    /// still refuses the files.
    pub fn load(&self) -> Result<Arc<ServerConfig>, StartupError> {
        self.load_with_identity(&Certificates::default())
            .map(|(config, _)| config)
    }

    /// [`ServerTls::load`], and the workload identity of the certificate
    /// loaded. The files' expiry is noted in `expiry` once they are used.
    fn load_with_identity(
        &self,
        expiry: &Certificates,
    ) -> Result<(Arc<ServerConfig>, PeerIdentity), StartupError> {
        let cert = PemFile::read(&self.cert)?;
        let key = PemFile::read(&self.key)?;
        let clients = Clients::read(self.client_auth, &self.client_ca)?;
        let now = SystemTime::now();
        let mut report = doctor::check_identity_files(&cert, &key, &self.role(), now);
        if let Clients::Verified { ca, .. } = &clients {
            report.extend(doctor::check_ca_file(ca, now));
            report.extend(check_allow_list(
                &self.allow_clients,
                &cert,
                &self.client_ca,
            ));
        }
        report.enforce()?;
        let identity = PeerIdentity::of_chain(cert.certificates().ok().as_deref());
        let config = build(&cert, &key, &clients)?;
        expiry.record("server", &cert);
        if let Clients::Verified { ca, .. } = &clients {
            expiry.record("client-ca", ca);
        }
        Ok((config, identity))
    }

    /// [`ServerTls::load`] now, and again on each
    /// [`Reloadable::reload`], noting the certificates' expiry in `expiry`
    /// each time.
    ///
    /// # Errors
    /// As [`ServerTls::load`]: at start-up a broken file is fatal.
    ///
    /// A reload whose certificate carries another workload identity than
    /// the one before is logged as a warning: clients that check
    /// discount's identity (the catalog's `--discount-identity`) judge it
    /// from their next connection on.
    pub fn reloadable(&self, expiry: &Certificates) -> Result<TlsReloader, StartupError> {
        let (settings, expiry) = (self.clone(), expiry.clone());
        let last = std::sync::Mutex::new(None::<PeerIdentity>);
        Reloadable::new("discount TLS identity and client CA", move || {
            let (config, identity) = settings.load_with_identity(&expiry)?;
            let mut last = last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(before) = last.as_ref().filter(|before| **before != identity) {
                tracing::warn!(
                    cert = %settings.cert.path.display(),
                    "discount's certificate now presents {identity} (it presented {before}): from their next connection, clients that check discount's identity (the catalog's --discount-identity) accept it only if that is the identity they expect"
                );
            }
            *last = Some(identity);
            Ok(config)
        })
    }

    /// What the doctor expects of the certificate: a server identity for
    /// the names of `--server-name`, strictly when given, else for
    /// `localhost`, with a warning only.
    fn role(&self) -> Role {
        Role::Server {
            names: if self.server_names.is_empty() {
                vec!["localhost".to_owned()]
            } else {
                self.server_names.clone()
            },
            strict: !self.server_names.is_empty(),
        }
    }
}

/// How clients are verified: the CA file goes with the modes that need it,
/// so no combination can turn verification off by accident.
enum Clients {
    /// `--client-auth none`.
    Anyone,
    /// `required`, or `optional` (clients without a certificate admitted).
    Verified { ca: PemFile, optional: bool },
}

impl Clients {
    fn read(client_auth: ClientAuth, ca: &PemSource) -> Result<Self, StartupError> {
        Ok(match client_auth {
            ClientAuth::None => Self::Anyone,
            ClientAuth::Required => Self::Verified {
                ca: PemFile::read(ca)?,
                optional: false,
            },
            ClientAuth::Optional => Self::Verified {
                ca: PemFile::read(ca)?,
                optional: true,
            },
        })
    }
}

/// The TLS configuration of the gRPC server: TLS 1.2 and 1.3 with the
/// `ring` provider, clients verified as `clients` says, and ALPN `h2` only,
/// since gRPC runs on HTTP/2 and nothing else may be negotiated on this port.
fn build(
    cert: &PemFile,
    key: &PemFile,
    clients: &Clients,
) -> Result<Arc<ServerConfig>, StartupError> {
    let chain = cert.certificates()?;
    let private_key = key.private_key()?;
    let identity_error = |error: rustls::Error| StartupError::Identity {
        cert: cert.source().path.display().to_string(),
        key: key.source().path.display().to_string(),
        error,
    };
    let provider = common::crypto::provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(identity_error)?;
    let builder = match clients {
        Clients::Anyone => builder.with_no_client_auth(),
        Clients::Verified { ca, optional } => {
            let roots = Arc::new(ca.root_store()?);
            // No CA names in the CertificateRequest. rustls names every CA
            // of --client-ca there by default, and past about 1,000 CAs the
            // message outgrows TLS's 64 KiB limit: every handshake failed
            // (HandshakePayloadTooLarge at the client; a debug build
            // aborted) although the doctor and the reload found nothing
            // wrong. The names only help a client holding several
            // certificates pick one; the catalog, grpcio and the other
            // clients of discount hold one, and send it to an empty list
            // as TLS 1.2 and 1.3 say they may.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .clear_root_hint_subjects();
            let verifier = if *optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|error| StartupError::ClientCa {
                ca: ca.source().path.display().to_string(),
                error,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(identity_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How connections are secured.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS with the configuration current when each connection arrives:
    /// certificate, key, client verification, protocol versions and ALPN.
    Tls(watch::Receiver<Arc<ServerConfig>>),
    /// No TLS. Only behind a service mesh that secures connections itself.
    Plaintext,
}

/// The workload identity of the client of `stream`, from the certificate
/// rustls verified in its handshake ([`PeerIdentity::Anonymous`] when it
/// presented none).
pub(crate) fn client_identity(stream: &TlsStream<TcpStream>) -> PeerIdentity {
    PeerIdentity::of_chain(stream.get_ref().1.peer_certificates())
}

/// Runs one server-side TLS handshake with the configuration `config`,
/// bounded by `limit`. `None` when it failed or timed out, which is logged
/// with the peer and the reason: each reason the first time, then at most
/// every few seconds with a count (`quiet`), because anyone who can reach
/// the port can make handshakes fail.
pub(crate) async fn handshake(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
    limit: Duration,
    quiet: &Quiet,
    metrics: &DiscountMetrics,
) -> Option<TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(config);
    let accepted = tokio::time::timeout(limit, acceptor.accept(tcp)).await;
    match &accepted {
        Ok(Ok(_)) => {}
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {}
        Ok(Err(error)) => metrics.handshake_refused(
            error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(HandshakeRefusal::Other, HandshakeRefusal::of),
        ),
        Err(_) => metrics.handshake_refused(HandshakeRefusal::Timeout),
    }
    match accepted {
        Ok(Ok(stream)) => Some(stream),
        // A TCP connect and close with no TLS at all is what port probes and
        // load balancer checks do: not worth a warning.
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "connection closed before the TLS handshake");
            None
        }
        Ok(Err(error)) => {
            if let Some(unlogged) = quiet.should_log(&error.to_string(), Instant::now()) {
                // An alert from the client means it refused discount's
                // certificate, for a reason only its own log gives.
                let refused_by_client = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|inner| matches!(inner, rustls::Error::AlertReceived(_)));
                if refused_by_client {
                    tracing::warn!(%peer, %error, unlogged,
                        "TLS handshake failed: the client refused discount's certificate (its CA, the name it dialled or the workload identity it expects, such as the catalog's --discount-identity); its log says which");
                } else {
                    tracing::warn!(%peer, %error, unlogged, "TLS handshake failed");
                }
            }
            None
        }
        Err(_) => {
            if let Some(unlogged) = quiet.should_log("timed out", Instant::now()) {
                tracing::warn!(%peer, timeout = ?limit, unlogged, "TLS handshake timed out; closing the connection");
            }
            None
        }
    }
}
