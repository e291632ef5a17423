//! Who may call discount: mutual TLS by default, the weaker modes, and
//! plaintext behind a mesh. Real TLS sockets on loopback, certificates made
//! when the test runs.

use discount::DiscountService;
use testkit::{ClientCert, DiscountServer, HANG, Pki, SetupResult};
use tonic::transport::{Endpoint, Identity};

/// discount with the keys of `pki` and `--client-auth mode`.
async fn start(pki: &Pki, mode: &str) -> SetupResult<DiscountServer> {
    DiscountServer::start_with(pki, &["--client-auth", mode], DiscountService).await
}

/// Connects to `server` trusting `pki`'s CA, presenting `identity`, and
/// makes one call. `Ok(value_in_cents)`, or the whole error chain.
async fn call(
    server: &DiscountServer,
    pki: &Pki,
    identity: Option<Identity>,
) -> SetupResult<Result<i32, String>> {
    let attempt = async {
        // With TLS 1.3 the server refuses a client certificate after the
        // client considers the handshake done, so the refusal may surface
        // at connect or at the first call.
        let channel = testkit::grpc_channel_with(server.addr(), &pki.path("ca.pem"), identity)
            .await
            .map_err(|e| testkit::error_chain(&*e))?;
        testkit::discount_value(channel, 1, 1000)
            .await
            .map(|value| value.value_in_cents)
            .map_err(|e| testkit::error_chain(&*e))
    };
    Ok(tokio::time::timeout(HANG, attempt).await?)
}

#[tokio::test]
async fn by_default_a_client_must_present_a_certificate_from_the_client_ca() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let stranger = Pki::generate()?;
    let server = start(&pki, "required").await?;

    assert_eq!(
        call(&server, &pki, Some(pki.identity("client")?)).await?,
        Ok(900)
    );

    let anonymous = call(&server, &pki, None).await?;
    assert!(
        matches!(&anonymous, Err(e) if e.contains("CertificateRequired")),
        "{anonymous:?}"
    );
    let foreign = call(&server, &pki, Some(stranger.identity("client")?)).await?;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted"
    );
    Ok(())
}

/// The CAs of the client-CA file in the tests below: 10,000 besides the
/// real one. rustls used to name each in its CertificateRequest, and past
/// about 1,000 the message outgrew TLS's 64 KiB limit on a handshake
/// message, so every client's handshake failed (HandshakePayloadTooLarge).
const BUNDLED_CAS: usize = 10_000;

/// A TLS 1.2 handshake with `server`, presenting `pki`'s client
/// certificate. In TLS 1.2 the server verifies that certificate before it
/// sends its Finished, so a handshake that completes was accepted.
async fn tls12_handshake(server: &DiscountServer, pki: &Pki) -> SetupResult<()> {
    use common::pem::{PemFile, PemSource};
    let read = |name: &str| PemFile::read(&PemSource::new(pki.path(name), "test"));
    let config = rustls::ClientConfig::builder_with_provider(common::crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(read("ca.pem")?.root_store()?)
        .with_client_auth_cert(
            read("client.pem")?.certificates()?,
            read("client.key")?.private_key()?,
        )?;
    let tcp = tokio::net::TcpStream::connect(server.addr()).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    Ok(())
}

#[tokio::test]
async fn a_client_ca_file_of_ten_thousand_cas_still_lets_the_catalog_in() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let made = std::time::Instant::now();
    pki.write_ca_bundle("bundle.pem", BUNDLED_CAS)?;
    eprintln!(
        "{BUNDLED_CAS} extra CAs made in {:?}: {} bytes",
        made.elapsed(),
        std::fs::metadata(pki.path("bundle.pem"))?.len()
    );
    // discount's keys, laid out apart so its client CA can be replaced
    // while the client goes on trusting discount through the real CA.
    let keys = tempfile::tempdir()?;
    pki.install_into(keys.path())?;
    let server = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;
    let client = || pki.identity("client");
    assert_eq!(call(&server, &pki, Some(client()?)).await?, Ok(900));

    // The bundle, by SIGHUP, as an operator would roll it out.
    std::fs::copy(pki.path("bundle.pem"), keys.path().join("ca.pem"))?;
    let reloaded = std::time::Instant::now();
    assert_eq!(server.reload_tls(), Ok(()));
    eprintln!("reloaded in {:?}", reloaded.elapsed());
    assert_eq!(call(&server, &pki, Some(client()?)).await?, Ok(900));
    // Still mutual TLS: no certificate, or one from another CA, is refused.
    let anonymous = call(&server, &pki, None).await?;
    assert!(
        matches!(&anonymous, Err(e) if e.contains("CertificateRequired")),
        "{anonymous:?}"
    );
    let stranger = Pki::generate()?;
    let foreign = call(&server, &pki, Some(stranger.identity("client")?)).await?;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted"
    );
    // TLS 1.2 sends an empty list of CA names where TLS 1.3 sends none.
    tokio::time::timeout(HANG, tls12_handshake(&server, &pki)).await??;
    server.stop().await?;

    // And at start.
    let started = std::time::Instant::now();
    let server = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;
    eprintln!("started in {:?}", started.elapsed());
    assert_eq!(call(&server, &pki, Some(client()?)).await?, Ok(900));
    Ok(())
}

#[tokio::test]
async fn expired_and_wrong_purpose_client_certificates_are_refused() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client("expired", ClientCert::Expired)?;
    pki.issue_client("server-only", ClientCert::ServerPurpose)?;
    let server = start(&pki, "required").await?;

    for name in ["expired", "server-only"] {
        let outcome = call(&server, &pki, Some(pki.identity(name)?)).await?;
        assert!(outcome.is_err(), "{name} was accepted");
    }
    // The server is unharmed.
    assert_eq!(
        call(&server, &pki, Some(pki.identity("client")?)).await?,
        Ok(900)
    );
    Ok(())
}

/// rustls (webpki) keeps a trust anchor's subject, key and name
/// constraints, not its basicConstraints: the `pathlen:0` of the dev CA
/// (scripts/gen-keys.sh, and [`Pki`]) does not stop a CA below it from
/// issuing client certificates discount accepts, where openssl refuses the
/// chain. docs/security.md tells operators not to rely on it; this test
/// fails the day rustls starts to enforce it, so that the doc can change.
#[tokio::test]
async fn pathlen_zero_on_the_client_ca_is_not_enforced_by_rustls() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_via_intermediate("below")?;
    let server = start(&pki, "required").await?;
    assert_eq!(
        call(&server, &pki, Some(pki.identity("below")?)).await?,
        Ok(900),
        "rustls now refuses a CA below a pathlen:0 trust anchor: update docs/security.md"
    );
    Ok(())
}

#[tokio::test]
async fn optional_client_auth_admits_clients_without_a_certificate_but_not_bad_ones()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client("expired", ClientCert::Expired)?;
    // Anonymous clients get past TLS, and are then refused by the
    // allow-list unless it says `any` (allow.rs).
    let server = DiscountServer::start_with(
        &pki,
        &["--client-auth", "optional", "--allow-client", "any"],
        DiscountService,
    )
    .await?;

    assert_eq!(call(&server, &pki, None).await?, Ok(900));
    assert_eq!(
        call(&server, &pki, Some(pki.identity("client")?)).await?,
        Ok(900)
    );
    assert!(
        call(&server, &pki, Some(pki.identity("expired")?))
            .await?
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn client_auth_none_admits_anyone_who_trusts_the_server() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = start(&pki, "none").await?;
    assert_eq!(call(&server, &pki, None).await?, Ok(900));
    Ok(())
}

#[tokio::test]
async fn plaintext_mode_speaks_grpc_without_tls_and_refuses_tls_clients() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--insecure-plaintext"], DiscountService).await?;

    let channel = Endpoint::from_shared(format!("http://{}", server.addr()))?
        .connect()
        .await?;
    assert_eq!(
        testkit::discount_value(channel, 1, 1000)
            .await?
            .value_in_cents,
        900
    );
    assert!(
        call(&server, &pki, Some(pki.identity("client")?))
            .await?
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_client_is_logged_with_its_address_and_the_reason() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();

    let pki = Pki::generate()?;
    let server = start(&pki, "required").await?;
    assert!(call(&server, &pki, None).await?.is_err());

    let line = logs
        .line_with("TLS handshake failed")
        .await
        .ok_or_else(|| format!("no refusal logged: {}", logs.text()))?;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("peer sent no certificates"), "{line}");
    Ok(())
}
