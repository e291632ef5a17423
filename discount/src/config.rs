//! The discount command line and what it turns into.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::doctor::{self, Report, Role};
use common::reload::Reloadable;
use common::tls::{self, PemFile, PemSource};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::error::StartupError;
use crate::server::{ServerOptions, Transport};

/// `discount [PORT]`: the Discount gRPC service over TLS.
///
/// Every option can also be set through the environment variable shown in
/// `--help`; a flag wins over its variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "discount", version, about, long_about = None)]
pub struct Config {
    /// Port to listen on. The seed took it as its only argument and defaulted
    /// to 443; 11443 is the port the catalog dials by default and needs no
    /// privileges.
    #[arg(env = "DISCOUNT_PORT", default_value_t = 11443)]
    pub port: u16,

    /// Address to listen on. `::` accepts IPv6 and IPv4 clients on every
    /// interface; `127.0.0.1` keeps the service to this machine.
    #[arg(long, env = "DISCOUNT_LISTEN_ADDR", default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// PEM file with the server certificate, followed by any intermediates.
    /// Its subjectAltName must cover the host name clients dial.
    #[arg(long, env = "DISCOUNT_CERT", default_value = "keys/cert.pem")]
    pub cert: PathBuf,

    /// PEM file with the private key of `--cert`.
    #[arg(long, env = "DISCOUNT_KEY", default_value = "keys/private.key")]
    pub key: PathBuf,

    /// Which clients may call: `required` (mutual TLS: a certificate signed
    /// by `--client-ca`), `optional` (clients without a certificate too), or
    /// `none` (anyone who can reach the port, as in the seed).
    #[arg(long, env = "DISCOUNT_CLIENT_AUTH", value_enum, default_value_t = ClientAuth::Required)]
    pub client_auth: ClientAuth,

    /// PEM file with the CA certificate(s) that sign client certificates.
    #[arg(long, env = "DISCOUNT_CLIENT_CA", default_value = "keys/ca.pem")]
    pub client_ca: PathBuf,

    /// A host name or address clients dial; the certificate doctor checks
    /// that `--cert` covers it. Repeat for several. Without it, the doctor
    /// only warns when `localhost` is not covered.
    #[arg(
        long = "server-name",
        env = "DISCOUNT_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,

    /// Check the TLS material (files, dates, names, key pairs, purposes),
    /// print what is wrong and how to fix it, and exit: 0 when it can be
    /// used, 1 otherwise. Nothing is served.
    #[arg(long)]
    pub check_certs: bool,

    /// Serve gRPC in plaintext, with no TLS at all. Only for running behind
    /// a service mesh (Linkerd, Istio) whose sidecar does mutual TLS; on any
    /// other network it exposes every call.
    #[arg(long, env = "DISCOUNT_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// How long a client may take to finish the TLS handshake before the
    /// connection is closed, so stalled or half-open clients cannot pile up.
    #[arg(long, env = "DISCOUNT_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long to keep serving with health reporting
    /// NOT_SERVING before refusing new calls. Behind a load balancer or a
    /// health-checking client, set it to a little more than their check
    /// interval so no call is sent to a closing server.
    #[arg(long, env = "DISCOUNT_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// Then, how long calls in flight get to finish before the process
    /// closes their connections and exits.
    #[arg(long, env = "DISCOUNT_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// Re-reads the TLS files into the configuration new connections use.
pub type TlsReloader = Reloadable<Arc<ServerConfig>>;

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

impl Config {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_addr, self.port)
    }

    /// The server options these flags describe, with the TLS material read,
    /// and the handle that reloads that material (none in plaintext mode).
    ///
    /// # Errors
    /// As [`Config::server_tls`].
    pub fn server_options(&self) -> Result<(ServerOptions, Option<TlsReloader>), StartupError> {
        let (transport, reloadable) = if self.insecure_plaintext {
            (Transport::Plaintext, None)
        } else {
            let config = self.clone();
            let reloadable = Reloadable::new("discount TLS identity and client CA", move || {
                config.server_tls()
            })?;
            (Transport::Tls(reloadable.subscribe()), Some(reloadable))
        };
        let options = ServerOptions {
            transport,
            handshake_timeout: self.tls_handshake_timeout,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
        };
        Ok((options, reloadable))
    }

    /// What the certificate doctor finds in `--cert`, `--key` and (unless
    /// client authentication is off) `--client-ca`.
    pub fn check_certificates(&self) -> Report {
        let now = SystemTime::now();
        let mut report =
            doctor::check_identity(&self.cert_source(), &self.key_source(), &self.role(), now);
        if self.client_auth != ClientAuth::None {
            report.extend(doctor::check_ca(&self.client_ca_source(), now));
        }
        report
    }

    /// What the doctor expects of `--cert`: a server identity for the names
    /// of `--server-name`, strictly when given, else for `localhost`, with
    /// a warning only.
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

    fn cert_source(&self) -> PemSource {
        PemSource::new(&self.cert, "--cert / DISCOUNT_CERT")
    }

    fn key_source(&self) -> PemSource {
        PemSource::new(&self.key, "--key / DISCOUNT_KEY")
    }

    fn client_ca_source(&self) -> PemSource {
        PemSource::new(&self.client_ca, "--client-ca / DISCOUNT_CLIENT_CA")
    }

    /// Reads `--cert`, `--key` and `--client-ca` once, checks them with the
    /// certificate doctor, and builds the rustls server configuration from
    /// the same bytes. Runs at start and on every reload, so broken
    /// replacement files are refused.
    ///
    /// # Errors
    /// [`StartupError::Pem`] when a file cannot be read,
    /// [`StartupError::Certificates`] with the doctor's findings, or
    /// [`StartupError::Identity`] if rustls still refuses the files.
    pub fn server_tls(&self) -> Result<Arc<ServerConfig>, StartupError> {
        let cert = PemFile::read(&self.cert_source())?;
        let key = PemFile::read(&self.key_source())?;
        let clients = Clients::read(self.client_auth, &self.client_ca_source())?;
        let now = SystemTime::now();
        let mut report = doctor::check_identity_files(&cert, &key, &self.role(), now);
        if let Clients::Verified { ca, .. } = &clients {
            report.extend(doctor::check_ca_file(ca, now));
        }
        report.enforce()?;
        build_server_tls(&cert, &key, &clients)
    }
}

/// Builds the TLS configuration of the gRPC server from files, without the
/// doctor's checks (tests use it to serve deliberately odd material).
///
/// # Errors
/// As [`Config::server_tls`], but for the doctor's findings.
pub fn server_tls(
    cert: &PemSource,
    key: &PemSource,
    client_auth: ClientAuth,
    client_ca: &PemSource,
) -> Result<Arc<ServerConfig>, StartupError> {
    let clients = Clients::read(client_auth, client_ca)?;
    build_server_tls(&PemFile::read(cert)?, &PemFile::read(key)?, &clients)
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
fn build_server_tls(
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
    let builder = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(identity_error)?;
    let builder = match clients {
        Clients::Anyone => builder.with_no_client_auth(),
        Clients::Verified { ca, optional } => {
            let roots = Arc::new(ca.root_store()?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, tls::provider());
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_port_is_the_first_argument_and_defaults_to_what_catalog_dials() {
        let default = Config::try_parse_from(["discount"]).map(|c| c.listen_addr());
        assert_eq!(
            default.ok(),
            Some("[::]:11443".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        let given = Config::try_parse_from(["discount", "12000"]).map(|c| c.port);
        assert_eq!(given.ok(), Some(12000));
        assert!(Config::try_parse_from(["discount", "https"]).is_err());
    }
}
