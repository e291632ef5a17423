//! Replacing discount's certificates without a restart: new connections use
//! the new identity and trust roots, open ones finish on the old, and broken
//! files change nothing.

use std::net::SocketAddr;
use std::process::Stdio;

use discount::DiscountService;
use testkit::{DiscountServer, HANG, Pki, SetupResult};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
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

/// Reads `lines` until one contains `needle`; returns it.
async fn line_with(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> SetupResult<String> {
    let find = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(needle) {
                return Ok(line);
            }
        }
        Err(format!("discount exited before logging {needle:?}").into())
    };
    tokio::time::timeout(HANG, find).await?
}

#[tokio::test]
async fn the_binary_reloads_its_certificates_on_sighup() -> SetupResult<()> {
    let (old, new) = (Pki::generate()?, Pki::generate()?);
    let keys = tempfile::tempdir()?;
    old.install_into(keys.path())?;
    let path = |name: &str| keys.path().join(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_discount"))
        .args(["--listen-addr", "127.0.0.1", "--cert"])
        .arg(path("cert.pem"))
        .arg("--key")
        .arg(path("private.key"))
        .arg("--client-ca")
        .arg(path("ca.pem"))
        .arg("0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();

    let started = line_with(&mut lines, "Running Discount service on ").await?;
    let addr: SocketAddr = started
        .split("Running Discount service on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no address in the start-up line")?
        .parse()?;
    assert!(new_connection_works(addr, &old).await);

    new.install_into(keys.path())?;
    let pid = child.id().ok_or("discount already exited")?.to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await?
            .success()
    );
    line_with(&mut lines, "reloaded").await?;

    assert!(
        new_connection_works(addr, &new).await,
        "new material not in use after SIGHUP"
    );
    assert!(
        !new_connection_works(addr, &old).await,
        "old material still accepted after SIGHUP"
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?
            .success()
    );
    let status = tokio::time::timeout(HANG, child.wait()).await??;
    assert!(status.success(), "discount exited with {status} on SIGTERM");
    Ok(())
}
