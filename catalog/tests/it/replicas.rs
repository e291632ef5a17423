//! Several discount replicas behind one catalog: spreading calls, replicas
//! that stop, die, hang or are added and removed behind a name, and a
//! discount that sheds load. Real servers in-process on `127.0.0.1:0`,
//! TLS with certificates made at run time.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{CUSTOMER_1, Catalog, HEALTHY_DEADLINE, PLAIN};
use catalog::discount::{Resolve, Resolving};
use futures_util::StreamExt;
use reqwest::StatusCode;
use testkit::{
    CountingProxy, DiscountServer, HANG, Pki, ScriptedDiscount, SeedStylePeer, SetupResult,
};

/// Health checks five times a second, so that the tests do not wait long.
const FAST_CHECKS: [&str; 2] = ["--discount-health-interval", "200ms"];

/// `/metrics` on a port of its own, read with [`metric`].
const METRICS: [&str; 2] = ["--metrics-addr", "127.0.0.1:0"];

/// Listings sent a second time, as the catalog's `/metrics` says now.
async fn retries(catalog: &Catalog) -> SetupResult<f64> {
    metric(catalog, "catalog_discount_retries_total", "").await
}

/// A discount that answers like the real one and counts its calls.
fn counting() -> (ScriptedDiscount, Arc<AtomicUsize>) {
    let scripted = ScriptedDiscount {
        batch: true,
        ..ScriptedDiscount::default()
    };
    let calls = scripted.calls.clone();
    (scripted, calls)
}

/// `n` counting discounts with the flags `args`.
async fn replicas(
    pki: &Pki,
    n: usize,
    args: &[&str],
) -> SetupResult<(Vec<DiscountServer>, Vec<Arc<AtomicUsize>>)> {
    let (mut servers, mut calls) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (scripted, counter) = counting();
        servers.push(DiscountServer::start_with(pki, args, scripted).await?);
        calls.push(counter);
    }
    Ok((servers, calls))
}

/// A catalog dialling every one of `addrs`, with `extra` flags.
async fn catalog_for(
    addrs: &[SocketAddr],
    pki: &Pki,
    deadline: &str,
    extra: &[&str],
) -> SetupResult<Catalog> {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let mut args = vec!["--discount-server-name", "localhost"];
    args.extend_from_slice(extra);
    Catalog::start_with(&list.join(","), &pki.path("ca.pem"), deadline, &args).await
}

fn counts(calls: &[Arc<AtomicUsize>]) -> Vec<usize> {
    calls.iter().map(|c| c.load(Ordering::SeqCst)).collect()
}

/// How a run of listings went.
#[derive(Debug, Default)]
struct Tally {
    applied: usize,
    /// Every other answer: status, `X-Discount-Status` and whether the
    /// body was whole.
    other: Vec<String>,
    /// The slowest listing.
    slowest: Duration,
}

impl Tally {
    fn add(&mut self, answer: SetupResult<crate::support::Answer>, took: Duration) {
        self.slowest = self.slowest.max(took);
        match answer {
            Ok(answer)
                if answer.status == StatusCode::OK
                    && answer.discount_status.as_deref() == Some("applied")
                    && answer.body == CUSTOMER_1 =>
            {
                self.applied += 1;
            }
            Ok(answer) => self.other.push(format!(
                "{} {:?} whole: {}",
                answer.status,
                answer.discount_status,
                answer.body == CUSTOMER_1 || answer.body == PLAIN
            )),
            Err(error) => self.other.push(error.to_string()),
        }
    }
}

/// `count` listings for customer 1, `concurrency` at a time.
async fn listings(catalog: &Catalog, count: usize, concurrency: usize) -> Tally {
    let answers: Vec<_> = futures_util::stream::iter(0..count)
        .map(|_| async {
            let started = Instant::now();
            let answer = catalog.get("/products", Some(b"1")).await;
            (answer, started.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (answer, took) in answers {
        tally.add(answer, took);
    }
    tally
}

/// Listings for customer 1 from `workers` clients, each sending one after
/// the other, for `period`.
async fn listings_for(catalog: &Catalog, workers: usize, period: Duration) -> Tally {
    let end = Instant::now() + period;
    let tallies = futures_util::future::join_all((0..workers).map(|_| async move {
        let mut tally = Tally::default();
        while Instant::now() < end {
            let started = Instant::now();
            let answer = catalog.get("/products", Some(b"1")).await;
            tally.add(answer, started.elapsed());
        }
        tally
    }))
    .await;
    let mut total = Tally::default();
    for tally in tallies {
        total.applied += tally.applied;
        total.other.extend(tally.other);
        total.slowest = total.slowest.max(tally.slowest);
    }
    total
}

#[tokio::test]
async fn listings_are_spread_over_every_replica() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (servers, calls) = replicas(&pki, 3, &[]).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(DiscountServer::addr).collect();
    let catalog = catalog_for(&addrs, &pki, HEALTHY_DEADLINE, &[]).await?;
    let ready = catalog.readiness_becomes(StatusCode::OK).await?;
    assert!(
        ready
            .body
            .starts_with("ready: 3 of 3 discount replicas serving\n"),
        "{}",
        ready.body
    );

    let tally = listings(&catalog, 300, 32).await;
    assert_eq!((tally.applied, tally.other), (300, Vec::<String>::new()));
    let served = counts(&calls);
    eprintln!("300 listings at 32 in flight: calls per replica {served:?}");
    assert_eq!(served.iter().sum::<usize>(), 300, "{served:?}");
    for calls in &served {
        assert!(*calls >= 60, "a replica served under 20%: {served:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_stopped_gracefully_costs_no_listing() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (mut servers, calls) = replicas(&pki, 3, &["--shutdown-delay", "1s"]).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(DiscountServer::addr).collect();
    let catalog = catalog_for(&addrs, &pki, HEALTHY_DEADLINE, &FAST_CHECKS).await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    let mut stopping = servers.remove(0);
    let (tally, stopped) =
        tokio::join!(listings_for(&catalog, 16, Duration::from_secs(3)), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            // NOT_SERVING for a second, then GOAWAY, drain and close.
            stopping.begin_stop();
            let at = counts(&calls)[0];
            (stopping.stopped_within(Duration::from_secs(10)).await, at)
        });
    let (stopped, at_stop) = stopped;
    stopped?;
    let served = counts(&calls);
    eprintln!(
        "graceful stop: {} applied, others {:?}; calls {served:?} ({at_stop} on the first before its stop)",
        tally.applied, tally.other
    );
    assert_eq!(tally.other, Vec::<String>::new());
    assert!(tally.applied > 100, "{}", tally.applied);
    assert!(at_stop > 0, "the stopped replica had calls before");
    Ok(())
}

#[tokio::test]
async fn a_replica_killed_hard_costs_no_listing_and_gets_no_calls_once_ejected() -> SetupResult<()>
{
    let pki = Pki::generate()?;
    let (servers, calls) = replicas(&pki, 3, &[]).await?;
    let mut proxies = Vec::new();
    for server in &servers {
        proxies.push(CountingProxy::start(server.addr()).await?);
    }
    let addrs: Vec<SocketAddr> = proxies.iter().map(CountingProxy::addr).collect();
    let catalog = catalog_for(
        &addrs,
        &pki,
        HEALTHY_DEADLINE,
        &[FAST_CHECKS, METRICS].concat(),
    )
    .await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    let (tally, ()) = tokio::join!(listings_for(&catalog, 16, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Listener and every connection gone at once, as a dead host.
        proxies[0].kill();
    });
    let retried = retries(&catalog).await?;
    eprintln!(
        "hard kill: {} applied, others {:?}; calls {:?}; {retried} retries",
        tally.applied,
        tally.other,
        counts(&calls)
    );
    assert_eq!(tally.other, Vec::<String>::new(), "failover missed");
    assert!(tally.applied > 100, "{}", tally.applied);
    assert!(
        retried > 0.0,
        "nothing was in flight at the kill: {retried} retries"
    );

    // Ejected: no call goes to it, so none needs sending again.
    let replicas = catalog.discount.replicas();
    let dead = replicas
        .iter()
        .find(|r| r.addr == addrs[0])
        .ok_or("the dead replica is not listed")?;
    assert!(!dead.serving && dead.state.contains("ejected"), "{dead:?}");
    let tally = listings(&catalog, 200, 16).await;
    assert_eq!((tally.applied, tally.other), (200, Vec::<String>::new()));
    assert_eq!(retries(&catalog).await?, retried);
    Ok(())
}

#[tokio::test]
async fn a_replica_that_accepts_and_never_answers_is_ejected_and_then_costs_nothing()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (servers, _calls) = replicas(&pki, 2, &[]).await?;
    let (hung, _) = testkit::silent_peer().await?;
    let addrs = [hung, servers[0].addr(), servers[1].addr()];
    let started = Instant::now();
    let catalog = catalog_for(&addrs, &pki, "1s", &[]).await?;

    // Before it is found out, a listing costs at most the deadline.
    let before = listings(&catalog, 32, 16).await;
    eprintln!(
        "before ejection: {} applied, {} others, slowest {:?}",
        before.applied,
        before.other.len(),
        before.slowest
    );
    assert!(
        before.slowest < Duration::from_millis(1500),
        "{:?}",
        before.slowest
    );

    // Its health check goes unanswered: out within about one period (1 s).
    loop {
        let replicas = catalog.discount.replicas();
        if replicas
            .iter()
            .any(|r| r.addr == hung && r.state.contains("ejected"))
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("not ejected: {replicas:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ejected_after = started.elapsed();
    eprintln!("hung replica ejected after {ejected_after:?}");
    assert!(ejected_after < Duration::from_secs(3), "{ejected_after:?}");

    let after = listings(&catalog, 200, 16).await;
    eprintln!("after ejection: slowest {:?}", after.slowest);
    assert_eq!((after.applied, after.other), (200, Vec::<String>::new()));
    assert!(
        after.slowest < Duration::from_millis(500),
        "{:?}",
        after.slowest
    );
    Ok(())
}

/// A resolver whose answers the test sets.
#[derive(Debug, Default)]
struct Answers(Mutex<BTreeMap<String, Vec<SocketAddr>>>);

impl Answers {
    fn set(&self, host: &str, addrs: &[SocketAddr]) {
        if let Ok(mut table) = self.0.lock() {
            table.insert(host.to_owned(), addrs.to_vec());
        }
    }
}

impl Resolve for Answers {
    fn resolve(&self, host: &str, _port: u16) -> Resolving {
        let answer = self
            .0
            .lock()
            .ok()
            .and_then(|table| table.get(host).cloned());
        Box::pin(async move { answer.ok_or_else(|| io::Error::other("no such name")) })
    }
}

#[tokio::test]
async fn replicas_added_and_removed_behind_a_name_gain_and_lose_calls_within_a_period()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (servers, calls) = replicas(&pki, 3, &[]).await?;
    let [a, b, c] = [0, 1, 2].map(|i| servers[i].addr());
    let answers = Arc::new(Answers::default());
    answers.set("discount.test", &[a, b]);
    let catalog = Catalog::start_resolving(
        "discount.test:11443",
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &[
            "--discount-server-name",
            "localhost",
            "--discount-resolve-interval",
            "200ms",
        ],
        answers.clone(),
    )
    .await?;
    catalog.readiness_becomes(StatusCode::OK).await?;
    let tally = listings(&catalog, 60, 8).await;
    assert_eq!(tally.applied, 60, "{:?}", tally.other);
    let served = counts(&calls);
    assert!(
        served[0] > 0 && served[1] > 0 && served[2] == 0,
        "{served:?}"
    );

    // A third replica appears in the answers.
    answers.set("discount.test", &[a, b, c]);
    let added = Instant::now();
    while counts(&calls)[2] == 0 {
        let tally = listings(&catalog, 8, 8).await;
        assert_eq!(tally.applied, 8, "{:?}", tally.other);
        assert!(
            added.elapsed() < Duration::from_secs(5),
            "the new replica got no call"
        );
    }
    let joined = added.elapsed();
    eprintln!("new replica called after {joined:?}");
    assert!(joined < Duration::from_millis(1000), "{joined:?}");

    // The first one disappears from them.
    answers.set("discount.test", &[b, c]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counts(&calls);
    let tally = listings(&catalog, 60, 8).await;
    assert_eq!(tally.applied, 60, "{:?}", tally.other);
    let after = counts(&calls);
    eprintln!("after removal: {before:?} -> {after:?}");
    assert_eq!(after[0], before[0], "the removed replica still gets calls");
    assert!(after[1] > before[1] && after[2] > before[2], "{after:?}");
    let listed = catalog.readiness().await?.body;
    assert!(!listed.contains(&a.to_string()), "{listed}");
    Ok(())
}

#[tokio::test]
async fn with_every_replica_down_listings_are_whole_and_calls_stay_within_the_budget()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let mut closed = Vec::new();
    for _ in 0..3 {
        closed.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await?
                .local_addr()?,
        );
    }
    let catalog = catalog_for(&closed, &pki, HEALTHY_DEADLINE, &METRICS).await?;
    let tally = listings(&catalog, 100, 10).await;
    assert_eq!(tally.applied, 0);
    assert_eq!(tally.other.len(), 100);
    for other in &tally.other {
        assert_eq!(other, "200 OK Some(\"unavailable\") whole: true");
    }
    let ready = catalog
        .readiness_becomes(StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    assert!(
        ready
            .body
            .starts_with("not ready: 0 of 3 discount replicas serving\n"),
        "{}",
        ready.body
    );
    // Each refusal ejects its replica: at most the first wave of listings
    // (10 in flight) sends anything, once and once again.
    let attempts = metric(&catalog, "catalog_discount_calls_total{", "").await?;
    let retried = retries(&catalog).await?;
    let sent = format!("{attempts} calls, {retried} retries");
    eprintln!("100 listings with every replica down: {sent}");
    assert!(attempts <= 20.0, "{sent}");
    assert!(retried * 2.0 <= attempts, "{sent}");
    Ok(())
}

#[tokio::test]
async fn an_overloaded_replica_sheds_at_once_and_the_catalog_lists_what_it_could_not_price()
-> SetupResult<()> {
    const LIMIT: usize = 4;
    let pki = Pki::generate()?;
    let (slow, _arrivals) = ScriptedDiscount::reporting(Duration::from_secs(2));
    let slow = ScriptedDiscount {
        batch: true,
        ..slow
    };
    let answered = Arc::clone(&slow.answered);
    let discount = DiscountServer::start_with(&pki, &["--max-concurrent-calls", "4"], slow).await?;

    // Straight to discount: LIMIT calls taken, the rest refused at once.
    let channel = testkit::grpc_channel(discount.addr(), &pki).await?;
    let calls = (0..LIMIT * 10).map(|_| {
        let mut client = ecommerce_proto::pb::discount_client::DiscountClient::new(channel.clone());
        let answered = Arc::clone(&answered);
        async move {
            let started = Instant::now();
            let request = testkit::discount_request(1, testkit::product(1, 1000));
            let answer = client.apply_discount(request).await;
            // Whether a held call had ended (freeing a place) by then.
            let place_freed = answered.load(Ordering::SeqCst) > 0;
            let code = answer.err().map(|status| status.code());
            (code, started.elapsed(), place_freed)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let shed: Vec<&(Option<tonic::Code>, Duration, bool)> = answers
        .iter()
        .filter(|(code, ..)| *code == Some(tonic::Code::ResourceExhausted))
        .collect();
    let served = answers.iter().filter(|(code, ..)| code.is_none()).count();
    eprintln!("{served} served, {} shed: {shed:?}", shed.len());
    assert_eq!((served, shed.len()), (LIMIT, LIMIT * 9));
    // Refused at once, not after waiting for a place: a place frees only
    // when a held call ends (2 s after it began), and every refusal came
    // while all of them were still held. (Bounds in milliseconds failed on
    // a busy 2-core machine, where the run queue alone delays a call.)
    assert!(
        shed.iter().all(|(_, _, place_freed)| !place_freed),
        "a shed call waited for a place: {shed:?}"
    );

    // Through the catalog: nothing dropped, the excess listed plain.
    let catalog = catalog_for(&[discount.addr()], &pki, HEALTHY_DEADLINE, &[]).await?;
    catalog.readiness_becomes(StatusCode::OK).await?;
    let tally = listings(&catalog, LIMIT * 10, LIMIT * 10).await;
    eprintln!("catalog: {} applied, {:?}", tally.applied, tally.other);
    assert_eq!(tally.applied + tally.other.len(), LIMIT * 10);
    assert!(
        tally.applied >= 1 && tally.applied <= LIMIT,
        "{}",
        tally.applied
    );
    for other in &tally.other {
        assert_eq!(other, "200 OK Some(\"unavailable\") whole: true");
    }
    Ok(())
}

#[tokio::test]
async fn a_seed_style_peer_without_health_or_batch_is_a_replica_like_the_others() -> SetupResult<()>
{
    let pki = Pki::generate()?;
    let (servers, calls) = replicas(&pki, 2, &[]).await?;
    let seed_service = ScriptedDiscount::default();
    let seed_calls = seed_service.calls.clone();
    let seed = SeedStylePeer::start(&pki, seed_service).await?;
    let addrs = [seed.addr(), servers[0].addr(), servers[1].addr()];
    let catalog = catalog_for(&addrs, &pki, HEALTHY_DEADLINE, &[]).await?;
    let ready = catalog.readiness_becomes(StatusCode::OK).await?;
    // Its health service is UNIMPLEMENTED: in rotation, said so.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut listed = ready.body;
    while !listed.contains(&format!("{} serving (no health service)", seed.addr())) {
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        listed = catalog.readiness().await?.body;
    }

    let tally = listings(&catalog, 90, 8).await;
    assert_eq!((tally.applied, tally.other), (90, Vec::<String>::new()));
    let (seed_calls, others) = (seed_calls.load(Ordering::SeqCst), counts(&calls));
    eprintln!("seed-style peer: {seed_calls} calls; the others {others:?}");
    // One UNIMPLEMENTED batch, then one ApplyDiscount per product.
    assert!(seed_calls > 3 * 10, "{seed_calls}");
    assert!(others.iter().all(|c| *c >= 10), "{others:?}");
    Ok(())
}

#[tokio::test]
async fn a_replica_that_answers_not_serving_after_an_ejection_is_a_fallback_not_a_busy_loop()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (scripted, _calls) = counting();
    let mut discount =
        DiscountServer::start_with(&pki, &["--shutdown-delay", "10s"], scripted).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let catalog = catalog_for(&[proxy.addr()], &pki, HEALTHY_DEADLINE, &FAST_CHECKS).await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    // Frozen for a second: its health check times out and it is ejected.
    let state = || catalog.discount.replicas().first().map(|r| r.state.clone());
    let (_, ejected) = tokio::join!(proxy.stall(Duration::from_secs(1)), async {
        let until = Instant::now() + Duration::from_secs(5);
        while !state().unwrap_or_default().starts_with("ejected") && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state()
    });
    assert!(
        ejected.unwrap_or_default().starts_with("ejected"),
        "never ejected"
    );

    // Back, but shutting down: its probe answers NOT_SERVING. That ends
    // the ejection; it was stuck "ejected, next probe in 0.0s", probed
    // without a pause, and no listing reached it.
    discount.begin_stop();
    let until = Instant::now() + Duration::from_secs(5);
    while state().as_deref() != Some("not serving (NOT_SERVING)") {
        assert!(Instant::now() < until, "{:?}", state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The only replica, not serving but answering: it still prices.
    let tally = listings(&catalog, 20, 4).await;
    assert_eq!((tally.applied, tally.other), (20, Vec::<String>::new()));
    Ok(())
}

/// What `/readyz` says of the replica at `addr` (empty if unknown).
fn state_of(catalog: &Catalog, addr: SocketAddr) -> String {
    catalog
        .discount
        .replicas()
        .into_iter()
        .find(|replica| replica.addr == addr)
        .map(|replica| replica.state)
        .unwrap_or_default()
}

/// The wait of an ejection, from its state ("ejected (...), next probe in
/// 0.4s").
fn ejection_wait(state: &str) -> Option<f64> {
    let rest = state.strip_prefix("ejected")?;
    let (_, wait) = rest.split_once("next probe in ")?;
    wait.strip_suffix('s')?.parse().ok()
}

/// Sends listings two at a time, for 15 s at most, until the replica at
/// `addr` has been ejected `wanted` times; returns each ejection's wait as
/// first seen. A new ejection is one seen after the replica was back, or
/// one whose wait is longer than what was left of the last.
async fn ejections(catalog: &Catalog, addr: SocketAddr, wanted: usize) -> Vec<f64> {
    let mut waits = Vec::new();
    let mut last: Option<f64> = None;
    let until = Instant::now() + Duration::from_secs(15);
    let traffic = listings_for(catalog, 2, Duration::from_secs(15));
    tokio::pin!(traffic);
    while waits.len() < wanted && Instant::now() < until {
        tokio::select! {
            _ = &mut traffic => break,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let wait = ejection_wait(&state_of(catalog, addr));
        if let Some(wait) = wait
            && last.is_none_or(|last| wait > last + 0.05)
        {
            waits.push(wait);
        }
        last = wait;
    }
    waits
}

#[tokio::test]
async fn a_replica_whose_calls_fail_fast_is_ejected_for_longer_each_time_until_a_call_succeeds()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (healthy, healthy_calls) = replicas(&pki, 1, &[]).await?;
    // Its health check says SERVING, every call fails at once: having
    // fewer calls in flight, it would draw more than its share.
    let (failing, failing_calls) = counting();
    let broken = failing.failing.clone();
    broken.store(true, Ordering::SeqCst);
    let failing = DiscountServer::start_with(&pki, &[], failing).await?;
    let catalog = catalog_for(
        &[healthy[0].addr(), failing.addr()],
        &pki,
        HEALTHY_DEADLINE,
        &[
            &FAST_CHECKS[..],
            &[
                "--discount-backoff-min",
                "400ms",
                "--discount-backoff-max",
                "10s",
            ],
        ]
        .concat(),
    )
    .await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    let before = failing_calls.load(Ordering::SeqCst);
    let waits = ejections(&catalog, failing.addr(), 3).await;
    let failed_listings = failing_calls.load(Ordering::SeqCst) - before;
    eprintln!("ejections {waits:?}; {failed_listings} listings failed on it");
    assert_eq!(waits.len(), 3, "{waits:?}");
    // The first lasts at most the minimum; the probe that ends it passes
    // (the health check is fine), but the schedule goes on doubling
    // because no call succeeded: the third is at least twice the minimum,
    // jittered down by half.
    assert!(waits[0] <= 0.45, "{waits:?}");
    assert!(waits[2] >= 0.55, "{waits:?}");
    // Three failed listings an ejection, give or take the two in flight.
    assert!(
        failed_listings <= 3 * (EJECT_AFTER + 2),
        "{failed_listings}"
    );
    assert!(healthy_calls[0].load(Ordering::SeqCst) > failed_listings);

    // Fixed: its next probe brings it back, a call succeeds, and the
    // schedule starts again from the minimum.
    broken.store(false, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(10);
    let recovered = failing_calls.load(Ordering::SeqCst);
    while failing_calls.load(Ordering::SeqCst) == recovered {
        assert!(
            Instant::now() < until,
            "{}",
            state_of(&catalog, failing.addr())
        );
        let tally = listings(&catalog, 4, 2).await;
        assert_eq!((tally.applied, tally.other), (4, Vec::<String>::new()));
    }
    broken.store(true, Ordering::SeqCst);
    let waits = ejections(&catalog, failing.addr(), 1).await;
    assert!(waits.first().is_some_and(|wait| *wait <= 0.45), "{waits:?}");
    Ok(())
}

/// Calls in a row that fail before a replica is ejected (the catalog's
/// `EJECT_AFTER`).
const EJECT_AFTER: usize = 3;

#[tokio::test]
async fn a_slow_listing_on_a_seed_style_peer_is_one_failure_not_one_per_product() -> SetupResult<()>
{
    let pki = Pki::generate()?;
    let (healthy, _calls) = replicas(&pki, 1, &[]).await?;
    let slow = ScriptedDiscount {
        delay: Duration::from_secs(3),
        ..ScriptedDiscount::default()
    };
    let slow_calls = slow.calls.clone();
    let seed = SeedStylePeer::start(&pki, slow).await?;
    let catalog = catalog_for(&[healthy[0].addr(), seed.addr()], &pki, "300ms", &[]).await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    // Until a listing has gone to the slow peer: its three ApplyDiscount
    // calls all miss the deadline, which is one failed listing.
    let until = Instant::now() + Duration::from_secs(10);
    while slow_calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < until, "the peer never got a listing");
        catalog.get("/products", Some(b"1")).await?;
    }
    assert_eq!(
        slow_calls.load(Ordering::SeqCst),
        1 + 3,
        "one batch, then three"
    );
    let state = state_of(&catalog, seed.addr());
    assert_eq!(state, "serving (no health service)");
    Ok(())
}

#[tokio::test]
async fn a_replica_restarted_with_apply_discounts_at_the_same_address_is_sent_the_batch_again()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let old = ScriptedDiscount::default();
    let old_calls = old.calls.clone();
    let seed = SeedStylePeer::start(&pki, old).await?;
    let addr = seed.addr();
    let catalog = catalog_for(&[addr], &pki, HEALTHY_DEADLINE, &FAST_CHECKS).await?;
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);
    assert_eq!(
        old_calls.load(Ordering::SeqCst),
        1 + 3,
        "one batch, then three"
    );

    // Upgraded in place: the same address, now with ApplyDiscounts and a
    // health service.
    seed.stop().await?;
    let (new, new_calls) = counting();
    let _upgraded = DiscountServer::start_in(pki.dir(), addr.port(), &[], new).await?;
    let until = Instant::now() + Duration::from_secs(10);
    while state_of(&catalog, addr) != "serving" {
        assert!(Instant::now() < until, "{}", state_of(&catalog, addr));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);
    assert_eq!(
        new_calls.load(Ordering::SeqCst),
        1,
        "one ApplyDiscounts call"
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_keeps_what_the_catalog_knows_of_each_replica() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (mut servers, calls) = replicas(&pki, 2, &["--shutdown-delay", "10s"]).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(DiscountServer::addr).collect();
    let catalog = catalog_for(&addrs, &pki, HEALTHY_DEADLINE, &FAST_CHECKS).await?;
    catalog.readiness_becomes(StatusCode::OK).await?;
    // The second is shutting down: it says NOT_SERVING.
    servers[1].begin_stop();
    let until = Instant::now() + Duration::from_secs(5);
    while state_of(&catalog, addrs[1]) != "not serving (NOT_SERVING)" {
        assert!(Instant::now() < until, "{}", state_of(&catalog, addrs[1]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New connections, the same knowledge: the stopping replica is not
    // taken back into rotation until a check says so.
    let before = catalog.discount.replicas();
    assert_eq!(catalog.discount.reload(), Ok(()));
    assert_eq!(catalog.discount.replicas(), before);
    let stopping = calls[1].load(Ordering::SeqCst);
    let tally = listings(&catalog, 20, 4).await;
    assert_eq!((tally.applied, tally.other), (20, Vec::<String>::new()));
    assert_eq!(calls[1].load(Ordering::SeqCst), stopping);
    Ok(())
}

#[tokio::test]
async fn readyz_stays_short_when_a_name_resolves_to_many_replicas() -> SetupResult<()> {
    let pki = Pki::generate()?;
    // Forty addresses where nothing listens.
    let addrs: Vec<SocketAddr> = (1..=40)
        .map(|last| SocketAddr::from(([127, 0, 0, last], 9)))
        .collect();
    let answers = Arc::new(Answers::default());
    answers.set("discount.test", &addrs);
    let catalog = Catalog::start_resolving(
        "discount.test:9",
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--discount-server-name", "localhost"],
        answers,
    )
    .await?;
    let until = Instant::now() + Duration::from_secs(5);
    while catalog.discount.replicas().len() < addrs.len() {
        assert!(Instant::now() < until, "the name was never resolved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = catalog.readiness().await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let lines: Vec<&str> = ready.body.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"not ready: 0 of 40 discount replicas serving")
    );
    // The status, 32 replicas, how many more, and the data's line.
    assert_eq!(lines.len(), 1 + 32 + 1 + 1, "{}", ready.body);
    assert_eq!(lines.get(33), Some(&"and 8 more"));
    Ok(())
}

/// One way a replica beside a good one can be bad while its health check
/// (mostly) says SERVING.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// Every call of either method answered at once with this code.
    Status(tonic::Code),
    /// Every call's stream refused (`RST_STREAM(REFUSED_STREAM)`); its
    /// health check answered SERVING, or refused too.
    RefusedStream { healthy: bool },
    /// Answers that it changes before sending: it holds discount's
    /// certificate and lies.
    Tampered(fn(&mut ecommerce_proto::pb::Product)),
    /// Every call of this number hangs past the deadline; the others are
    /// answered at once: never three failures in a row.
    HangsEvery(usize),
}

impl Bad {
    /// Starts the replica: its address, and what keeps it running.
    async fn start(self, pki: &Pki) -> SetupResult<(SocketAddr, Box<dyn std::any::Any + Send>)> {
        let scripted = match self {
            Self::RefusedStream { healthy } => {
                let peer = testkit::RefusingPeer::start(pki, healthy).await?;
                return Ok((peer.addr(), Box::new(peer)));
            }
            Self::Status(code) => ScriptedDiscount {
                batch: true,
                fail_code: Some(code),
                ..ScriptedDiscount::default()
            },
            Self::Tampered(tamper) => ScriptedDiscount {
                batch: true,
                tamper: Some(tamper),
                ..ScriptedDiscount::default()
            },
            Self::HangsEvery(every) => ScriptedDiscount {
                batch: true,
                hang_every: every,
                ..ScriptedDiscount::default()
            },
        };
        scripted
            .failing
            .store(matches!(self, Self::Status(_)), Ordering::SeqCst);
        let server = DiscountServer::start_with(pki, &[], scripted).await?;
        Ok((server.addr(), Box::new(server)))
    }
}

/// How listings went while a bad replica was beside a good one.
#[derive(Debug, Default)]
struct Exposure {
    /// Listings that began after the first second...
    after_first_second: usize,
    /// ...and of those, the ones not `applied`.
    not_applied: Vec<String>,
    /// Listings, at any time, that were not 200 with the three products,
    /// each with discount's true answer or none: a lost product, or a
    /// price the bad replica made up.
    broken: Vec<String>,
    /// Whether `/readyz`, polled during the load, ever said the bad
    /// replica was out and one of two serving...
    readyz_said_out: bool,
    /// ...and the last thing it said of it.
    readyz_last: String,
}

/// Whether `body` lists the seed's three products, each as discount
/// prices it for customer 1 or without a discount.
fn whole_and_honest(body: &str) -> bool {
    let parse = |text: &str| serde_json::from_str::<Vec<serde_json::Value>>(text).ok();
    let (Some(listed), Some(priced), Some(plain)) = (parse(body), parse(CUSTOMER_1), parse(PLAIN))
    else {
        return false;
    };
    listed.len() == 3
        && listed
            .iter()
            .zip(priced.iter().zip(&plain))
            .all(|(product, (priced, plain))| product == priced || product == plain)
}

/// Listings judged after the first second, at least: a share of 1% needs
/// many, which a busy machine lists more slowly; and a bad replica costs
/// less the longer the test runs, as its ejections grow longer.
const JUDGED: usize = 1000;

/// Listings for customer 1 from `workers` clients one after the other for
/// `period` and until [`JUDGED`] were sent after the first second (at most
/// [`HANG`] * 3), while `/readyz` is polled for what it says of `bad`.
async fn exposure(
    catalog: &Catalog,
    bad: SocketAddr,
    workers: usize,
    period: Duration,
) -> Exposure {
    let started = Instant::now();
    let end = started + period;
    let judged = AtomicUsize::new(0);
    let running = || {
        (Instant::now() < end || judged.load(Ordering::SeqCst) < JUDGED)
            && started.elapsed() < HANG * 3
    };
    let load = futures_util::future::join_all((0..workers).map(|_| async {
        let mut seen = Vec::new();
        while running() {
            let sent = Instant::now();
            if sent.duration_since(started) >= Duration::from_secs(1) {
                judged.fetch_add(1, Ordering::SeqCst);
            }
            let answer = catalog.get("/products", Some(b"1")).await;
            seen.push((sent.duration_since(started), answer));
        }
        seen
    }));
    let watch = async {
        let (mut said_out, mut last) = (false, String::new());
        while running() {
            if let Ok(ready) = catalog.readiness().await {
                let line = ready
                    .body
                    .lines()
                    .find(|line| line.starts_with(&bad.to_string()))
                    .unwrap_or_default()
                    .to_owned();
                let out = line.contains("ejected") || line.contains("refuses this catalog");
                said_out |= out && ready.status == StatusCode::OK;
                last = line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (said_out, last)
    };
    let (seen, (readyz_said_out, readyz_last)) = tokio::join!(load, watch);
    let mut exposure = Exposure {
        readyz_said_out,
        readyz_last,
        ..Exposure::default()
    };
    for (at, answer) in seen.into_iter().flatten() {
        let described = match &answer {
            Ok(answer) => format!("{at:?}: {} {:?}", answer.status, answer.discount_status),
            Err(error) => format!("{at:?}: {error}"),
        };
        let answer = answer.ok();
        if !answer
            .as_ref()
            .is_some_and(|a| a.status == StatusCode::OK && whole_and_honest(&a.body))
        {
            exposure.broken.push(described.clone());
        }
        if at >= Duration::from_secs(1) {
            exposure.after_first_second += 1;
            if answer.is_none_or(|a| a.discount_status.as_deref() != Some("applied")) {
                exposure.not_applied.push(described);
            }
        }
    }
    exposure
}

/// A good replica and `bad` behind one catalog at its default flags,
/// under 16 clients for 3 s: at most 1% of the listings after the first
/// second are not `applied`, none is broken, `/readyz` says the bad one is
/// out, and what it failed was sent again elsewhere. Returns the catalog,
/// for more checks.
async fn a_bad_replica_costs_at_most_one_percent(bad: Bad) -> SetupResult<Catalog> {
    bad_replicas_cost_at_most_one_percent(bad, 1).await
}

/// As [`a_bad_replica_costs_at_most_one_percent`], with `copies` of `bad`
/// beside the good replica.
async fn bad_replicas_cost_at_most_one_percent(bad: Bad, copies: usize) -> SetupResult<Catalog> {
    let pki = Pki::generate()?;
    let (good, good_calls) = replicas(&pki, 1, &[]).await?;
    let (mut addrs, mut running) = (vec![good[0].addr()], Vec::new());
    for _ in 0..copies {
        let (addr, server) = bad.start(&pki).await?;
        addrs.push(addr);
        running.push(server);
    }
    let bad_addr = addrs[1];
    let catalog = catalog_for(
        &addrs,
        &pki,
        // A hung call costs its listing the deadline: shorter than the
        // test, long enough for a debug build on a busy machine.
        if matches!(bad, Bad::HangsEvery(_)) {
            "1s"
        } else {
            HEALTHY_DEADLINE
        },
        &METRICS,
    )
    .await?;
    catalog.readiness_becomes(StatusCode::OK).await?;

    let exposure = exposure(&catalog, bad_addr, 16, Duration::from_secs(3)).await;
    let retried = retries(&catalog).await?;
    let good_calls = good_calls[0].load(Ordering::SeqCst);
    eprintln!(
        "{copies} x {bad:?}: {} listings after the first second, {} not applied {:?}; broken {:?}; \
         readyz said it was out: {} (last: {:?}); {retried} retries; the good replica had {good_calls} calls",
        exposure.after_first_second,
        exposure.not_applied.len(),
        exposure.not_applied.iter().take(5).collect::<Vec<_>>(),
        exposure.broken.iter().take(5).collect::<Vec<_>>(),
        exposure.readyz_said_out,
        exposure.readyz_last,
    );
    assert!(
        exposure.after_first_second >= 20,
        "too little load to judge"
    );
    assert!(
        exposure.not_applied.len() * 100 <= exposure.after_first_second,
        "{} of {} not applied after the first second",
        exposure.not_applied.len(),
        exposure.after_first_second
    );
    assert_eq!(exposure.broken, Vec::<String>::new());
    assert!(exposure.readyz_said_out, "last: {}", exposure.readyz_last);
    // What failed on the bad replica was sent again, and it was tried only
    // around its ejections (at 0, 1 and 3 s, and one more on a slow
    // machine), each costing at most EJECT_AFTER failures and the calls in
    // flight then: a bound that does not grow with the load.
    let bound = (4 * (EJECT_AFTER + 16) * copies) as f64;
    // (A call past its deadline has no time left to be sent again.)
    assert!(
        retried > 0.0 || matches!(bad, Bad::HangsEvery(_)),
        "{retried} retries"
    );
    assert!(retried <= bound, "{retried} retries");
    Ok(catalog)
}

/// [`testkit::metric`] from the catalog's `/metrics`.
async fn metric(catalog: &Catalog, name: &str, labels: &str) -> SetupResult<f64> {
    testkit::metric(
        catalog.metrics_addr.ok_or("no metrics listener")?,
        name,
        labels,
    )
    .await
}

#[tokio::test]
async fn a_replica_answering_unimplemented_to_both_methods_is_ejected_and_costs_nothing()
-> SetupResult<()> {
    a_bad_replica_costs_at_most_one_percent(Bad::Status(tonic::Code::Unimplemented)).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_failing_every_call_at_once_is_ejected_and_costs_nothing() -> SetupResult<()> {
    a_bad_replica_costs_at_most_one_percent(Bad::Status(tonic::Code::Internal)).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_hanging_one_call_in_three_is_ejected_and_costs_at_most_one_percent()
-> SetupResult<()> {
    let catalog = a_bad_replica_costs_at_most_one_percent(Bad::HangsEvery(3)).await?;
    // The hung calls a hedge abandoned are in the replica's series.
    let cancelled = metric(
        &catalog,
        "catalog_discount_calls_total{",
        "code=\"CANCELLED\"",
    )
    .await?;
    assert!(cancelled >= 1.0, "{cancelled}");
    Ok(())
}

#[tokio::test]
async fn four_replicas_hanging_one_call_in_three_beside_a_good_one_cost_at_most_one_percent()
-> SetupResult<()> {
    bad_replicas_cost_at_most_one_percent(Bad::HangsEvery(3), 4).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_refusing_this_catalog_is_out_and_costs_nothing() -> SetupResult<()> {
    a_bad_replica_costs_at_most_one_percent(Bad::Status(tonic::Code::PermissionDenied)).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_refusing_every_call_stream_is_ejected_and_costs_nothing() -> SetupResult<()> {
    a_bad_replica_costs_at_most_one_percent(Bad::RefusedStream { healthy: true }).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_refusing_every_stream_health_checks_too_is_ejected_and_costs_nothing()
-> SetupResult<()> {
    a_bad_replica_costs_at_most_one_percent(Bad::RefusedStream { healthy: false }).await?;
    Ok(())
}

/// The answers a hostile replica sent: prices made up within and without
/// the product's, an impossible percentage, no discount at all.
const LIES: [fn(&mut ecommerce_proto::pb::Product); 5] = [
    |product| set_value(product, i32::MIN),
    |product| set_value(product, 1),
    |product| set_value(product, i32::MAX),
    |product| {
        if let Some(value) = &mut product.discount_value {
            value.pct = -5.0;
        }
    },
    |product| product.discount_value = None,
];

fn set_value(product: &mut ecommerce_proto::pb::Product, value_in_cents: i32) {
    if let Some(value) = &mut product.discount_value {
        value.value_in_cents = value_in_cents;
    }
}

#[tokio::test]
async fn a_replica_answering_impossible_discounts_is_never_listed_and_is_ejected() -> SetupResult<()>
{
    for lie in LIES {
        let catalog = a_bad_replica_costs_at_most_one_percent(Bad::Tampered(lie)).await?;
        let refused = metric(&catalog, "catalog_discount_answers_refused_total ", "").await?;
        assert!(refused >= 3.0, "{refused}");
    }
    Ok(())
}
