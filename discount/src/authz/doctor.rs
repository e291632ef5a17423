//! What the certificate doctor says of the allow-list: whether it can
//! admit discount's own trust domain, and the catalog's certificate beside
//! the client CA.

use common::doctor::{Report, Severity};
use common::identity::{PeerIdentity, trust_domain};
use common::pem::{PemFile, PemSource};

use super::Allowed;

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
