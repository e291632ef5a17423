//! The certificate doctor: checks TLS material before a service uses it.
//!
//! rustls' own errors arrive at the first handshake, on the peer's side, as
//! one word (`UnknownIssuer`, `NotValidForName`, `CaUsedAsEndEntity`). The
//! doctor reads the files at start-up, and on `--check-certs`, and says
//! which file is wrong, how, and what to do, before anything is served.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::pem::{GEN_KEYS_HINT, PemFile, PemSource};

mod x509;

use x509::{check_identity_uri, check_purpose, check_validity, is_ca, subject};

/// How to replace development keys, quoted where a certificate must be renewed.
const REGEN_HINT: &str = "`scripts/gen-keys.sh --renew` makes new development pairs from the same CA; `--force` replaces the CA too";

/// Certificates expiring sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// A CA file holding more certificates than this gets a warning. A private
/// PKI has one CA, two while it is replaced, a few across clusters; a
/// system bundle (about 150 public CAs) or a generated file of thousands
/// is a mistake that nothing else reports: it works, and trusts them all.
/// Not an error: since discount stopped naming its client CAs in the
/// handshake, a file of 10,000 costs only time at start and at each reload
/// (about a second in a debug build).
pub const MANY_CAS: usize = 100;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// What the material says (the identity a certificate carries).
    Info,
    /// Worth knowing; the service starts.
    Warning,
    /// The material cannot work; the service does not start.
    Error,
}

/// One thing the doctor found about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Warning or error.
    pub severity: Severity,
    /// The file it is about.
    pub file: PathBuf,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{level}: {}: {}", self.file.display(), self.message)
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A server identity. `names` are the host names or addresses clients
    /// dial, each of which the subjectAltName must cover; `strict` makes an
    /// uncovered name an error rather than a warning.
    Server {
        /// Names clients dial.
        names: Vec<String>,
        /// Whether an uncovered name stops the service.
        strict: bool,
    },
    /// A client identity, for mutual TLS.
    Client,
}

/// The findings of one examination.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Everything found, in the order found.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing stops the service.
    pub fn is_ok(&self) -> bool {
        self.findings.iter().all(|f| f.severity < Severity::Error)
    }

    /// Adds another report's findings.
    pub fn extend(&mut self, other: Report) {
        self.findings.extend(other.findings);
    }

    /// Adds a finding about `file`.
    pub fn add(&mut self, severity: Severity, file: &PemSource, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            file: file.path.clone(),
            message: message.into(),
        });
    }
}

/// The errors of a report that stop a service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the TLS material cannot be used:\n{}", .0.iter().map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n"))]
pub struct CertificateErrors(pub Vec<Finding>);

impl Report {
    /// Logs the warnings (and the rest at info level), and turns the
    /// errors, if any, into an error.
    ///
    /// # Errors
    /// [`CertificateErrors`] with every error finding.
    pub fn enforce(self) -> Result<(), CertificateErrors> {
        let (errors, warnings): (Vec<Finding>, Vec<Finding>) = self
            .findings
            .into_iter()
            .partition(|f| f.severity == Severity::Error);
        for finding in warnings {
            if finding.severity == Severity::Warning {
                tracing::warn!(file = %finding.file.display(), "{}", finding.message);
            } else {
                tracing::info!(file = %finding.file.display(), "{}", finding.message);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CertificateErrors(errors))
        }
    }
}

/// For `--check-certs`: prints every finding to stdout, then a verdict, and
/// returns the exit code (0 when the material can be used).
pub fn print_and_exit_code(report: &Report) -> std::process::ExitCode {
    for finding in &report.findings {
        println!("{finding}");
    }
    if report.is_ok() {
        println!("certificates OK");
        std::process::ExitCode::SUCCESS
    } else {
        println!("certificates NOT OK: fix the errors above");
        std::process::ExitCode::FAILURE
    }
}

/// Examines an identity: the certificate chain in `cert`, the key in `key`,
/// for `role`, at time `now`.
pub fn check_identity(cert: &PemSource, key: &PemSource, role: &Role, now: SystemTime) -> Report {
    let mut report = Report::default();
    let cert = read_or_report(&mut report, cert);
    let key = read_or_report(&mut report, key);
    if let (Some(cert), Some(key)) = (cert, key) {
        report.extend(check_identity_files(&cert, &key, role, now));
    }
    report
}

/// [`check_identity`] on files already read, so a service checks the very
/// bytes it then uses: a file replaced between a check and a second read
/// could otherwise be used unchecked.
pub fn check_identity_files(
    cert_file: &PemFile,
    key_file: &PemFile,
    role: &Role,
    now: SystemTime,
) -> Report {
    let (cert, key) = (cert_file.source(), key_file.source());
    let mut report = Report::default();
    let chain = match cert_file.certificates() {
        Ok(chain) => chain,
        Err(error) => {
            report.add(Severity::Error, cert, problem_of(&error.to_string()));
            return report;
        }
    };
    let Some(leaf_der) = chain.first() else {
        return report;
    };
    match X509Certificate::from_der(leaf_der) {
        Ok((_, leaf)) => {
            check_validity(&mut report, cert, &leaf, now);
            check_purpose(&mut report, cert, &leaf, role);
            check_identity_uri(&mut report, cert, &leaf, role);
        }
        Err(error) => report.add(
            Severity::Error,
            cert,
            format!(
                "the CERTIFICATE block is not a valid X.509 certificate ({error}); {GEN_KEYS_HINT}"
            ),
        ),
    }
    match key_file.private_key() {
        Ok(private_key) => {
            let matches = crate::crypto::provider()
                .key_provider
                .load_private_key(private_key)
                .and_then(|signer| CertifiedKey::new(chain, signer).keys_match());
            if let Err(error) = matches {
                report.add(
                    Severity::Error,
                    key,
                    format!(
                        "this private key does not belong to the certificate in {} ({error}); use the key that was made with it, or make a new pair ({REGEN_HINT})",
                        cert.path.display()
                    ),
                );
            }
        }
        Err(error) => report.add(Severity::Error, key, problem_of(&error.to_string())),
    }
    report
}

/// Examines a CA file used to verify peers, at time `now`.
pub fn check_ca(ca: &PemSource, now: SystemTime) -> Report {
    let mut report = Report::default();
    if let Some(file) = read_or_report(&mut report, ca) {
        report.extend(check_ca_file(&file, now));
    }
    report
}

/// [`check_ca`] on a file already read (see [`check_identity_files`]).
pub fn check_ca_file(ca_file: &PemFile, now: SystemTime) -> Report {
    let ca = ca_file.source();
    let mut report = Report::default();
    let certificates = match ca_file.certificates() {
        Ok(certificates) => certificates,
        Err(error) => {
            report.add(Severity::Error, ca, problem_of(&error.to_string()));
            return report;
        }
    };
    if certificates.len() > MANY_CAS {
        report.add(
            Severity::Warning,
            ca,
            format!(
                "holds {} CA certificates, and a certificate any one of them signed gets past TLS. A private PKI needs its own CA (two while it is replaced), not a bundle of public ones; point {} at the CA that signs the peers' certificates",
                certificates.len(),
                ca.flag
            ),
        );
    }
    for der in &certificates {
        match X509Certificate::from_der(der) {
            Ok((_, certificate)) => {
                check_validity(&mut report, ca, &certificate, now);
                if !is_ca(&certificate) {
                    report.add(
                        Severity::Warning,
                        ca,
                        format!(
                            "{} is not a CA certificate (no CA:TRUE); it can only verify a peer that presents this very certificate. Point {} at the CA that signs the peer's certificate",
                            subject(&certificate),
                            ca.flag
                        ),
                    );
                }
            }
            Err(error) => report.add(
                Severity::Error,
                ca,
                format!("a CERTIFICATE block is not a valid X.509 certificate ({error})"),
            ),
        }
    }
    report
}

/// Reads `source`; if it cannot be read, says so in `report`.
fn read_or_report(report: &mut Report, source: &PemSource) -> Option<PemFile> {
    match PemFile::read(source) {
        Ok(file) => Some(file),
        Err(error) => {
            report.add(Severity::Error, source, problem_of(&error.to_string()));
            None
        }
    }
}

/// The part of a [`crate::pem::PemFileError`] message after the path, so the
/// finding does not name the file twice.
fn problem_of(message: &str) -> String {
    message
        .split_once(": ")
        .map_or(message, |(_, rest)| rest)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, date_time_ymd,
    };
    use std::time::UNIX_EPOCH;

    /// 2030-01-15: every test certificate is valid from 2030-01-01 to
    /// 2030-03-01 unless it says otherwise, so results do not depend on
    /// today's date.
    fn mid_january_2030() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_894_665_600)
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn write(&self, name: &str, contents: &str) -> PemSource {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
            PemSource::new(path, "--cert")
        }
    }

    fn params(
        names: &[&str],
        common_name: &str,
        configure: impl FnOnce(&mut CertificateParams),
    ) -> CertificateParams {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = date_time_ymd(2030, 1, 1);
        params.not_after = date_time_ymd(2030, 3, 1);
        configure(&mut params);
        params
    }

    /// Writes a CA-signed certificate and its key; returns their sources.
    fn issue(files: &Files, stem: &str, params: &CertificateParams) -> (PemSource, PemSource) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            files.write(&format!("{stem}.pem"), &cert.pem()),
            files.write(&format!("{stem}.key"), &key.serialize_pem()),
        )
    }

    fn server(names: &[&str]) -> Role {
        Role::Server {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            strict: true,
        }
    }

    fn messages(report: &Report, severity: Severity) -> Vec<String> {
        report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(|f| f.message.clone())
            .collect()
    }

    /// Adds the workload identity `uri` to a certificate's names.
    fn with_identity(uri: &'static str) -> impl FnOnce(&mut CertificateParams) {
        move |p| {
            p.subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
    }

    #[test]
    fn a_good_server_identity_has_no_findings_but_its_workload_identity() {
        let files = Files::new();
        let (cert, key) = issue(
            &files,
            "good",
            &params(
                &["localhost", "127.0.0.1"],
                "localhost",
                with_identity("spiffe://ecommerce.local/discount"),
            ),
        );
        let report = check_identity(
            &cert,
            &key,
            &server(&["localhost", "127.0.0.1"]),
            mid_january_2030(),
        );
        assert_eq!(
            report
                .findings
                .iter()
                .map(|f| (f.severity, f.message.as_str()))
                .collect::<Vec<_>>(),
            [(
                Severity::Info,
                "carries the workload identity spiffe://ecommerce.local/discount"
            )]
        );
    }

    #[test]
    fn a_certificate_without_a_workload_identity_is_a_warning_naming_who_refuses_it() {
        let files = Files::new();
        let client = params(&["catalog"], "catalog", |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        let (cert, key) = issue(&files, "nameless", &client);
        let report = check_identity(&cert, &key, &Role::Client, mid_january_2030());
        assert!(report.is_ok());
        let warnings = messages(&report, Severity::Warning).join("\n");
        assert!(warnings.contains("carries no identity"), "{warnings}");
        assert!(warnings.contains("--allow-client"), "{warnings}");

        let (cert, key) = issue(
            &files,
            "server",
            &params(&["localhost"], "localhost", |_| {}),
        );
        let report = check_identity(&cert, &key, &server(&["localhost"]), mid_january_2030());
        let warnings = messages(&report, Severity::Warning).join("\n");
        assert!(warnings.contains("--discount-identity"), "{warnings}");
    }

    #[test]
    fn the_seeds_cn_only_certificate_is_called_out_by_name() {
        let files = Files::new();
        let (cert, key) = issue(&files, "seed", &params(&[], "localhost", |_| {}));
        let report = check_identity(&cert, &key, &server(&["localhost"]), mid_january_2030());
        assert!(!report.is_ok());
        let errors = messages(&report, Severity::Error).join("\n");
        assert!(errors.contains("has no subjectAltName"), "{errors}");
        assert!(errors.contains("seed's `openssl req -x509"), "{errors}");
    }

    #[test]
    fn a_ca_certificate_as_a_server_identity_is_an_error() {
        let files = Files::new();
        let ca_like = params(&["localhost"], "localhost", |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        let (cert, key) = issue(&files, "ca-like", &ca_like);
        let report = check_identity(&cert, &key, &server(&["localhost"]), mid_january_2030());
        let errors = messages(&report, Severity::Error).join("\n");
        assert!(errors.contains("CaUsedAsEndEntity"), "{errors}");
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_errors_and_expiring_ones_warnings() {
        let files = Files::new();
        let (cert, key) = issue(
            &files,
            "dated",
            &params(&["localhost"], "localhost", |_| {}),
        );
        let role = server(&["localhost"]);
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);

        let expired = check_identity(&cert, &key, &role, at(1_900_000_000)); // 2030-03-17
        assert!(
            messages(&expired, Severity::Error)
                .join("")
                .contains("expired on")
        );

        let early = check_identity(&cert, &key, &role, at(1_890_000_000)); // 2029-11-22
        assert!(
            messages(&early, Severity::Error)
                .join("")
                .contains("is not valid until")
        );

        let soon = check_identity(&cert, &key, &role, at(1_898_118_000)); // 5 days and an hour before expiry
        assert!(soon.is_ok(), "{:?}", soon.findings);
        assert!(
            messages(&soon, Severity::Warning)
                .join("")
                .contains("in 5 days")
        );
    }

    #[test]
    fn a_key_from_another_pair_is_named_as_the_problem() {
        let files = Files::new();
        let (cert, _) = issue(&files, "one", &params(&["localhost"], "localhost", |_| {}));
        let (_, other_key) = issue(&files, "two", &params(&["localhost"], "localhost", |_| {}));
        let report = check_identity(
            &cert,
            &other_key,
            &server(&["localhost"]),
            mid_january_2030(),
        );
        let finding = report
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error);
        assert_eq!(
            finding.map(|f| f.file.clone()),
            Some(other_key.path.clone())
        );
        assert!(finding.is_some_and(|f| f.message.contains("does not belong to the certificate")));
    }

    #[test]
    fn a_certificate_for_the_wrong_purpose_is_an_error() {
        let files = Files::new();
        let server_only = params(&["catalog"], "catalog", |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        let (cert, key) = issue(&files, "server-only", &server_only);
        let report = check_identity(&cert, &key, &Role::Client, mid_january_2030());
        assert!(
            messages(&report, Severity::Error)
                .join("")
                .contains("is not for clientAuth")
        );
    }

    #[test]
    fn an_uncovered_host_name_is_an_error_when_strict_and_a_warning_otherwise() {
        let files = Files::new();
        let (cert, key) = issue(
            &files,
            "named",
            &params(
                &["discount.internal"],
                "discount",
                with_identity("spiffe://ecommerce.local/discount"),
            ),
        );
        let strict = check_identity(&cert, &key, &server(&["localhost"]), mid_january_2030());
        let errors = messages(&strict, Severity::Error).join("");
        assert!(
            errors.contains("does not cover the name \"localhost\""),
            "{errors}"
        );
        assert!(errors.contains("DNS:discount.internal"), "{errors}");

        let lenient = Role::Server {
            names: vec!["localhost".to_owned()],
            strict: false,
        };
        let report = check_identity(&cert, &key, &lenient, mid_january_2030());
        assert!(report.is_ok());
        assert_eq!(messages(&report, Severity::Warning).len(), 1);
    }

    #[test]
    fn a_ca_file_holding_a_leaf_certificate_is_a_warning() {
        let files = Files::new();
        let (leaf, _) = issue(&files, "leaf", &params(&["localhost"], "localhost", |_| {}));
        let report = check_ca(&leaf, mid_january_2030());
        assert!(report.is_ok());
        assert!(
            messages(&report, Severity::Warning)
                .join("")
                .contains("is not a CA certificate")
        );
    }

    #[test]
    fn a_missing_file_is_an_error_with_the_fix() {
        let files = Files::new();
        let missing = PemSource::new(files.dir.path().join("nope.pem"), "--cert");
        let report = check_ca(&missing, mid_january_2030());
        let errors = messages(&report, Severity::Error).join("");
        assert!(
            errors.contains("file not found") && errors.contains("scripts/gen-keys.sh"),
            "{errors}"
        );
    }
}
