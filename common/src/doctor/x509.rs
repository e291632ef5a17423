//! What the doctor reads in one X.509 certificate: its dates, whether it is
//! a CA, what it may be used for, which names it covers, and the workload
//! identity it carries.
//!
//! Each function adds findings to a [`Report`] in the words of the fix, so
//! the callers in the parent module only decide which file to examine for
//! which role.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{EXPIRY_WARNING, Report, Role, Severity};
use crate::identity::{DEV_TRUST_DOMAIN, PeerIdentity, shown};
use crate::pem::{GEN_KEYS_HINT, PemSource};

pub(super) fn check_validity(
    report: &mut Report,
    file: &PemSource,
    certificate: &X509Certificate<'_>,
    now: SystemTime,
) {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = certificate.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let who = subject(certificate);
    if now < not_before {
        report.add(
            Severity::Error,
            file,
            format!(
                "{who} is not valid until {}; check this machine's clock, or the certificate's dates",
                validity.not_before
            ),
        );
    } else if now > not_after {
        report.add(
            Severity::Error,
            file,
            format!(
                "{who} expired on {}; renew it ({GEN_KEYS_HINT} with --force)",
                validity.not_after
            ),
        );
    } else if not_after - now < i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX) {
        let days = (not_after - now) / 86_400;
        report.add(
            Severity::Warning,
            file,
            format!(
                "{who} expires on {}, in {days} days; renew it soon",
                validity.not_after
            ),
        );
    }
}

pub(super) fn check_purpose(
    report: &mut Report,
    file: &PemSource,
    certificate: &X509Certificate<'_>,
    role: &Role,
) {
    let who = subject(certificate);
    if is_ca(certificate) {
        report.add(
            Severity::Error,
            file,
            format!(
                "{who} is a CA certificate (CA:TRUE) and rustls refuses it as an identity (CaUsedAsEndEntity). `openssl req -x509` makes such certificates; issue a leaf certificate from a CA instead ({GEN_KEYS_HINT})"
            ),
        );
    }
    let usage = certificate
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value);
    let (wanted, allowed) = match role {
        Role::Server { .. } => ("serverAuth", usage.is_none_or(|u| u.any || u.server_auth)),
        Role::Client => ("clientAuth", usage.is_none_or(|u| u.any || u.client_auth)),
    };
    if !allowed {
        report.add(
            Severity::Error,
            file,
            format!("{who} is not for {wanted}: its extendedKeyUsage does not include it; issue one that does ({GEN_KEYS_HINT})"),
        );
    }
    if let Role::Server { names, strict } = role {
        check_names(report, file, certificate, names, *strict);
    }
}

/// Reports the workload identity the certificate carries (its URI
/// subjectAltName), and warns when the peer will not find the one it
/// checks by default.
pub(super) fn check_identity_uri(
    report: &mut Report,
    file: &PemSource,
    certificate: &X509Certificate<'_>,
    role: &Role,
) {
    let (who, checked_by) = match role {
        Role::Server { .. } => (
            "discount",
            "the catalog checks discount's by default (--discount-identity spiffe://ecommerce.local/discount) and refuses it otherwise",
        ),
        Role::Client => (
            "the catalog",
            "discount's allow-list (--allow-client) lets in only listed identities, so it refuses this client",
        ),
    };
    match PeerIdentity::of(certificate) {
        PeerIdentity::Uri(uri) => report.add(
            Severity::Info,
            file,
            format!("carries the workload identity {uri}"),
        ),
        other => report.add(
            Severity::Warning,
            file,
            format!(
                "{other}: {checked_by}. Issue {who}'s certificate with one URI subjectAltName such as spiffe://{DEV_TRUST_DOMAIN}/<workload> ({GEN_KEYS_HINT})"
            ),
        ),
    }
}

fn check_names(
    report: &mut Report,
    file: &PemSource,
    certificate: &X509Certificate<'_>,
    names: &[String],
    strict: bool,
) {
    let who = subject(certificate);
    let san = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|e| e.value.general_names.clone())
        .unwrap_or_default();
    if san.is_empty() {
        report.add(
            Severity::Error,
            file,
            format!(
                "{who} has no subjectAltName. Clients match the host name against subjectAltName only and never the Common Name (RFC 6125; rustls, and Go since 1.15), so this certificate is valid for no name at all. This is the problem with the seed's `openssl req -x509 ... -subj '/CN=localhost'` certificate; {GEN_KEYS_HINT}, which adds DNS:localhost, IP:127.0.0.1 and IP:::1"
            ),
        );
        return;
    }
    for name in names {
        if !san.iter().any(|entry| covers(entry, name)) {
            let listed: Vec<String> = san.iter().map(describe).collect();
            report.add(
                if strict { Severity::Error } else { Severity::Warning },
                file,
                format!(
                    "{who} does not cover the name {name:?} that clients dial (it covers {}); issue a certificate for that name, or set --server-name to the name clients really use",
                    listed.join(", ")
                ),
            );
        }
    }
}

/// Whether a subjectAltName entry matches `name`: an IP entry an address,
/// a DNS entry the name, case-insensitively, with a leading `*.` matching
/// exactly one label.
fn covers(entry: &GeneralName<'_>, name: &str) -> bool {
    match (entry, name.parse::<IpAddr>()) {
        (GeneralName::IPAddress(bytes), Ok(ip)) => match ip {
            IpAddr::V4(v4) => *bytes == v4.octets(),
            IpAddr::V6(v6) => *bytes == v6.octets(),
        },
        (GeneralName::DNSName(pattern), Err(_)) => {
            let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
            match pattern.strip_prefix("*.") {
                Some(suffix) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => pattern == name,
            }
        }
        _ => false,
    }
}

fn describe(entry: &GeneralName<'_>) -> String {
    match entry {
        GeneralName::DNSName(name) => format!("DNS:{}", shown(name)),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
            Err(_) => <[u8; 16]>::try_from(*bytes)
                .map(|v6| format!("IP:{}", IpAddr::from(v6)))
                .unwrap_or_else(|_| "IP:?".to_owned()),
        },
        GeneralName::URI(uri) => format!("URI:{}", shown(uri)),
        other => format!("{other:?}"),
    }
}

pub(super) fn is_ca(certificate: &X509Certificate<'_>) -> bool {
    certificate
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|constraints| constraints.value.ca)
}

pub(super) fn subject(certificate: &X509Certificate<'_>) -> String {
    // Escaped: a subject can hold any character, and this text goes to
    // the terminal and the log.
    format!(
        "the certificate for \"{}\"",
        shown(&certificate.subject().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let entry = GeneralName::DNSName("*.svc.local");
        assert!(covers(&entry, "discount.svc.local"));
        assert!(covers(&entry, "DISCOUNT.svc.local"));
        assert!(!covers(&entry, "svc.local"));
        assert!(!covers(&entry, "a.discount.svc.local"));
        assert!(covers(
            &GeneralName::IPAddress(&[127, 0, 0, 1]),
            "127.0.0.1"
        ));
        assert!(!covers(&GeneralName::DNSName("127.0.0.1"), "127.0.0.1"));
    }
}
