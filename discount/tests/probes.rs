//! The probes an orchestrator uses, on the plaintext admin listener
//! (`--metrics-addr`): `/healthz`, `/readyz`, and the binary's own
//! `--healthcheck`, which the container image runs since it has no shell
//! or curl. Real sockets on loopback, certificates made when the test runs.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use discount::DiscountService;
use testkit::{DiscountServer, Pki, SetupResult};

/// `GET http://addr{path}`: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> SetupResult<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The real binary, run as `discount --healthcheck` with `args`.
async fn healthcheck(args: &[&str]) -> SetupResult<Output> {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_discount"))
        .arg("--healthcheck")
        .args(args)
        .env_remove("DISCOUNT_METRICS_ADDR")
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(10), run).await??)
}

#[tokio::test]
async fn readyz_and_healthcheck_follow_serving_through_the_shutdown_delay() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let mut server = DiscountServer::start_with(
        &pki,
        &["--metrics-addr", "127.0.0.1:0", "--shutdown-delay", "3s"],
        DiscountService,
    )
    .await?;
    let admin = server.metrics_addr().ok_or("no metrics listener")?;
    let admin_arg = admin.to_string();

    assert_eq!(get(admin, "/healthz").await?, (200, "ok\n".to_owned()));
    assert_eq!(get(admin, "/readyz").await?, (200, "ready\n".to_owned()));
    let passed = healthcheck(&["--metrics-addr", &admin_arg]).await?;
    assert!(passed.status.success(), "{passed:?}");
    assert_eq!(String::from_utf8_lossy(&passed.stdout), "ready\n");

    // SIGTERM: health turns NOT_SERVING for the delay, and so does /readyz,
    // while the process is still alive.
    server.begin_stop();
    let mut readyz = (0, String::new());
    for _ in 0..40 {
        readyz = get(admin, "/readyz").await?;
        if readyz.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.starts_with("not ready"), "{readyz:?}");
    assert_eq!(get(admin, "/healthz").await?.0, 200);
    let failed = healthcheck(&["--metrics-addr", &admin_arg]).await?;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("/readyz answered 503"), "{stderr}");

    server.stopped_within(Duration::from_secs(10)).await?;
    // Nothing listening: the check says so instead of hanging.
    let gone = healthcheck(&["--metrics-addr", &admin_arg]).await?;
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("cannot connect"),
        "{gone:?}"
    );
    Ok(())
}

#[tokio::test]
async fn healthcheck_without_an_admin_listener_says_which_flag_it_needs() -> SetupResult<()> {
    let out = healthcheck(&[]).await?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains("DISCOUNT_METRICS_ADDR"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_listener_names_its_paths_and_refuses_other_methods() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--metrics-addr", "127.0.0.1:0"], DiscountService)
            .await?;
    let admin = server.metrics_addr().ok_or("no metrics listener")?;
    let (status, body) = get(admin, "/livez").await?;
    assert_eq!(status, 404);
    assert!(body.contains("/metrics, /healthz and /readyz"), "{body}");
    let posted = reqwest::Client::new()
        .post(format!("http://{admin}/readyz"))
        .send()
        .await?;
    assert_eq!(posted.status().as_u16(), 405);
    server.stop().await?;
    Ok(())
}

/// Clients dripping their request heads into every admin slot, reconnecting
/// whenever they are closed, must not keep a probe from its answer: a
/// newcomer closes the oldest connection with no answer being written,
/// at once.
#[tokio::test]
async fn probes_are_answered_while_slow_clients_fill_the_admin_listener() -> SetupResult<()> {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--metrics-addr", "127.0.0.1:0"], DiscountService)
            .await?;
    let admin = server.metrics_addr().ok_or("no metrics listener")?;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut drippers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        drippers.spawn(async move {
            while tokio::time::Instant::now() < until {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(admin).await else {
                    continue;
                };
                let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
                while tokio::time::Instant::now() < until {
                    if tcp.write_all(b"X").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut answered = 0;
    for _ in 0..10 {
        let probe = client.get(format!("http://{admin}/readyz")).send().await;
        if matches!(&probe, Ok(response) if response.status() == 200) {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drippers.shutdown().await;
    assert_eq!(answered, 10, "probes answered within 1 s, of 10");
    server.stop().await?;
    Ok(())
}
