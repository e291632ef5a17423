//! The catalog's one shared HTTP/2 connection to discount under load, when
//! discount stalls, sends GOAWAY or stops: the calls that expired are the
//! only ones lost. Real servers in-process on loopback, bounded in count and
//! time.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{CUSTOMER_1, Catalog};
use testkit::{CountingProxy, DiscountServer, HANG, Pki, ScriptedDiscount, SetupResult};
use tokio::sync::Mutex;

/// One listing under load: when it started (from the start of the load),
/// how long it took, and its `X-Discount-Status` (or the error, if there
/// was no answer at all).
#[derive(Debug, Clone)]
struct Listing {
    started: Duration,
    took: Duration,
    status: String,
}

impl Listing {
    fn applied(&self) -> bool {
        self.status == "applied"
    }
}

/// Customer 1's listing from `concurrency` clients at once, each asking
/// again as soon as it has its answer, for `period`. Every listing must
/// have every product (discounted or not); what each said is returned.
async fn load(
    catalog: &Catalog,
    concurrency: usize,
    period: Duration,
) -> SetupResult<Vec<Listing>> {
    let start = Instant::now();
    let listings = Arc::new(Mutex::new(Vec::new()));
    let clients = (0..concurrency).map(|_| {
        let listings = Arc::clone(&listings);
        async move {
            while start.elapsed() < period {
                let started = start.elapsed();
                let status = match catalog.priced("1").await {
                    Ok((body, status)) => {
                        let status = status.unwrap_or_default();
                        if status == "applied" && body != CUSTOMER_1 {
                            format!("applied, but the body is wrong: {body}")
                        } else {
                            status
                        }
                    }
                    Err(error) => format!("no answer: {error}"),
                };
                listings.lock().await.push(Listing {
                    started,
                    took: start.elapsed() - started,
                    status,
                });
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let listings = listings.lock().await.clone();
    for listing in &listings {
        if !matches!(listing.status.as_str(), "applied" | "unavailable") {
            return Err(format!("a listing went wrong: {listing:?}").into());
        }
    }
    Ok(listings)
}

#[tokio::test]
async fn a_discount_stall_under_load_loses_only_the_calls_that_expired() -> SetupResult<()> {
    // A stall longer than the deadline: every call in flight expires, and
    // the catalog cancels each (RST_STREAM) while discount hears nothing.
    // When discount wakes up it finds dozens of streams opened and reset
    // at once, which h2's reset-flood guard used to answer with GOAWAY
    // ENHANCE_YOUR_CALM, failing the healthy calls on the connection too.
    let deadline = Duration::from_millis(200);
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let proxy = Arc::new(CountingProxy::start(discount.addr()).await?);
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        &format!("{}ms", deadline.as_millis()),
    )
    .await?;
    assert_eq!(catalog.priced("1").await?.1.as_deref(), Some("applied"));

    let stall = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            proxy.stall(Duration::from_millis(500)).await;
        })
    };
    let listings = load(&catalog, 32, Duration::from_millis(2500)).await?;
    stall.await?;

    let lost: Vec<&Listing> = listings.iter().filter(|l| !l.applied()).collect();
    let after: Vec<&Listing> = listings
        .iter()
        .filter(|l| l.started > Duration::from_millis(1200))
        .collect();
    eprintln!(
        "{} listings, {} not applied, {} after the stall",
        listings.len(),
        lost.len(),
        after.len()
    );
    assert!(!lost.is_empty(), "the stall made no call expire");
    for listing in &lost {
        assert!(
            listing.took >= deadline,
            "a call was lost before its deadline: {listing:?}"
        );
    }
    assert!(!after.is_empty() && after.iter().all(|l| l.applied()));
    assert_eq!(proxy.connections(), 1, "the shared connection was lost");
    // An expired call says nothing about whether discount can be reached:
    // no backoff, which would have listed the next requests undiscounted.
    assert_eq!(
        logs.lines_with("cannot reach discount"),
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test]
async fn connections_discount_retires_under_load_cost_no_listing() -> SetupResult<()> {
    // discount asks for a new connection every 100 ms (GOAWAY, as at
    // --max-connection-age or the start of its graceful shutdown): calls
    // sent on the old one after the GOAWAY were never processed, and are
    // retried on a new connection rather than failed.
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let discount = DiscountServer::start_with(
        &pki,
        &["--max-connection-age", "100ms"],
        discount::DiscountService,
    )
    .await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        support::HEALTHY_DEADLINE,
    )
    .await?;

    let listings = load(&catalog, 32, Duration::from_secs(2)).await?;
    let lost: Vec<&Listing> = listings.iter().filter(|l| !l.applied()).collect();
    let connections = proxy.connections();
    eprintln!(
        "{} listings over {connections} connections, {} not applied",
        listings.len(),
        lost.len()
    );
    assert!(
        connections >= 5,
        "discount retired only {connections} connections"
    );
    assert!(
        lost.is_empty(),
        "{} listings lost, the first: {:?}",
        lost.len(),
        lost[0]
    );
    assert_eq!(
        logs.lines_with("cannot reach discount"),
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test]
async fn a_graceful_discount_stop_under_load_fails_no_call_in_flight() -> SetupResult<()> {
    // Calls take 200 ms, so at any moment dozens are being processed. When
    // the shutdown delay ends discount sends GOAWAY: the calls it had
    // taken finish, those that raced the GOAWAY are sent again (and find
    // the port closed, as discount is gone), and nothing fails with the
    // GOAWAY itself.
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let slow = ScriptedDiscount {
        delay: Duration::from_millis(200),
        batch: true,
        ..ScriptedDiscount::default()
    };
    let delay = Duration::from_millis(500);
    let mut discount =
        DiscountServer::start_with(&pki, &["--shutdown-delay", "500ms"], slow).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        support::HEALTHY_DEADLINE,
    )
    .await?;

    let stop_at = Duration::from_millis(300);
    let stop = tokio::spawn(async move {
        tokio::time::sleep(stop_at).await;
        discount.begin_stop();
        discount.stopped_within(HANG).await
    });
    let listings = load(&catalog, 32, Duration::from_millis(1500)).await?;
    stop.await??;

    // The GOAWAY goes out at stop_at + delay; everything sent well before
    // it, and so taken by discount, must have been answered.
    let goaway = stop_at + delay;
    let before: Vec<&Listing> = listings
        .iter()
        .filter(|l| l.started + Duration::from_millis(50) < goaway)
        .collect();
    let in_flight = before
        .iter()
        .filter(|l| l.started + l.took > goaway)
        .count();
    let lost: Vec<&&Listing> = before.iter().filter(|l| !l.applied()).collect();
    eprintln!(
        "{} listings, {} sent before the GOAWAY ({in_flight} of them still in flight when it came), {} of those not applied",
        listings.len(),
        before.len(),
        lost.len()
    );
    assert!(in_flight > 0, "no call was in flight at the GOAWAY");
    assert!(lost.is_empty(), "lost before the GOAWAY: {lost:?}");
    assert_eq!(
        logs.lines_with("connection error received"),
        Vec::<String>::new()
    );
    Ok(())
}

/// HTTP/2 error code STREAM_CLOSED.
const STREAM_CLOSED: u32 = 0x5;

/// What [`late_answerer`] saw: connections the catalog opened, late
/// answers it sent, and the GOAWAY codes the catalog sent it.
#[derive(Debug, Default)]
struct LateAnswers {
    connections: usize,
    sent: usize,
    /// Resets the catalog sent for streams it no longer knew.
    stream_closed: usize,
    goaways: Vec<u32>,
}

/// A plaintext HTTP/2 peer standing in for a discount under load: it never
/// answers a call in time, and answers each call the catalog cancels once
/// `lag` more have been cancelled, as answers already on the wire when the
/// catalog gave up would arrive. Raw frames, so nothing tidies the order.
async fn late_answerer(
    lag: usize,
) -> SetupResult<(std::net::SocketAddr, Arc<std::sync::Mutex<LateAnswers>>)> {
    use testkit::wire::{self, Frame, flag, kind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(std::sync::Mutex::new(LateAnswers::default()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut preface = [0_u8; 24];
                if tcp.read_exact(&mut preface).await.is_err()
                    || tcp
                        .write_all(&wire::settings_frame(0).encode())
                        .await
                        .is_err()
                {
                    return;
                }
                record.lock().map(|mut r| r.connections += 1).ok();
                let mut cancelled = std::collections::VecDeque::new();
                while let Ok(Some(frame)) = wire::read_frame(&mut tcp).await {
                    let reply = match frame.kind {
                        kind::SETTINGS if frame.flags & flag::ACK == 0 => {
                            Some(wire::settings_frame(flag::ACK))
                        }
                        kind::PING if frame.flags & flag::ACK == 0 => Some(Frame {
                            flags: flag::ACK,
                            ..frame
                        }),
                        kind::GOAWAY => {
                            if let (Ok(mut r), Some(code)) = (record.lock(), frame.error_code()) {
                                r.goaways.push(code);
                            }
                            None
                        }
                        kind::RST_STREAM if frame.error_code() == Some(STREAM_CLOSED) => {
                            record.lock().map(|mut r| r.stream_closed += 1).ok();
                            None
                        }
                        kind::RST_STREAM => {
                            cancelled.push_back(frame.stream);
                            (cancelled.len() > lag)
                                .then(|| cancelled.pop_front())
                                .flatten()
                                .map(|stream| Frame {
                                    kind: kind::HEADERS,
                                    flags: flag::END_HEADERS | flag::END_STREAM,
                                    stream,
                                    payload: vec![0x88], // :status 200
                                })
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let late = reply.kind == kind::HEADERS;
                        if tcp.write_all(&reply.encode()).await.is_err() {
                            return;
                        }
                        if late {
                            record.lock().map(|mut r| r.sent += 1).ok();
                        }
                    }
                }
            });
        }
    });
    Ok((addr, seen))
}

/// Listings whose calls all expire (deadline 30 ms), from 100 clients at
/// once, against a [`late_answerer`] with `lag`, until it has sent
/// `wanted` late answers; what it saw.
async fn listings_answered_late(lag: usize, wanted: usize) -> SetupResult<LateAnswers> {
    let pki = Pki::generate()?;
    let (addr, seen) = late_answerer(lag).await?;
    let catalog = Catalog::start_with(
        &addr.to_string(),
        &pki.path("ca.pem"),
        "30ms",
        // A health check would go unanswered too, and take the only
        // replica out of rotation: this is about the connection.
        &["--discount-plaintext", "--discount-health-interval", "1h"],
    )
    .await?;
    let sent = || seen.lock().map_or(0, |s| s.sent);
    let clients = (0..100).map(|_| async {
        while sent() < wanted {
            let (_, status) = catalog.priced("1").await?;
            if status.as_deref() != Some("unavailable") {
                return Err(format!("X-Discount-Status {status:?}").into());
            }
        }
        SetupResult::Ok(())
    });
    for result in tokio::time::timeout(HANG * 3, futures_util::future::join_all(clients)).await? {
        result?;
    }
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| "poisoned")?);
    eprintln!("{lag} cancels late: {seen:?}");
    Ok(seen)
}

#[tokio::test]
async fn answers_that_cross_a_cancel_do_not_cost_the_connection() -> SetupResult<()> {
    // Every call expires; each answer comes after 200 more calls were
    // cancelled. h2 remembered only the last 50 cancelled streams, answered
    // the others' late frames with a reset of its own, and after 1,024 of
    // those tore the connection down itself (GOAWAY ENHANCE_YOUR_CALM): a
    // `/products` flood with deadline cancellations did this to the
    // catalog's connection to discount.
    let seen = listings_answered_late(200, 1100).await?;
    assert_eq!(
        seen.goaways,
        Vec::<u32>::new(),
        "the catalog gave up its connection"
    );
    assert_eq!(seen.connections, 1, "{seen:?}");

    // Later still than the catalog remembers: its resets are no longer
    // counted against the connection's life.
    let seen = listings_answered_late(1100, 2400).await?;
    assert!(seen.stream_closed > 1024, "{seen:?}");
    assert_eq!(
        seen.goaways,
        Vec::<u32>::new(),
        "the catalog gave up its connection"
    );
    assert_eq!(seen.connections, 1, "{seen:?}");
    Ok(())
}
