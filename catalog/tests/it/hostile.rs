//! Hostile and malformed HTTP to the catalog, over raw TCP so that no client
//! library tidies the bytes up. Each case leaves the catalog answering the
//! next good request correctly. Loopback only, bounded in count and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{CUSTOMER_2, Catalog, PLAIN, system, system_with};
use catalog::server::{MAX_HEADERS, MAX_REQUEST_HEAD};
use testkit::{HANG, SetupResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a new connection and reads until the server closes
/// it. Requests say `Connection: close`, so a complete answer ends there.
async fn raw(addr: SocketAddr, request: &[u8]) -> SetupResult<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn get_products(headers: &[u8]) -> Vec<u8> {
    let mut request = b"GET /products HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n".to_vec();
    request.extend_from_slice(headers);
    request.extend_from_slice(b"\r\n");
    request
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The catalog still serves a good request correctly.
async fn assert_healthy(catalog: &Catalog) -> SetupResult<()> {
    assert_eq!(
        catalog.products(None).await?,
        (reqwest::StatusCode::OK, PLAIN.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn strange_user_ids_are_400_whatever_bytes_they_hold() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let long_number = format!("X-USER-ID: {}\r\n", "9".repeat(8000));
    let cases: [&[u8]; 4] = [
        long_number.as_bytes(),
        "X-USER-ID: \u{0661}\r\n".as_bytes(), // a non-ASCII digit
        b"X-USER-ID: \xff\xfe1\r\n",          // not UTF-8 at all
        b"X-USER-ID: 123456789012345678901234567890\r\n",
    ];
    for header in cases {
        let answer = raw(catalog.addr, &get_products(header)).await?;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{header:?}"
        );
        assert_eq!(body(&answer), "Customer ID is not a number.\n");
    }
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn control_characters_in_a_header_are_refused_by_the_parser() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let answer = raw(catalog.addr, &get_products(b"X-USER-ID: 1\x01\r\n")).await?;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn with_repeated_user_ids_the_first_one_counts() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let answer = raw(
        catalog.addr,
        &get_products(b"X-USER-ID: 2\r\nX-USER-ID: 1\r\nX-USER-ID: abc\r\n"),
    )
    .await?;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
    assert_eq!(body(&answer), CUSTOMER_2);
    Ok(())
}

#[tokio::test]
async fn oversized_headers_and_too_many_headers_are_431() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let big = format!("X-Padding: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
    let answer = raw(catalog.addr, &get_products(big.as_bytes())).await?;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "{:?}",
        status_line(&answer)
    );

    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-H{i}: {i}\r\n"))
        .collect();
    let answer = raw(catalog.addr, &get_products(many.as_bytes())).await?;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "{:?}",
        status_line(&answer)
    );
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn a_body_on_a_get_is_ignored_and_the_connection_stays_usable() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let mut tcp = TcpStream::connect(catalog.addr).await?;
    tcp.write_all(b"GET /products HTTP/1.1\r\nHost: c\r\nContent-Length: 11\r\n\r\nhello world")
        .await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answers = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut answers)).await??;
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    assert!(answers.contains(PLAIN.trim_end()));
    assert!(answers.ends_with("It is working."));
    Ok(())
}

#[tokio::test]
async fn a_client_sending_headers_a_byte_at_a_time_is_cut_off_at_the_header_timeout()
-> SetupResult<()> {
    let (_pki, _discount, catalog) = system_with(&["--header-read-timeout", "500ms"]).await?;
    let mut tcp = TcpStream::connect(catalog.addr).await?;
    let started = Instant::now();
    let request =
        b"GET /products HTTP/1.1\r\nHost: catalog\r\nX-Slow: abcdefghijklmnopqrstuvwxyz\r\n\r\n";
    let mut cut_off = false;
    // One byte every 100 ms would take 7 s; the server must not wait that long.
    for byte in request {
        if tcp.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0_u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe)).await
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the server waited for the whole slow request");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn a_flood_of_idle_connections_is_bounded_and_closed() -> SetupResult<()> {
    let (_pki, _discount, catalog) =
        system_with(&["--header-read-timeout", "300ms", "--max-connections", "256"]).await?;
    // 2,000 connections that never send a byte: at most 256 are served at a
    // time, each is closed after the header timeout, then the next ones.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(catalog.addr).await?);
    }
    let closed_by_server = async {
        for mut tcp in idle {
            let mut probe = [0_u8; 16];
            if !matches!(tcp.read(&mut probe).await, Ok(0) | Err(_)) {
                return false;
            }
        }
        true
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), closed_by_server).await?,
        "an idle connection got data"
    );
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn refused_and_unknown_requests_reach_the_log() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();
    let (_pki, _discount, catalog) = system().await?;

    let big = format!("X-Padding: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
    let answer = raw(catalog.addr, &get_products(big.as_bytes())).await?;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );
    let refused = logs
        .line_with("refused a request the HTTP parser could not accept")
        .await
        .ok_or_else(|| format!("431 not logged: {}", logs.text()))?;
    assert!(refused.contains("peer=127.0.0.1:"), "{refused}");

    assert_eq!(
        catalog.get("/nope", None).await?.status,
        reqwest::StatusCode::NOT_FOUND
    );
    let not_found = logs.line_with("status=404").await;
    assert!(
        not_found.is_some(),
        "404 not in the access log: {}",
        logs.text()
    );
    Ok(())
}

/// An h2c client that opens a connection (preface, SETTINGS), sends no
/// request, and answers every PING: the cheapest way to hold a connection
/// slot. Resolves to true when the server closes the connection, false if
/// it is still open after [`HANG`].
async fn idle_h2c_client(addr: SocketAddr) -> SetupResult<tokio::task::JoinHandle<bool>> {
    use testkit::wire::{self, Frame, flag, kind};
    let mut tcp = TcpStream::connect(addr).await?;
    let mut hello = wire::PREFACE.to_vec();
    hello.extend(wire::settings_frame(0).encode());
    tcp.write_all(&hello).await?;
    Ok(tokio::spawn(async move {
        let serve = async {
            loop {
                match wire::read_frame(&mut tcp).await {
                    Ok(Some(frame)) if frame.kind == kind::PING && frame.flags & flag::ACK == 0 => {
                        let pong = Frame {
                            flags: flag::ACK,
                            ..frame
                        };
                        if tcp.write_all(&pong.encode()).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(frame))
                        if frame.kind == kind::SETTINGS && frame.flags & flag::ACK == 0 =>
                    {
                        let ack = wire::settings_frame(flag::ACK);
                        if tcp.write_all(&ack.encode()).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(HANG, serve).await.is_ok()
    }))
}

#[tokio::test]
async fn an_idle_h2c_connection_answering_pings_is_closed_after_the_header_timeout()
-> SetupResult<()> {
    let (_pki, _discount, catalog) = system_with(&["--header-read-timeout", "300ms"]).await?;
    let idle = idle_h2c_client(catalog.addr).await?;
    let started = Instant::now();
    assert!(idle.await?, "still open after {HANG:?}");
    eprintln!("idle h2c connection closed after {:?}", started.elapsed());
    assert_healthy(&catalog).await
}

#[tokio::test]
async fn at_the_connection_limit_the_oldest_idle_connection_makes_room() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();
    let (_pki, _discount, catalog) =
        system_with(&["--max-connections", "4", "--header-read-timeout", "30s"]).await?;
    // Four idle connections take every slot, and would keep them for 30 s.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(idle_h2c_client(catalog.addr).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A newcomer is served, well before any of them times out.
    let started = Instant::now();
    let served = tokio::time::timeout(HANG, raw(catalog.addr, &get_products(b""))).await??;
    assert_eq!(status_line(&served), "HTTP/1.1 200 OK");
    eprintln!("newcomer served after {:?}", started.elapsed());
    // The oldest idle connection was the one closed to make room.
    assert!(
        idle.remove(0).await?,
        "the oldest idle connection is still open"
    );
    // The operator hears of the limit (once an interval).
    let warned = logs.lines_with("at the connection limit (--max-connections)");
    assert_eq!(warned.len(), 1, "{}", logs.text());
    assert!(warned[0].contains("WARN"), "{warned:?}");
    Ok(())
}

/// With `--max-connections 4` and a 30 s header timeout, four connections
/// that each sent `sent` and then nothing more take every slot. Returns how
/// long a newcomer then waited for its answer, after checking that it was
/// served and that the oldest of the four was closed for it.
async fn newcomer_wait_behind(sent: &[u8]) -> SetupResult<Duration> {
    let (_pki, _discount, catalog) =
        system_with(&["--max-connections", "4", "--header-read-timeout", "30s"]).await?;
    let mut holding = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(catalog.addr).await?;
        tcp.write_all(sent).await?;
        holding.push(tcp);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let served = tokio::time::timeout(HANG, raw(catalog.addr, &get_products(b""))).await??;
    let waited = started.elapsed();
    assert_eq!(status_line(&served), "HTTP/1.1 200 OK");
    let mut probe = [0_u8; 64];
    let oldest = tokio::time::timeout(HANG, holding[0].read(&mut probe)).await?;
    assert!(
        matches!(oldest, Ok(0) | Err(_)),
        "the oldest connection is still open: {oldest:?}"
    );
    Ok(waited)
}

#[tokio::test]
async fn at_the_connection_limit_connections_that_sent_nothing_make_room_at_once() -> SetupResult<()>
{
    // They count as idle; the newcomer used to wait for their header
    // timeout all the same (the close was not watched before a first byte).
    let waited = newcomer_wait_behind(b"").await?;
    eprintln!("newcomer behind 4 silent connections served after {waited:?}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    Ok(())
}

#[tokio::test]
async fn at_the_connection_limit_half_sent_request_heads_make_room_at_once() -> SetupResult<()> {
    // Slowloris: a head begun and never finished. A graceful close waits
    // for the head, so the newcomer used to wait for the header timeout.
    let waited = newcomer_wait_behind(b"GET / HTTP/1.1\r\nHost: catalog\r\nX-Slow: ").await?;
    eprintln!("newcomer behind 4 half-sent heads served after {waited:?}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    Ok(())
}

#[tokio::test]
async fn long_uris_and_refused_requests_cannot_flood_the_log() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();
    let (_pki, _discount, catalog) = system().await?;

    // 100 pipelined 404s, each with a 15 KB URI, on one connection.
    let long = format!("/{}", "a".repeat(15_000));
    let mut pipelined = Vec::new();
    for _ in 0..100 {
        pipelined.extend(format!("GET {long} HTTP/1.1\r\nHost: catalog\r\n\r\n").as_bytes());
    }
    pipelined.extend(b"GET /nope HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n");
    let answers = raw(catalog.addr, &pipelined).await?;
    assert_eq!(
        answers.matches("HTTP/1.1 404").count(),
        101,
        "{}",
        &answers[..200.min(answers.len())]
    );
    // 100 requests the parser refuses (431), each on its own connection.
    let big = format!("X-Padding: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
    for _ in 0..100 {
        let answer = raw(catalog.addr, &get_products(big.as_bytes())).await?;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 431"),
            "{answer:?}"
        );
    }
    assert!(
        logs.line_with("uri=/nope").await.is_some(),
        "{}",
        logs.text()
    );

    // A method is any token to hyper: 15 KB ones, answered 405, must not
    // make 15 KB lines either.
    let method = "M".repeat(15_000);
    let mut pipelined = Vec::new();
    for _ in 0..10 {
        pipelined.extend(format!("{method} / HTTP/1.1\r\nHost: catalog\r\n\r\n").as_bytes());
    }
    pipelined.extend(b"GET /nope-too HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n");
    let answers = raw(catalog.addr, &pipelined).await?;
    assert_eq!(answers.matches("HTTP/1.1 405").count(), 10);
    assert!(logs.line_with("uri=/nope-too").await.is_some());
    let not_allowed = logs.lines_with("status=405");
    assert_eq!(not_allowed.len(), 10);
    let longest_405 = not_allowed.iter().map(String::len).max().unwrap_or(0);
    assert!(longest_405 < 1024, "a 405 line of {longest_405} bytes");

    let not_found = logs.lines_with("status=404");
    let longest = not_found.iter().map(String::len).max().unwrap_or(0);
    let refused = logs.lines_with("refused a request the HTTP parser");
    eprintln!(
        "{} access lines, the longest {longest} bytes; {} lines for 100 refused requests",
        not_found.len(),
        refused.len()
    );
    assert_eq!(not_found.len(), 102);
    // Each line used to hold the whole URI: 15 KB.
    assert!(longest < 1024, "a 404 line of {longest} bytes");
    assert!(
        not_found.iter().any(|l| l.contains("uri_bytes_not_shown=")),
        "the cut is not noted"
    );
    // Once, then a line an interval with the count.
    assert_eq!(refused.len(), 1, "{refused:?}");
    Ok(())
}
