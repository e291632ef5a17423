//! The catalog's one shared HTTP/2 connection to discount under load, when
//! discount stalls, sends GOAWAY or stops: the calls that expired are the
//! only ones lost. Real servers in-process on loopback, bounded in count and
//! time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support::{CUSTOMER_1, Catalog};
use testkit::{CountingProxy, DiscountServer, HANG, Pki, ScriptedDiscount, SetupResult};

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

/// Customer 1's listing asked by many clients at once, each asking again
/// as soon as it has its answer, until the test has seen what it needs.
/// Stopping on a state rather than after a time keeps the tests true on a
/// machine of any speed.
struct Load {
    start: Instant,
    listings: Mutex<Vec<Listing>>,
}

impl Load {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            listings: Mutex::new(Vec::new()),
        })
    }

    /// Time since the load started.
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The listings so far.
    fn listings(&self) -> Vec<Listing> {
        self.listings.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Listings applied that started at or after `from`.
    fn applied_since(&self, from: Duration) -> usize {
        self.listings
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|l| l.started >= from && l.applied())
                    .count()
            })
            .unwrap_or_default()
    }

    /// Waits until `count` listings have been applied since `from`.
    async fn until_applied_since(&self, from: Duration, count: usize) {
        while self.applied_since(from) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `concurrency` clients until `done` (at most `HANG * 6`). Every
    /// listing must have every product (discounted or not); what each said
    /// is returned.
    async fn run(
        &self,
        catalog: &Catalog,
        concurrency: usize,
        done: impl Fn() -> bool,
    ) -> SetupResult<Vec<Listing>> {
        let clients = (0..concurrency).map(|_| async {
            while !done() {
                let started = self.elapsed();
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
                let listing = Listing {
                    started,
                    took: self.elapsed() - started,
                    status,
                };
                self.listings.lock().map(|mut l| l.push(listing)).ok();
            }
        });
        tokio::time::timeout(HANG * 6, futures_util::future::join_all(clients))
            .await
            .map_err(|_| "the load never reached what the test waits for")?;
        let listings = self.listings();
        for listing in &listings {
            if !matches!(listing.status.as_str(), "applied" | "unavailable") {
                return Err(format!("a listing went wrong: {listing:?}").into());
            }
        }
        Ok(listings)
    }
}

#[tokio::test]
async fn a_discount_stall_under_load_loses_only_the_calls_that_expired() -> SetupResult<()> {
    // A stall longer than the deadline: every call in flight expires, and
    // the catalog cancels each (RST_STREAM) while discount hears nothing.
    // When discount wakes up it finds dozens of streams opened and reset
    // at once, which h2's reset-flood guard used to answer with GOAWAY
    // ENHANCE_YOUR_CALM, failing the healthy calls on the connection too.
    // Long enough that the calls outside the stall are answered in time on
    // a machine busy with other tests; the stall is longer still.
    let deadline = Duration::from_secs(1);
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let proxy = Arc::new(CountingProxy::start(discount.addr()).await?);
    let catalog = Catalog::start_with(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        &format!("{}ms", deadline.as_millis()),
        // The stall outlasts a health check and a keepalive ping, which
        // would take the replica out or close the connection: this is
        // about the calls, so neither runs during the test.
        &["--discount-health-interval", "1h"],
    )
    .await?;
    assert_eq!(catalog.priced("1").await?.1.as_deref(), Some("applied"));

    // The stall comes once the load is flowing, and the load runs until
    // 20 listings that started after the stall were applied.
    let load = Load::new();
    let resumed = Arc::new(OnceLock::new());
    let stall = {
        let (proxy, load, resumed) = (Arc::clone(&proxy), Arc::clone(&load), Arc::clone(&resumed));
        tokio::spawn(async move {
            load.until_applied_since(Duration::ZERO, 32).await;
            proxy.stall(deadline * 5 / 2).await;
            resumed.set(load.elapsed()).ok();
        })
    };
    let after_stall = || {
        resumed
            .get()
            .is_some_and(|&at| load.applied_since(at) >= 20)
    };
    let listings = load.run(&catalog, 32, after_stall).await?;
    stall.await?;

    let lost: Vec<&Listing> = listings.iter().filter(|l| !l.applied()).collect();
    eprintln!(
        "{} listings, {} not applied, the stall ended at {:?}",
        listings.len(),
        lost.len(),
        resumed.get()
    );
    assert!(!lost.is_empty(), "the stall made no call expire");
    for listing in &lost {
        assert!(
            listing.took >= deadline,
            "a call was lost before its deadline: {listing:?}"
        );
    }
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
        crate::support::HEALTHY_DEADLINE,
    )
    .await?;

    // Until discount has retired five connections under the load.
    let listings = Load::new()
        .run(&catalog, 32, || proxy.connections() > 5)
        .await?;
    let lost: Vec<&Listing> = listings.iter().filter(|l| !l.applied()).collect();
    eprintln!(
        "{} listings over {} connections, {} not applied",
        listings.len(),
        proxy.connections(),
        lost.len()
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
    // Calls take a second, so at any moment dozens are being processed,
    // however late this test gets to count them. When
    // the shutdown delay ends discount sends GOAWAY: the calls it had
    // taken finish, those that raced the GOAWAY are sent again (and find
    // the port closed, as discount is gone), and nothing fails with the
    // GOAWAY itself.
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let slow = ScriptedDiscount {
        delay: Duration::from_secs(1),
        batch: true,
        ..ScriptedDiscount::default()
    };
    let (taken, answered) = (Arc::clone(&slow.calls), Arc::clone(&slow.answered));
    let mut discount =
        DiscountServer::start_with(&pki, &["--shutdown-delay", "500ms"], slow).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        crate::support::HEALTHY_DEADLINE,
    )
    .await?;

    // Once the load flows, discount begins to stop; the calls it is
    // processing when it stops taking new ones are counted then, and the
    // load runs until discount is gone.
    let load = Load::new();
    let in_flight = Arc::new(OnceLock::new());
    let stopped = Arc::new(OnceLock::new());
    let stop = {
        let (load, in_flight, stopped) = (
            Arc::clone(&load),
            Arc::clone(&in_flight),
            Arc::clone(&stopped),
        );
        let (taken, answered, logs) = (Arc::clone(&taken), Arc::clone(&answered), logs.clone());
        tokio::spawn(async move {
            load.until_applied_since(Duration::ZERO, 32).await;
            discount.begin_stop();
            logs.line_with("no longer accepting").await;
            in_flight
                .set(taken.load(Ordering::SeqCst) - answered.load(Ordering::SeqCst))
                .ok();
            let result = discount.stopped_within(HANG).await;
            stopped.set(result).ok();
        })
    };
    let listings = load.run(&catalog, 32, || stopped.get().is_some()).await?;
    stop.await?;
    stopped.get().cloned().ok_or("discount never stopped")??;

    // Every call discount took was answered, and every answer reached the
    // listing that asked; the listings that failed were never taken.
    let (taken, answered) = (
        taken.load(Ordering::SeqCst),
        answered.load(Ordering::SeqCst),
    );
    let applied = listings.iter().filter(|l| l.applied()).count();
    let in_flight = in_flight.get().copied().unwrap_or_default();
    eprintln!(
        "{} listings, {applied} applied; discount took {taken} calls and answered {answered}, \
         {in_flight} of them in flight when it stopped taking new ones",
        listings.len(),
    );
    assert!(in_flight > 0, "no call was in flight when discount stopped");
    assert_eq!(answered, taken, "discount dropped calls it had taken");
    assert_eq!(applied, answered, "answers were lost on the way");
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
/// once, against a [`late_answerer`] with `lag`, until what it saw passes
/// `done`; what it saw.
async fn listings_answered_late(
    lag: usize,
    done: impl Fn(&LateAnswers) -> bool,
) -> SetupResult<LateAnswers> {
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
    let finished = || seen.lock().map_or(true, |s| done(&s));
    let clients = (0..100).map(|_| async {
        while !finished() {
            let (_, status) = catalog.priced("1").await?;
            if status.as_deref() != Some("unavailable") {
                return Err(format!("X-Discount-Status {status:?}").into());
            }
        }
        SetupResult::Ok(())
    });
    // A bound, not a wait: on a machine that cancels about 1,100 calls a
    // second, only a few answers in a hundred miss the catalog's memory,
    // and a machine busy with other tests may list only a few dozen a
    // second.
    for result in tokio::time::timeout(HANG * 12, futures_util::future::join_all(clients)).await? {
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
    let seen = listings_answered_late(200, |seen| seen.sent >= 1100).await?;
    assert_eq!(
        seen.goaways,
        Vec::<u32>::new(),
        "the catalog gave up its connection"
    );
    assert_eq!(seen.connections, 1, "{seen:?}");

    // Later still than the catalog remembers: its resets are no longer
    // counted against the connection's life. How many answers land on a
    // stream the catalog still remembers depends on how fast the machine
    // cancels (h2 forgets a cancelled stream after a second), so this runs
    // until the catalog has sent more resets than h2's old lifetime cap.
    let seen = listings_answered_late(1100, |seen| seen.stream_closed > 1024).await?;
    assert_eq!(
        seen.goaways,
        Vec::<u32>::new(),
        "the catalog gave up its connection"
    );
    assert_eq!(seen.connections, 1, "{seen:?}");
    Ok(())
}
