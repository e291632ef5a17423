//! Workload identities: who a certificate says its holder is.
//!
//! "Signed by our CA" says a peer is one of ours, not which one. Following
//! SPIFFE (and Linkerd and Istio, which use it), each workload's certificate
//! carries its identity as a URI subjectAltName, such as
//! `spiffe://ecommerce.local/catalog`: discount authorizes its callers by
//! it, and the catalog checks that the server it reached is discount. The
//! identity is read only from certificates rustls has already verified.

use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The trust domain of the development PKI (`scripts/gen-keys.sh`).
pub const DEV_TRUST_DOMAIN: &str = "ecommerce.local";

/// What a peer's certificate says about who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// Its one URI subjectAltName.
    Uri(String),
    /// A certificate without a URI subjectAltName.
    Missing,
    /// Several URI subjectAltNames: which one is the workload is
    /// ambiguous, so none is (a SPIFFE X.509-SVID carries exactly one).
    Several(Vec<String>),
    /// No certificate at all (`--client-auth optional` or `none`).
    Anonymous,
}

impl PeerIdentity {
    /// The identity in the end-entity certificate `der` of a verified chain.
    /// A certificate that does not parse (rustls accepted it, so this does
    /// not happen) carries no identity.
    pub fn of_certificate(der: &[u8]) -> Self {
        match X509Certificate::from_der(der) {
            Ok((_, certificate)) => Self::of(&certificate),
            Err(_) => Self::Missing,
        }
    }

    /// The identity `certificate` carries.
    pub fn of(certificate: &X509Certificate<'_>) -> Self {
        let mut uris: Vec<String> = match certificate.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        match uris.len() {
            0 => Self::Missing,
            1 => Self::Uri(uris.remove(0)),
            _ => Self::Several(uris),
        }
    }

    /// The identity of the first certificate of `chain`, if any.
    pub fn of_chain<C: AsRef<[u8]>>(chain: Option<&[C]>) -> Self {
        match chain.and_then(<[C]>::first) {
            Some(leaf) => Self::of_certificate(leaf.as_ref()),
            None => Self::Anonymous,
        }
    }

    /// The URI, when there is exactly one.
    pub fn uri(&self) -> Option<&str> {
        match self {
            Self::Uri(uri) => Some(uri),
            _ => None,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uri(uri) => write!(f, "{uri}"),
            Self::Missing => write!(
                f,
                "a certificate that carries no identity (no URI subjectAltName)"
            ),
            Self::Several(uris) => write!(
                f,
                "a certificate with {} URI subjectAltNames ({}), where a workload identity is exactly one",
                uris.len(),
                uris.join(", ")
            ),
            Self::Anonymous => write!(f, "no client certificate"),
        }
    }
}

/// Parses a workload identity given on the command line: a URI with a
/// scheme and an authority (`spiffe://ecommerce.local/catalog`).
///
/// # Errors
/// What is wrong with `text`, with an example.
pub fn parse_uri(text: &str) -> Result<String, String> {
    let text = text.trim();
    let valid = text.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
            && !rest.starts_with('/')
    }) && text.chars().all(|c| c.is_ascii_graphic());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a workload identity; give a URI such as spiffe://{DEV_TRUST_DOMAIN}/catalog"
        ))
    }
}
