//! What discount counts about the clients it refuses and the reloads it
//! does, scraped from its `--metrics-addr` listener. Real TLS on loopback,
//! certificates made when the test runs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use discount::DiscountService;
use testkit::{ClientCert, DiscountServer, HANG, Pki, Process, SetupResult};
use tokio::io::AsyncWriteExt;
use tonic::transport::Identity;

/// The value of the sample written exactly `series` (name and labels, as
/// the text format writes them, labels sorted) in `/metrics` at `addr`.
async fn sample(addr: SocketAddr, series: &str) -> SetupResult<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .ok_or_else(|| format!("no {series} in\n{text}"))?;
    Ok(value.parse()?)
}

/// `series` sampled until it reads `wanted`, for [`HANG`] at most: the
/// reload logs its outcome a moment before the counter counts it, on
/// another thread. The last value read.
async fn sample_becomes(addr: SocketAddr, series: &str, wanted: f64) -> SetupResult<f64> {
    let until = tokio::time::Instant::now() + HANG;
    loop {
        let value = sample(addr, series).await?;
        if value == wanted || tokio::time::Instant::now() >= until {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One call presenting `identity`; whether it worked.
async fn call(server: &DiscountServer, pki: &Pki, identity: Option<Identity>) -> bool {
    let attempt = async {
        let channel =
            testkit::grpc_channel_with(server.addr(), &pki.path("ca.pem"), identity).await?;
        testkit::discount_value(channel, 1, 1000).await
    };
    matches!(tokio::time::timeout(HANG, attempt).await, Ok(Ok(_)))
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_reason_and_refused_calls_by_identity() -> SetupResult<()>
{
    let pki = Pki::generate()?;
    let stranger = Pki::generate()?;
    pki.issue_client("expired", ClientCert::Expired)?;
    pki.issue_client("server-only", ClientCert::ServerPurpose)?;
    pki.issue_client_as("orders", &["spiffe://ecommerce.local/orders"])?;
    let server = DiscountServer::start_with(
        &pki,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--tls-handshake-timeout",
            "300ms",
        ],
        DiscountService,
    )
    .await?;
    let admin = server.metrics_addr().ok_or("no metrics listener")?;

    assert!(call(&server, &pki, Some(pki.identity("client")?)).await);
    assert!(!call(&server, &pki, None).await);
    assert!(!call(&server, &pki, Some(stranger.identity("client")?)).await);
    assert!(!call(&server, &pki, Some(pki.identity("expired")?)).await);
    assert!(!call(&server, &pki, Some(pki.identity("server-only")?)).await);
    assert!(!call(&server, &pki, Some(pki.identity("orders")?)).await);
    // A client that connects and never starts its handshake.
    let mut silent = tokio::net::TcpStream::connect(server.addr()).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = silent.shutdown().await;

    let refused =
        |reason: &str| format!("discount_tls_handshakes_refused_total{{reason=\"{reason}\"}}");
    for (reason, count) in [
        ("no_certificate", 1.0),
        ("unknown_issuer", 1.0),
        ("expired", 1.0),
        ("wrong_purpose", 1.0),
        ("timeout", 1.0),
        ("other", 0.0),
    ] {
        assert_eq!(sample(admin, &refused(reason)).await?, count, "{reason}");
    }
    assert_eq!(
        sample(
            admin,
            "discount_authz_refusals_total{identity=\"spiffe://ecommerce.local/orders\"}"
        )
        .await?,
        1.0
    );
    let calls = |code: &str| {
        format!(
            "discount_grpc_calls_total{{code=\"{code}\",method=\"ecommerce.Discount/ApplyDiscount\"}}"
        )
    };
    assert_eq!(sample(admin, &calls("OK")).await?, 1.0);
    assert_eq!(sample(admin, &calls("PERMISSION_DENIED")).await?, 1.0);
    assert_eq!(sample(admin, "discount_grpc_calls_in_flight").await?, 0.0);
    server.stop().await
}

#[tokio::test]
async fn sighup_reloads_are_counted_by_outcome() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let args = testkit::discount::command_line(pki.dir(), 0, &["--metrics-addr", "127.0.0.1:0"]);
    let binary = Path::new(env!("CARGO_BIN_EXE_discount"));
    let mut discount = Process::start(binary, &args, testkit::discount::STARTED).await?;
    // The start-up line says where the metrics are.
    let admin = discount.metrics_addr()?;
    let reloads = |outcome: &str| format!("discount_reloads_total{{outcome=\"{outcome}\"}}");
    assert_eq!(sample(admin, &reloads("success")).await?, 0.0);

    discount.signal("HUP").await?;
    discount.logged("reloaded").await?;
    assert_eq!(sample_becomes(admin, &reloads("success"), 1.0).await?, 1.0);

    std::fs::write(pki.path("cert.pem"), "not a certificate")?;
    discount.signal("HUP").await?;
    discount.logged("reload failed").await?;
    assert_eq!(sample_becomes(admin, &reloads("failure"), 1.0).await?, 1.0);
    assert_eq!(sample(admin, &reloads("success")).await?, 1.0);
    // The certificate in use is still the one loaded at the first reload.
    let cert = pki.path("cert.pem").display().to_string();
    let expiry = format!("tls_certificate_expiry_seconds{{file=\"{cert}\",role=\"server\"}}");
    assert!(sample(admin, &expiry).await? > 0.0);
    assert!(discount.terminate().await?.success());
    Ok(())
}
