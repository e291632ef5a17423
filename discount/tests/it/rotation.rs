//! Replacing discount's certificates without a restart: new connections use
//! the new identity and trust roots, open ones finish on the old, and broken
//! files change nothing.

use std::net::SocketAddr;

use discount::DiscountService;
use testkit::{DiscountServer, Pki, Process, SetupResult};
use tonic::transport::Channel;

async fn priced(channel: Channel) -> SetupResult<i32> {
    Ok(testkit::discount_value(channel, 1, 1000)
        .await?
        .value_in_cents)
}

/// Can a client of `pki` open a new connection to `addr` and be served?
async fn new_connection_works(addr: SocketAddr, pki: &Pki) -> bool {
    match testkit::grpc_channel(addr, pki).await {
        Ok(channel) => priced(channel).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn new_certificates_take_effect_for_new_connections_without_a_restart() -> SetupResult<()> {
    let (old, new) = (Pki::generate()?, Pki::generate()?);
    let keys = tempfile::tempdir()?;
    old.install_into(keys.path())?;
    let server = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;

    let open_before = testkit::grpc_channel(server.addr(), &old).await?;
    assert_eq!(priced(open_before.clone()).await?, 900);

    // Rotate everything: server identity and the CA clients must chain to.
    new.install_into(keys.path())?;
    assert_eq!(server.reload_tls(), Ok(()));

    assert!(
        new_connection_works(server.addr(), &new).await,
        "new material not in use"
    );
    assert!(
        !new_connection_works(server.addr(), &old).await,
        "old material still accepted"
    );
    // A connection made before the rotation carries on.
    assert_eq!(priced(open_before).await?, 900);
    Ok(())
}

#[tokio::test]
async fn broken_replacement_files_are_refused_and_the_old_ones_stay_in_use() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let keys = tempfile::tempdir()?;
    pki.install_into(keys.path())?;
    let server = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;

    // A half-finished copy: the certificate file is cut short.
    std::fs::write(
        keys.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    )?;
    let refused = server.reload_tls().err().unwrap_or_default();
    assert!(refused.contains("cert.pem"), "{refused}");

    // A key that belongs to another certificate.
    pki.install_into(keys.path())?;
    let other = Pki::generate()?;
    std::fs::copy(other.path("private.key"), keys.path().join("private.key"))?;
    let refused = server.reload_tls().err().unwrap_or_default();
    assert!(refused.contains("private.key"), "{refused}");

    assert!(
        new_connection_works(server.addr(), &pki).await,
        "the working material was dropped"
    );
    Ok(())
}

#[tokio::test]
async fn the_binary_reloads_its_certificates_on_sighup() -> SetupResult<()> {
    let (old, new) = (Pki::generate()?, Pki::generate()?);
    let keys = tempfile::tempdir()?;
    old.install_into(keys.path())?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_discount"));
    let args = testkit::discount::command_line(keys.path(), 0, &[]);
    let mut discount = Process::start(binary, &args, testkit::discount::STARTED).await?;
    let addr = discount.addr();
    assert!(new_connection_works(addr, &old).await);

    new.install_into(keys.path())?;
    discount.signal("HUP").await?;
    discount.logged("reloaded").await?;

    assert!(
        new_connection_works(addr, &new).await,
        "new material not in use after SIGHUP"
    );
    assert!(
        !new_connection_works(addr, &old).await,
        "old material still accepted after SIGHUP"
    );

    let status = discount.terminate().await?;
    assert!(status.success(), "discount exited with {status} on SIGTERM");
    Ok(())
}

#[tokio::test]
async fn a_reloaded_certificate_with_another_identity_is_a_warning() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    pki.issue_server_as(
        "orders.pem",
        "orders.key",
        &["spiffe://ecommerce.local/orders"],
    )?;
    let keys = tempfile::tempdir()?;
    pki.install_into(keys.path())?;
    let server = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;

    // The same identity again: nothing to say.
    assert_eq!(server.reload_tls(), Ok(()));
    assert!(
        logs.lines_with("now presents").is_empty(),
        "{}",
        logs.text()
    );

    std::fs::copy(pki.path("orders.pem"), keys.path().join("cert.pem"))?;
    std::fs::copy(pki.path("orders.key"), keys.path().join("private.key"))?;
    assert_eq!(server.reload_tls(), Ok(()));
    let line = logs
        .line_with("now presents spiffe://ecommerce.local/orders")
        .await
        .ok_or_else(|| logs.text())?;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("spiffe://ecommerce.local/discount"), "{line}");
    Ok(())
}

/// A reload that takes long (a CA bundle of thousands of certificates;
/// here a client CA that cannot be read until the test lets it) must not
/// stop discount answering: it runs off the runtime's workers. Discount
/// runs with one worker, so a reload on it would stop everything until it
/// ended; its plaintext admin listener is the probe.
#[tokio::test]
async fn discount_answers_while_a_sighup_reload_is_blocked_reading_a_file() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let args = testkit::discount::command_line(pki.dir(), 0, &["--metrics-addr", "127.0.0.1:0"]);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_discount"));
    let mut discount = Process::start_with_env(
        binary,
        &args,
        testkit::discount::STARTED,
        &[("LOG_FORMAT", "text"), ("TOKIO_WORKER_THREADS", "1")],
    )
    .await?;
    let admin = discount.metrics_addr()?;

    let ca = testkit::StalledFile::stall(&pki.path("ca.pem"))?;
    discount.signal("HUP").await?;
    // Logged just before the reload starts, which now waits on the CA.
    discount.logged("received SIGHUP").await?;
    let answered = tokio::time::timeout(
        testkit::HANG,
        reqwest::get(format!("http://{admin}/healthz")),
    )
    .await;
    ca.release();
    discount.logged("reloaded").await?;
    let status = answered
        .map_err(|_| "no answer while the reload was blocked: it ran on the only runtime worker")??
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);

    assert!(discount.terminate().await?.success());
    Ok(())
}
