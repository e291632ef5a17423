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
