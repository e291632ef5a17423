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
