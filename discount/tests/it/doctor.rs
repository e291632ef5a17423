//! The certificate doctor on the real binaries, with keys made the way users
//! make them: by `scripts/gen-keys.sh`, and by the seed's own openssl line.

use std::path::Path;
use std::process::{Command, Output};

use testkit::SetupResult;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs the discount binary with the key files of `dir`, plus `args`.
fn discount(dir: &Path, args: &[&str]) -> SetupResult<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_discount"))
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("private.key"))
        .arg("--client-ca")
        .arg(dir.join("ca.pem"))
        .args(["--listen-addr", "127.0.0.1"])
        .args(args)
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keys_from_gen_keys_pass_the_doctor() -> SetupResult<()> {
    let keys = tempfile::tempdir()?;
    let made = Command::new("bash")
        .arg(repo_root().join("scripts/gen-keys.sh"))
        .arg("--dir")
        .arg(keys.path())
        .output()?;
    assert!(
        made.status.success(),
        "gen-keys failed: {}",
        text(&made.stderr)
    );

    let checked = discount(keys.path(), &["--check-certs"])?;
    assert!(checked.status.success(), "{}", text(&checked.stdout));
    let cert = keys.path().join("cert.pem").display().to_string();
    let client = keys.path().join("client.pem").display().to_string();
    assert_eq!(
        text(&checked.stdout),
        format!(
            "info: {cert}: carries the workload identity spiffe://ecommerce.local/discount\n\
             info: --allow-client: ecommerce.Discount is open to spiffe://ecommerce.local/catalog\n\
             info: {client}: the catalog's certificate beside --client-ca, spiffe://ecommerce.local/catalog, is on the allow-list\n\
             certificates OK\n"
        )
    );

    // A renewal: new pairs from the same CA, which both sides still trust.
    let read = |name: &str| std::fs::read(keys.path().join(name));
    let (ca, cert) = (read("ca.pem")?, read("cert.pem")?);
    let renewed = Command::new("bash")
        .arg(repo_root().join("scripts/gen-keys.sh"))
        .arg("--renew")
        .arg("--dir")
        .arg(keys.path())
        .output()?;
    assert!(renewed.status.success(), "{}", text(&renewed.stderr));
    assert_eq!(read("ca.pem")?, ca, "--renew must keep the CA");
    assert_ne!(
        read("cert.pem")?,
        cert,
        "--renew must make a new certificate"
    );
    let checked = discount(keys.path(), &["--check-certs"])?;
    assert!(checked.status.success(), "{}", text(&checked.stdout));
    Ok(())
}

#[test]
fn the_doctor_warns_when_the_allow_list_admits_nobody_it_can_see() -> SetupResult<()> {
    let keys = tempfile::tempdir()?;
    let made = Command::new("bash")
        .arg(repo_root().join("scripts/gen-keys.sh"))
        .args(["--trust-domain", "shop.example", "--dir"])
        .arg(keys.path())
        .output()?;
    assert!(made.status.success(), "{}", text(&made.stderr));

    // The default allow-list is for ecommerce.local: nothing of this PKI.
    let checked = discount(keys.path(), &["--check-certs"])?;
    let report = text(&checked.stdout);
    assert!(checked.status.success(), "warnings only: {report}");
    for expected in [
        "carries the workload identity spiffe://shop.example/discount",
        "names no identity in discount's own trust domain spiffe://shop.example/",
        "presents spiffe://shop.example/catalog, which --allow-client (spiffe://ecommerce.local/catalog) does not admit",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }

    // Allowing the trust domain settles both.
    let checked = discount(
        keys.path(),
        &["--check-certs", "--allow-client", "spiffe://shop.example/*"],
    )?;
    assert!(
        !text(&checked.stdout).contains("warning"),
        "{}",
        text(&checked.stdout)
    );
    Ok(())
}

/// The seed's command, verbatim but for the key size and the paths.
fn seed_certificate(dir: &Path) -> SetupResult<()> {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "365", "-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("private.key"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()?;
    if !made.status.success() {
        return Err(format!("openssl failed: {}", text(&made.stderr)).into());
    }
    std::fs::copy(dir.join("cert.pem"), dir.join("ca.pem"))?;
    Ok(())
}

#[test]
fn the_seeds_own_certificate_is_refused_with_the_reasons_and_the_fix() -> SetupResult<()> {
    let keys = tempfile::tempdir()?;
    seed_certificate(keys.path())?;

    let checked = discount(keys.path(), &["--check-certs"])?;
    let report = text(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    assert!(report.contains("has no subjectAltName"), "{report}");
    assert!(report.contains("CaUsedAsEndEntity"), "{report}");
    assert!(report.contains("scripts/gen-keys.sh"), "{report}");

    // Started for real, it refuses to serve, with the same findings.
    let started = discount(keys.path(), &["0"])?;
    let stderr = text(&started.stderr);
    assert_eq!(started.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cert.pem") && stderr.contains("has no subjectAltName"),
        "{stderr}"
    );
    Ok(())
}

/// The subject of `dir`'s CA certificate, as openssl prints it.
fn ca_subject(dir: &Path) -> SetupResult<String> {
    let printed = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(dir.join("ca.pem"))
        .output()?;
    Ok(text(&printed.stdout))
}

#[test]
fn every_gen_keys_ca_has_a_subject_of_its_own() -> SetupResult<()> {
    // Two dev CAs with one name make a certificate of the other one fail as
    // BadSignature instead of UnknownIssuer.
    let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    for dir in [&one, &two] {
        let made = Command::new("bash")
            .arg(repo_root().join("scripts/gen-keys.sh"))
            .arg("--dir")
            .arg(dir.path())
            .output()?;
        assert!(made.status.success(), "{}", text(&made.stderr));
    }
    let (first, second) = (ca_subject(one.path())?, ca_subject(two.path())?);
    assert!(first.contains("ecommerce dev CA"), "{first}");
    assert_ne!(first, second);
    Ok(())
}

#[test]
fn a_client_ca_of_ten_thousand_cas_is_reported_as_trusting_them_all() -> SetupResult<()> {
    let pki = testkit::Pki::generate()?;
    pki.write_ca_bundle("bundle.pem", 10_000)?;
    let keys = tempfile::tempdir()?;
    pki.install_into(keys.path())?;
    std::fs::copy(pki.path("bundle.pem"), keys.path().join("ca.pem"))?;

    let started = std::time::Instant::now();
    let checked = discount(keys.path(), &["--check-certs"])?;
    let report = text(&checked.stdout);
    eprintln!("--check-certs took {:?}:\n{report}", started.elapsed());
    assert!(checked.status.success(), "{report}");
    // It works (mtls.rs), and trusts every one of them: a warning,
    // not an error.
    let ca = keys.path().join("ca.pem").display().to_string();
    assert!(
        report.contains(&format!(
            "warning: {ca}: holds 10001 CA certificates, and a certificate any one of them signed gets past TLS"
        )),
        "{report}"
    );
    assert!(report.ends_with("certificates OK\n"), "{report}");
    Ok(())
}
