//! discount's connections against a flood of clients that connect and say
//! nothing: each costs one file descriptor, they cannot keep a real client
//! out, and the process raises its open-files limit at start. The real
//! binary, so that its descriptors and limits can be read from /proc.
//! Loopback only, bounded in count and time.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::discount::{STARTED, command_line};
use testkit::{HANG, Pki, Process, SetupResult};
use tokio::net::TcpStream;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_discount"))
}

/// How many file descriptors `process` has open.
fn descriptors(process: &Process) -> SetupResult<usize> {
    Ok(std::fs::read_dir(format!("/proc/{}/fd", process.pid()?))?.count())
}

/// Waits until `process` has at least `at_least` descriptors open, or
/// [`HANG`]; returns how many it has.
async fn descriptors_reach(process: &Process, at_least: usize) -> SetupResult<usize> {
    let started = Instant::now();
    loop {
        let open = descriptors(process)?;
        if open >= at_least || started.elapsed() > HANG {
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` TCP connections to `process` that never say anything, all made
/// within [`HANG`].
async fn silent_clients(process: &Process, count: usize) -> SetupResult<Vec<TcpStream>> {
    let connect_all = async {
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            clients.push(TcpStream::connect(process.addr()).await?);
        }
        Ok::<_, std::io::Error>(clients)
    };
    Ok(tokio::time::timeout(HANG, connect_all).await??)
}

#[tokio::test]
async fn each_connection_costs_one_file_descriptor() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let args = command_line(pki.dir(), 0, &["--tls-handshake-timeout", "60s"]);
    let discount = Process::start(binary(), &args, STARTED).await?;
    let before = descriptors(&discount)?;

    let clients = silent_clients(&discount, 200).await?;
    let during = descriptors_reach(&discount, before + 200).await?;
    // Settle: anything beyond one a connection would show up meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = descriptors(&discount)?.max(during);
    eprintln!("descriptors: {before} before, {settled} with 200 silent clients");
    assert!(
        settled >= before + 200 && settled <= before + 210,
        "{before} before, {settled} with 200 connections"
    );
    drop(clients);
    assert!(discount.terminate().await?.success());
    Ok(())
}

#[tokio::test]
async fn silent_clients_past_the_limit_cannot_keep_a_real_client_out() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let args = command_line(
        pki.dir(),
        0,
        &["--max-connections", "32", "--tls-handshake-timeout", "60s"],
    );
    let discount = Process::start(binary(), &args, STARTED).await?;
    let before = descriptors(&discount)?;

    // 1,000 clients that connect and never start the TLS handshake, each
    // of which would otherwise hold a place for the whole 60 s.
    let clients = silent_clients(&discount, 1000).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = descriptors(&discount)?;

    let started = Instant::now();
    let served = async {
        let channel = testkit::grpc_channel(discount.addr(), &pki).await?;
        testkit::discount_value(channel, 1, 1000).await
    };
    // Bounded as a whole: tonic's connect timeout does not cover the TLS
    // handshake, which is where a locked-out client would wait.
    let value = tokio::time::timeout(HANG, served)
        .await
        .map_err(|_| format!("a real client was not served within {HANG:?}"))??;
    let good_client = started.elapsed();
    eprintln!(
        "1,000 silent clients, limit 32: descriptors {before} -> {during}, good client served in {good_client:?}"
    );
    assert_eq!(value.value_in_cents, 900);
    // Within the limit (and a few descriptors of its own), not 1,000.
    assert!(
        during <= before + 32 + 4,
        "{before} -> {during} descriptors"
    );
    drop(clients);
    assert!(discount.terminate().await?.success());
    Ok(())
}

#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_limit_and_logged() -> SetupResult<()> {
    let pki = Pki::generate()?;
    // Started the way a default shell would leave it: a low soft limit.
    let mut args = vec![
        "-c".to_owned(),
        r#"ulimit -Sn 256 && exec "$0" "$@""#.to_owned(),
        binary().display().to_string(),
    ];
    args.extend(command_line(pki.dir(), 0, &[]));
    let discount = Process::start(Path::new("bash"), &args, STARTED).await?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", discount.pid()?))?;
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .ok_or("no open-files line")?
        .split_whitespace()
        .collect();
    // "Max open files  SOFT  HARD  files"
    let (soft, hard) = (open_files[3], open_files[4]);
    assert_eq!(soft, hard, "{limits}");
    assert_ne!(soft, "256");
    assert!(
        discount
            .started_line()
            .contains(&format!("open_files={soft}"))
    );
    assert!(discount.terminate().await?.success());
    Ok(())
}

/// A health Watch on its own connection to `addr`: a call that stays open
/// for as long as the server lets it.
async fn watch_on_own_connection(
    addr: std::net::SocketAddr,
    pki: &Pki,
) -> SetupResult<tonic::Streaming<tonic_health::pb::HealthCheckResponse>> {
    let channel = testkit::grpc_channel(addr, pki).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    Ok(health.watch(request).await?.into_inner())
}

/// How `watch` ended (its status, or `Ok(None)` for a clean end), reading
/// past its updates; an error if it had not ended within [`HANG`].
async fn watch_end(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> SetupResult<Result<Option<tonic_health::pb::HealthCheckResponse>, tonic::Status>> {
    let end = async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                ended => return ended,
            }
        }
    };
    Ok(tokio::time::timeout(HANG, end).await?)
}

#[tokio::test]
async fn connections_each_holding_one_call_open_cannot_keep_a_real_client_out() -> SetupResult<()> {
    // 32 clients with a valid certificate, each holding one health Watch
    // open and starting nothing else, at a limit of 32 connections: none
    // is idle, so a newcomer used to wait in the kernel's queue for as
    // long as they stayed.
    let pki = Pki::generate()?;
    let server = testkit::DiscountServer::start_with(
        &pki,
        &["--max-connections", "32"],
        discount::DiscountService,
    )
    .await?;
    let mut watches = Vec::new();
    for _ in 0..32 {
        watches.push(watch_on_own_connection(server.addr(), &pki).await?);
    }
    let started = Instant::now();
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let value = tokio::time::timeout(HANG, testkit::discount_value(channel, 1, 1000)).await??;
    let waited = started.elapsed();
    eprintln!("32 connections each holding a Watch, limit 32: a real client served in {waited:?}");
    assert_eq!(value.value_in_cents, 900);
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    // The connection picked was the one whose last call began longest ago:
    // the first Watch's.
    let first = watch_end(&mut watches[0]).await?;
    assert!(first.is_err(), "the first Watch ended cleanly: {first:?}");
    Ok(())
}

#[tokio::test]
async fn a_stream_left_open_does_not_keep_a_connection_past_its_age() -> SetupResult<()> {
    // GOAWAY at the age lets calls in flight finish, and a Watch never
    // does: its connection used to live for ever. It is now cut at the age
    // plus the longest a call may run.
    let pki = Pki::generate()?;
    let server = testkit::DiscountServer::start_with(
        &pki,
        &[
            "--max-connection-age",
            "300ms",
            "--max-call-duration",
            "200ms",
        ],
        discount::DiscountService,
    )
    .await?;
    let started = Instant::now();
    let mut watch = watch_on_own_connection(server.addr(), &pki).await?;
    let ended = watch_end(&mut watch).await?;
    let lived = started.elapsed();
    eprintln!("a Watch on a connection aged 300 ms (+200 ms): ended after {lived:?}: {ended:?}");
    assert!(ended.is_err(), "ended cleanly: {ended:?}");
    assert!(
        lived >= Duration::from_millis(450),
        "cut after only {lived:?}"
    );
    Ok(())
}

#[tokio::test]
async fn clients_that_hold_a_call_open_and_reconnect_cannot_evict_a_real_client_between_its_calls()
-> SetupResult<()> {
    // At a limit of 8: 8 connections each hold a Watch, and a ninth
    // reconnects with a Watch every time it is closed, 40 times. A real
    // client on one long-lived connection calls every 20 ms and is idle in
    // between: when idle connections were picked first, each reconnect
    // closed the real client's connection and its next call failed.
    let pki = Pki::generate()?;
    let server = testkit::DiscountServer::start_with(
        &pki,
        &["--max-connections", "9"],
        discount::DiscountService,
    )
    .await?;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(watch_on_own_connection(server.addr(), &pki).await?);
    }
    let real = testkit::grpc_channel(server.addr(), &pki).await?;
    testkit::discount_value(real.clone(), 1, 1000).await?;
    let (addr, attacker_pki) = (server.addr(), &pki);
    let churn = async {
        for _ in 0..40 {
            if let Ok(watch) = watch_on_own_connection(addr, attacker_pki).await {
                held.push(watch);
            }
        }
    };
    let calls = async {
        let mut failed = Vec::new();
        for _ in 0..40 {
            if let Err(error) = testkit::discount_value(real.clone(), 1, 1000).await {
                failed.push(error.to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failed
    };
    let ((), failed) = tokio::time::timeout(HANG * 3, async { tokio::join!(churn, calls) }).await?;
    eprintln!(
        "40 reconnecting Watches at the limit: {} of 40 real calls failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    Ok(())
}
