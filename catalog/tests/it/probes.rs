//! `catalog --healthcheck`, what the container image's HEALTHCHECK runs
//! (the image has no shell or curl), against a catalog serving on
//! loopback; and the probes of the admin listener.

use std::process::Output;
use std::time::Duration;

use crate::support::system_with;
use testkit::SetupResult;

/// The real binary, run as `catalog --healthcheck` with `args`.
async fn healthcheck(args: &[&str]) -> SetupResult<Output> {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("--healthcheck")
        .args(args)
        .env_remove("CATALOG_PORT")
        .env_remove("CATALOG_LISTEN_ADDR")
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(10), run).await??)
}

#[tokio::test]
async fn healthcheck_asks_the_running_catalog_and_fails_once_it_is_gone() -> SetupResult<()> {
    let (_pki, discount, mut catalog) = system_with(&["--metrics-addr", "127.0.0.1:0"]).await?;
    let port = catalog.addr.port().to_string();

    let passed = healthcheck(&[&port, "--listen-addr", "127.0.0.1"]).await?;
    assert!(passed.status.success(), "{passed:?}");
    assert_eq!(String::from_utf8_lossy(&passed.stdout), "ok\n");

    // The admin listener has /healthz too, and points /readyz at the
    // catalog's own port, where it reports discount.
    let admin = catalog.metrics_addr.ok_or("no metrics listener")?;
    let healthz = reqwest::get(format!("http://{admin}/healthz")).await?;
    assert_eq!(healthz.status().as_u16(), 200);
    let readyz = reqwest::get(format!("http://{admin}/readyz")).await?;
    assert_eq!(readyz.status().as_u16(), 404);
    assert!(readyz.text().await?.contains("its own port"));

    catalog.begin_stop();
    catalog.stopped_within(Duration::from_secs(10)).await?;
    let failed = healthcheck(&[&port, "--listen-addr", "127.0.0.1"]).await?;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("healthcheck failed") && stderr.contains(&format!("127.0.0.1:{port}")),
        "{stderr}"
    );
    discount.stop().await?;
    Ok(())
}
