//! Workload identities: who a certificate says its holder is.
//!
//! "Signed by our CA" says a peer is one of ours, not which one. Following
//! SPIFFE (and Linkerd and Istio, which use it), each workload's certificate
//! carries its identity as a URI subjectAltName, such as
//! `spiffe://ecommerce.local/catalog`: discount authorizes its callers by
//! it, and the catalog checks that the server it reached is discount. The
//! identity is read only from certificates rustls has already verified, and
//! held to the SPIFFE ID rules (length, characters, no `.` or `..`
//! segments), so a prefix entry cannot admit a path that only looks like
//! it is under the prefix, and no identity can forge a log line or swell
//! an answer.

use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The trust domain of the development PKI (`scripts/gen-keys.sh`).
pub const DEV_TRUST_DOMAIN: &str = "ecommerce.local";

/// The longest identity taken: the SPIFFE limit for a SPIFFE ID.
const MAX_LEN: usize = 2048;

/// How much of a text from a certificate is shown in answers and logs.
const SHOWN: usize = 200;

/// What a peer's certificate says about who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// Its one URI subjectAltName.
    Uri(String),
    /// A certificate without a URI subjectAltName.
    Missing,
    /// Several URI subjectAltNames: which one is the workload is
    /// ambiguous, so none is (a SPIFFE X.509-SVID carries exactly one).
    /// How many, and the first few as [`shown`].
    Several(usize, Vec<String>),
    /// One URI that is not a usable identity: as [`shown`], and why.
    Malformed(String, &'static str),
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
            1 => {
                let uri = uris.remove(0);
                match check(&uri) {
                    Ok(()) => Self::Uri(uri),
                    Err(why) => Self::Malformed(shown(&uri), why),
                }
            }
            n => Self::Several(n, uris.iter().take(3).map(|uri| shown(uri)).collect()),
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
            Self::Several(count, first) => write!(
                f,
                "a certificate with {count} URI subjectAltNames ({}{}), where a workload identity is exactly one",
                first.join(", "),
                if *count > first.len() { ", ..." } else { "" }
            ),
            Self::Malformed(uri, why) => write!(
                f,
                "a certificate whose URI subjectAltName {uri} is not a workload identity ({why})"
            ),
            Self::Anonymous => write!(f, "no client certificate"),
        }
    }
}

/// `text` for an answer or a log line: control and other non-printable
/// characters escaped, and cut to a couple of hundred characters.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for (taken, c) in text.char_indices() {
        // The bound is on what is written: escapes count at their length.
        if out.len() >= SHOWN {
            out.push_str(&format!("... ({} bytes, {taken} shown)", text.len()));
            break;
        }
        out.extend(c.escape_default());
    }
    out
}

/// Whether `uri` is a usable workload identity: printable ASCII of at most
/// 2,048 bytes, with a scheme, an authority and a path; for a SPIFFE ID,
/// also a lower-case trust domain and path segments of letters, digits,
/// `.`, `-` and `_`, none empty, `.` or `..`.
fn check(uri: &str) -> Result<(), &'static str> {
    if uri.len() > MAX_LEN {
        return Err("longer than 2,048 bytes");
    }
    if !uri.chars().all(|c| c.is_ascii_graphic()) {
        return Err("characters other than printable ASCII");
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("not a URI with an authority");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || path.is_empty() {
        return Err("no trust domain, or no path naming the workload");
    }
    if !scheme.eq_ignore_ascii_case("spiffe") {
        return Ok(());
    }
    if scheme != "spiffe" {
        return Err("a SPIFFE ID's scheme is written spiffe, in lower case");
    }
    if !authority
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
    {
        return Err("a SPIFFE trust domain is lower-case letters, digits, '.', '-' and '_'");
    }
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
    };
    if path.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(
            "a SPIFFE path is segments of letters, digits, '.', '-' and '_', none empty, '.' or '..'",
        )
    }
}

/// Parses a workload identity given on the command line: a URI with a
/// scheme, an authority and a path (`spiffe://ecommerce.local/catalog`),
/// held to the rules of [`PeerIdentity`] so an entry can match what a
/// certificate carries.
///
/// # Errors
/// What is wrong with `text`.
pub fn parse_uri(text: &str) -> Result<String, String> {
    parse_prefix(text)?;
    let text = text.trim();
    check(text).map(|()| text.to_owned()).map_err(|why| {
        format!(
            "\"{}\" is not a workload identity ({why}); give one such as spiffe://{DEV_TRUST_DOMAIN}/catalog",
            shown(text)
        )
    })
}

/// Parses the prefix of a wildcard entry: `scheme://authority/` and maybe
/// some path segments, ending with `/`.
///
/// # Errors
/// What is wrong with `text`.
pub fn parse_prefix(text: &str) -> Result<String, String> {
    let text = text.trim();
    // A prefix is what an identity under it starts with: check it as the
    // identity with one more segment.
    if let Some(stem) = text.strip_suffix('/')
        && let Err(why) = check(&format!("{stem}/x"))
    {
        return Err(format!(
            "\"{}\" is not the start of a workload identity ({why}); give one such as spiffe://{DEV_TRUST_DOMAIN}/*",
            shown(text)
        ));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "{text:?} is not a workload identity; give a URI such as spiffe://{DEV_TRUST_DOMAIN}/catalog"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let valid_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !valid_scheme || authority.is_empty() || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} is not a workload identity; give a URI such as spiffe://{DEV_TRUST_DOMAIN}/catalog"
        ));
    }
    if scheme.eq_ignore_ascii_case("spiffe")
        && (scheme != "spiffe"
            || !authority
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c)))
    {
        return Err(format!(
            "{text:?}: a SPIFFE ID is written in lower case (spiffe://{}/...), as certificates carry it",
            authority.to_ascii_lowercase()
        ));
    }
    Ok(text.to_owned())
}

/// `scheme://authority/` of an identity URI, its trust domain: what an
/// identity and the prefix entries that admit it share.
pub fn trust_domain(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_uris_with_a_workload_spelled_as_certificates_carry_them() {
        for good in [
            "spiffe://ecommerce.local/catalog",
            "spiffe://ecommerce.local/ns/shop/sa/catalog",
            "https://workloads.example/catalog",
        ] {
            assert_eq!(parse_uri(good).as_deref(), Ok(good));
        }
        for bad in [
            "catalog",
            "spiffe://",
            "spiffe:///catalog",
            "spiffe://ecommerce.local",
            "spiffe://ecommerce.local/",
            "spiffe://ecommerce.local/catalog/",
            "spiffe://Ecommerce.local/catalog",
            "Spiffe://ecommerce.local/catalog",
            "spiffe://ecommerce.local/cat alog",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad:?} accepted");
        }
        // A prefix needs no workload.
        assert!(parse_prefix("spiffe://ecommerce.local/").is_ok());
    }

    #[test]
    fn texts_from_certificates_are_shown_escaped_and_short_whatever_they_hold() {
        let escapes = "\u{1b}".repeat(3_000);
        let text = shown(&escapes);
        assert!(text.len() < SHOWN + 40, "{} bytes", text.len());
        assert!(!text.contains('\u{1b}'));
        assert!(text.ends_with("(3000 bytes, 34 shown)"), "{text}");
        let forged = shown("x\r\nINFO forged");
        assert!(!forged.contains('\n') && !forged.contains('\r'), "{forged}");
        assert_eq!(
            shown("spiffe://ecommerce.local/catalog"),
            "spiffe://ecommerce.local/catalog"
        );
    }

    #[test]
    fn the_trust_domain_is_the_scheme_and_authority() {
        assert_eq!(
            trust_domain("spiffe://ecommerce.local/catalog").as_deref(),
            Some("spiffe://ecommerce.local/")
        );
        assert_eq!(trust_domain("catalog"), None);
        assert_eq!(trust_domain("spiffe:///catalog"), None);
    }
}
