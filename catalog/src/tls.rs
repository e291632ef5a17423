//! The catalog's side of the TLS hop: whom it trusts to be discount (a
//! certificate from the CA, for the server name, carrying discount's
//! workload identity), the identity it presents, and how one generation of
//! that material is read, checked and put on the connection.
//!
//! [`Security::client_tls`] runs at start and again on every reload (SIGHUP):
//! it reads the files once, checks those bytes with the certificate doctor,
//! and builds the TLS settings of the endpoint from the same bytes, so
//! broken replacement files are refused and the old generation stays in
//! use (see the discount client's `reload`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::doctor::{self, Report, Role, Severity};
use common::identity::{PeerIdentity, parse_uri, trust_domain};
use common::metrics::Certificates;
use common::pem::{PemFile, PemSource};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

use crate::error::StartupError;

/// Parses `--discount-server-name`: a DNS name or an IP address, as
/// rustls will check it against discount's certificate. An empty value
/// (say `DISCOUNT_SERVER_NAME=` left blank in a Compose file) is refused at
/// start rather than failing every connection later.
///
/// # Errors
/// The text is empty or not a name a certificate could carry.
pub fn server_name(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "is empty; give the DNS name (or IP address) discount's certificate carries, such as localhost, or leave the flag out to use the host of --discount-host".to_owned(),
        );
    }
    rustls::pki_types::ServerName::try_from(text)
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not a DNS name or an IP address, such as localhost or discount.internal"))
}

/// The workload identity discount's certificate must carry
/// (`--discount-identity`); `None` (an empty value) skips the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedIdentity(pub Option<String>);

/// Parses `--discount-identity`: a URI, or nothing to turn the check off.
///
/// # Errors
/// The text is neither empty nor a URI.
pub fn expected_identity(text: &str) -> Result<ExpectedIdentity, String> {
    if text.trim().is_empty() {
        Ok(ExpectedIdentity(None))
    } else {
        parse_uri(text).map(|uri| ExpectedIdentity(Some(uri)))
    }
}

/// How the connection to discount is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: discount's certificate is checked against `ca`, and the
    /// catalog presents `client_cert` with `client_key`.
    MutualTls {
        /// The CA certificates that may sign discount's certificate. Only
        /// these: the system's roots are not trusted.
        ca: PemSource,
        /// The catalog's certificate chain.
        client_cert: PemSource,
        /// Its private key.
        client_key: PemSource,
        /// The workload identity discount's certificate must carry.
        identity: ExpectedIdentity,
    },
    /// No TLS. Only behind a service mesh that secures connections itself.
    Plaintext,
}

impl Security {
    /// The URI scheme to dial with.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::MutualTls { .. } => "https",
            Self::Plaintext => "http",
        }
    }

    /// What the certificate doctor finds in the CA and the client identity
    /// (nothing to check in plaintext mode).
    pub fn check_certificates(&self) -> Report {
        match self {
            Self::Plaintext => Report::default(),
            Self::MutualTls {
                ca,
                client_cert,
                client_key,
                identity,
            } => {
                let now = SystemTime::now();
                let mut report = doctor::check_ca(ca, now);
                report.extend(doctor::check_identity(
                    client_cert,
                    client_key,
                    &Role::Client,
                    now,
                ));
                if let Ok(cert) = PemFile::read(client_cert) {
                    report.extend(check_discount_identity(identity, ca, &cert));
                }
                report
            }
        }
    }

    /// One generation of this security, for every replica's endpoint: for
    /// mutual TLS the files read once and checked, discount's certificate
    /// to be verified against the CA and `server_name` (whatever address is
    /// dialled), the client identity to present, and the handshake bounded
    /// by `handshake_timeout`. `None` in plaintext. The files' expiry is
    /// noted in `expiry` once they are accepted.
    ///
    /// # Errors
    /// A file cannot be read, the doctor found errors, or rustls refused
    /// the CA.
    pub fn client_tls(
        &self,
        server_name: &str,
        handshake_timeout: Duration,
        expiry: &Certificates,
    ) -> Result<Option<ClientTls>, StartupError> {
        let Self::MutualTls {
            ca,
            client_cert,
            client_key,
            identity,
        } = self
        else {
            return Ok(None);
        };
        let (ca, cert, key) = (
            PemFile::read(ca)?,
            PemFile::read(client_cert)?,
            PemFile::read(client_key)?,
        );
        let now = SystemTime::now();
        let mut report = doctor::check_ca_file(&ca, now);
        report.extend(doctor::check_identity_files(
            &cert,
            &key,
            &Role::Client,
            now,
        ));
        report.extend(check_discount_identity(identity, ca.source(), &cert));
        report.enforce()?;
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca.root_store()?),
            common::crypto::provider(),
        )
        .build()
        .map_err(|error| StartupError::Trust {
            ca: ca.source().path.display().to_string(),
            error,
        })?;
        let verifier = Arc::new(DiscountVerifier {
            webpki,
            identity: identity.0.clone(),
        });
        expiry.record("server-ca", &ca);
        expiry.record("client", &cert);
        let config = ClientTlsConfig::new()
            .domain_name(server_name.to_owned())
            .identity(Identity::from_pem(cert.bytes(), key.bytes()))
            .timeout(handshake_timeout);
        Ok(Some(ClientTls { config, verifier }))
    }
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn a_server_name_must_be_a_name_or_an_address() {
        assert_eq!(
            server_name(" discount.internal ").as_deref(),
            Ok("discount.internal")
        );
        assert_eq!(server_name("10.0.0.5").as_deref(), Ok("10.0.0.5"));
        for bad in ["", "  ", "not a name!"] {
            assert!(server_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}

/// What the certificate doctor says of `--discount-identity`: the identity
/// expected, or a warning that none is; a warning when it is outside the
/// trust domain of the catalog's own certificate `client_cert` (keys made
/// with another `--trust-domain`); and, in the development layout
/// (discount's `cert.pem` beside the CA), whether that certificate carries
/// it.
fn check_discount_identity(
    expected: &ExpectedIdentity,
    ca: &PemSource,
    client_cert: &PemFile,
) -> Report {
    let mut report = Report::default();
    // Findings about the flag, not a file: named after it.
    let flag = PemSource::new(
        "--discount-identity",
        "--discount-identity / CATALOG_DISCOUNT_IDENTITY",
    );
    let Some(expected) = &expected.0 else {
        report.add(
            Severity::Warning,
            &flag,
            "empty: any server certificate from --discount-ca valid for the name dialled is taken for discount, whatever workload it belongs to",
        );
        return report;
    };
    report.add(
        Severity::Info,
        &flag,
        format!("discount's certificate must carry {expected}"),
    );
    let own = PeerIdentity::of_chain(client_cert.certificates().ok().as_deref());
    if let (Some(own_domain), Some(expected_domain)) =
        (own.uri().and_then(trust_domain), trust_domain(expected))
        && own_domain != expected_domain
    {
        report.add(
            Severity::Warning,
            &flag,
            format!(
                "{expected} is outside the catalog's own trust domain {own_domain} (its certificate carries {own}); with keys from scripts/gen-keys.sh --trust-domain, set --discount-identity {own_domain}discount"
            ),
        );
    }
    let sibling = ca.path.parent().map(|dir| {
        PemSource::new(
            dir.join("cert.pem"),
            "discount's certificate beside --discount-ca",
        )
    });
    if let Some(file) = sibling.and_then(|source| PemFile::read(&source).ok()) {
        let carried = PeerIdentity::of_chain(file.certificates().ok().as_deref());
        if carried.uri() != Some(expected.as_str()) {
            report.add(
                Severity::Warning,
                file.source(),
                format!(
                    "discount's certificate beside --discount-ca presents {carried}, not {expected}: the catalog will refuse it; set --discount-identity to what it carries"
                ),
            );
        }
    }
    report
}

/// The TLS settings of one generation, put on each replica's endpoint.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
    verifier: Arc<DiscountVerifier>,
}

impl ClientTls {
    /// `endpoint`, secured.
    ///
    /// # Errors
    /// tonic refused the settings (it checks nothing more than we did).
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config_with_verifier(self.config.clone(), self.verifier.clone())
    }
}

/// Verifies discount's certificate as rustls' WebPKI verifier does (chain
/// to the CA, name, dates, purpose), then that it carries the workload
/// identity the catalog expects: a certificate from the same CA for
/// another workload is not discount.
#[derive(Debug)]
pub struct DiscountVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// `--discount-identity`; `None` when empty.
    identity: Option<String>,
}

/// Why discount's certificate was refused though the CA signed it.
///
/// rustls shows the error inside its own with `Debug`, so `Debug` says
/// the same as `Display`: the log then reads as a sentence.
#[derive(thiserror::Error)]
#[error(
    "discount's certificate carries {found}, not the identity {expected} the catalog expects (--discount-identity); set --discount-identity to the identity discount's certificate carries (with scripts/gen-keys.sh --trust-domain TD, spiffe://TD/discount), or issue discount's certificate with {expected} as its URI subjectAltName"
)]
struct NotDiscount {
    found: PeerIdentity,
    expected: String,
}

impl std::fmt::Debug for NotDiscount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for DiscountVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let Some(expected) = &self.identity else {
            return Ok(verified);
        };
        let found = PeerIdentity::of_certificate(end_entity);
        if found.uri() == Some(expected.as_str()) {
            Ok(verified)
        } else {
            let refused = NotDiscount {
                found,
                expected: expected.clone(),
            };
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(refused)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
