//! The catalog under faults and load: discount down, restarted, hung,
//! failing for one product, untrusted; many requests at once; readiness;
//! graceful shutdown. Real servers in-process on loopback, bounded in count
//! and time.

use std::time::{Duration, Instant};

use crate::support::{CUSTOMER_1, Catalog, HEALTHY_DEADLINE, PLAIN, discount_part, system};
use discount::DiscountService;
use futures_util::StreamExt;
use reqwest::StatusCode;
use testkit::{
    CountingProxy, DiscountServer, HANG, Logs, Pki, ScriptedDiscount, SetupResult, silent_peer,
};
use tokio::net::TcpListener;

/// Customer 1's list when discount failed for product 2 only.
const CUSTOMER_1_BUT_PRODUCT_2: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{"pct":0.1,"value_in_cents":89999}},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{"pct":0.1,"value_in_cents":29699}}]"#,
    "\n"
);

fn applied() -> Option<String> {
    Some("applied".to_owned())
}

fn unavailable() -> Option<String> {
    Some("unavailable".to_owned())
}

/// Asks for customer 1's list until it is discounted again, at most
/// `attempts` times, 50 ms apart. Returns the last answer.
async fn until_discounted(
    catalog: &Catalog,
    attempts: usize,
) -> SetupResult<(String, Option<String>)> {
    let mut answer = catalog.priced("1").await?;
    for _ in 1..attempts {
        if answer.0 == CUSTOMER_1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = catalog.priced("1").await?;
    }
    Ok(answer)
}

#[tokio::test]
async fn when_discount_was_never_up_every_product_is_listed_as_unavailable() -> SetupResult<()> {
    let pki = Pki::generate()?;
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let catalog =
        Catalog::start(&closed.to_string(), &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        catalog.priced("1").await?,
        (PLAIN.to_owned(), unavailable())
    );
    Ok(())
}

#[tokio::test]
async fn after_discount_stops_and_restarts_the_catalog_recovers_by_itself() -> SetupResult<()> {
    let (pki, discount, catalog) = system().await?;
    let addr = discount.addr();
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );

    discount.stop().await?;
    assert_eq!(
        catalog.priced("1").await?,
        (PLAIN.to_owned(), unavailable())
    );
    assert_eq!(
        catalog.priced("2").await?,
        (PLAIN.to_owned(), unavailable())
    );

    // The same address again, and no restart of the catalog.
    let _restarted = DiscountServer::start_in(pki.dir(), addr.port(), &[], DiscountService).await?;
    assert_eq!(
        until_discounted(&catalog, 100).await?,
        (CUSTOMER_1.to_owned(), applied())
    );
    Ok(())
}

#[tokio::test]
async fn a_discount_that_never_answers_costs_at_most_the_deadline_and_drops_nothing()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (addr, _) = silent_peer().await?;
    let catalog = Catalog::start(&addr.to_string(), &pki.path("ca.pem"), "300ms").await?;

    let started = Instant::now();
    let answer = tokio::time::timeout(HANG, catalog.priced("1")).await??;
    assert_eq!(answer, (PLAIN.to_owned(), unavailable()));
    // One ApplyDiscounts call, so one deadline for the whole listing (the
    // seed waited 10 s per product here). The margin absorbs a slow CI
    // machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn when_one_products_call_fails_the_others_are_still_discounted() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let flaky = ScriptedDiscount {
        fail_product: Some(2),
        ..ScriptedDiscount::default()
    };
    let discount = DiscountServer::start_with(&pki, &[], flaky).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    assert_eq!(
        catalog.priced("1").await?,
        (
            CUSTOMER_1_BUT_PRODUCT_2.to_owned(),
            Some("partial".to_owned())
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_catalog_that_does_not_trust_discounts_certificate_lists_without_discounts()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let stranger = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let addr = discount.addr().to_string();
    let catalog = Catalog::start(&addr, &stranger.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        catalog.priced("1").await?,
        (PLAIN.to_owned(), unavailable())
    );

    // The log says it is the certificate, not the network; /readyz tells
    // any caller only the kind of failure.
    assert_cause_logged_not_told(&catalog, &logs, TLS_FAILED, "invalid peer certificate").await
}

#[tokio::test]
async fn the_server_name_is_checked_against_discounts_certificate() -> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    // Dial by "localhost", which the certificate names: discounted.
    let by_name = format!("localhost:{}", discount.addr().port());
    let catalog = Catalog::start(&by_name, &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );

    // Same server and CA, a name the certificate does not carry: refused.
    let misnamed = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--discount-server-name", "discount.example"],
    )
    .await?;
    assert_eq!(
        misnamed.priced("1").await?,
        (PLAIN.to_owned(), unavailable())
    );
    assert_cause_logged_not_told(&misnamed, &logs, TLS_FAILED, "not valid for name").await
}

#[tokio::test]
async fn a_refused_connection_is_reported_with_its_cause() -> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let catalog =
        Catalog::start(&closed.to_string(), &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    // tonic alone says "transport error"; the chain, in the log, says why.
    assert_cause_logged_not_told(&catalog, &logs, "unreachable", "Connection refused").await
}

/// What `/readyz` says of a replica whose certificate was refused.
const TLS_FAILED: &str = "TLS handshake failed";

/// `/readyz` answers that the replica is ejected and `why`, and no more,
/// while the log has the cause, `detail`.
async fn assert_cause_logged_not_told(
    catalog: &Catalog,
    logs: &Logs,
    why: &str,
    detail: &str,
) -> SetupResult<()> {
    let answer = catalog
        .readiness_becomes(StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    let (heading, replica) = answer.body.split_once('\n').unwrap_or_default();
    assert_eq!(
        (answer.status, heading),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: 0 of 1 discount replicas serving"
        )
    );
    assert!(
        replica.contains(&format!(
            " ejected ({why}; the log says why), next probe in "
        )),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains(detail),
        "{detail:?} told to the caller"
    );
    let logged = logs.line_with(detail).await;
    assert!(logged.is_some(), "{detail:?} not logged: {}", logs.text());
    Ok(())
}

/// Sends `count` requests for customer 1, `concurrency` at a time; returns
/// how many came back discounted with `X-Discount-Status: applied`.
async fn discounted_answers(catalog: &Catalog, count: usize, concurrency: usize) -> usize {
    futures_util::stream::iter(0..count)
        .map(|_| catalog.priced("1"))
        .buffer_unordered(concurrency)
        .filter(|answer| {
            let good =
                matches!(answer, Ok((body, status)) if body == CUSTOMER_1 && *status == applied());
            std::future::ready(good)
        })
        .count()
        .await
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_share_one_connection_to_discount() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;

    let good = tokio::time::timeout(
        Duration::from_secs(60),
        discounted_answers(&catalog, 300, 64),
    )
    .await?;
    assert_eq!(good, 300, "every request discounted");
    // 300 ApplyDiscounts calls, multiplexed over one HTTP/2 connection.
    assert_eq!(proxy.connections(), 1);
    Ok(())
}

#[tokio::test]
async fn dial_per_request_opens_a_connection_for_every_request_like_the_seed() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let catalog = Catalog::start_with(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--dial-per-request"],
    )
    .await?;

    let good =
        tokio::time::timeout(Duration::from_secs(60), discounted_answers(&catalog, 10, 1)).await?;
    assert_eq!(good, 10);
    // One per request, carrying that request's ApplyDiscounts call, and
    // the replica's own, for its health checks.
    assert_eq!(proxy.connections(), 11);
    Ok(())
}

#[tokio::test]
async fn healthz_is_up_whatever_discount_does_and_readyz_follows_discount() -> SetupResult<()> {
    let (pki, discount, catalog) = system().await?;
    let addr = discount.addr();
    let ready = catalog.readiness_becomes(StatusCode::OK).await?;
    assert_eq!(
        (ready.status, discount_part(&ready.body)),
        (
            StatusCode::OK,
            format!("ready: 1 of 1 discount replicas serving\n{addr} serving\n")
        )
    );

    discount.stop().await?;
    let not_ready = catalog
        .readiness_becomes(StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        not_ready.body.starts_with(&format!(
            "not ready: 0 of 1 discount replicas serving\n{addr} ejected (unreachable;"
        )),
        "{}",
        not_ready.body
    );
    let alive = catalog.get("/healthz", None).await?;
    assert_eq!(
        (alive.status, alive.body.as_str()),
        (StatusCode::OK, "ok\n")
    );

    let _restarted = DiscountServer::start_in(pki.dir(), addr.port(), &[], DiscountService).await?;
    // Back within the ejection (about a second the first time).
    let status = catalog.readiness_becomes(StatusCode::OK).await?.status;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_discount_starts_shutting_down() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let mut discount =
        DiscountServer::start_with(&pki, &["--shutdown-delay", "2s"], DiscountService).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    let ready = catalog.readiness_becomes(StatusCode::OK).await?;
    assert_eq!(ready.status, StatusCode::OK);

    discount.begin_stop();
    let stopping = Instant::now();
    let answer = catalog
        .readiness_becomes(StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    // Within about one health check period.
    assert!(
        stopping.elapsed() < Duration::from_millis(1800),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(
        (answer.status, discount_part(&answer.body)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: 0 of 1 discount replicas serving\n{} not serving (NOT_SERVING)\n",
                discount.addr()
            )
        )
    );
    // Still draining, so calls are still answered meanwhile.
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );
    Ok(())
}

#[tokio::test]
async fn a_request_in_flight_when_the_catalog_shuts_down_completes() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (slow, mut arrivals) = ScriptedDiscount::reporting(Duration::from_millis(300));
    let discount = DiscountServer::start_with(&pki, &[], slow).await?;
    let mut catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    let request = catalog.spawn_products("1");

    // Shut down exactly when the request is waiting on discount.
    tokio::time::timeout(HANG, arrivals.recv()).await?;
    catalog.begin_stop();

    let response = tokio::time::timeout(HANG, request).await???;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await?, CUSTOMER_1);
    catalog.stopped_within(HANG).await?;
    Ok(())
}

#[tokio::test]
async fn a_request_still_running_at_the_drain_limit_is_cut_off_and_the_catalog_stops()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (stuck, mut arrivals) = ScriptedDiscount::reporting(Duration::from_secs(3600));
    let discount = DiscountServer::start_with(&pki, &[], stuck).await?;
    let mut catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        "60s",
        &["--request-timeout", "60s", "--drain-timeout", "300ms"],
    )
    .await?;
    let request = catalog.spawn_products("1");
    tokio::time::timeout(HANG, arrivals.recv()).await?;

    catalog.begin_stop();
    // A stuck request does not keep the catalog up.
    catalog.stopped_within(HANG).await?;
    let outcome = tokio::time::timeout(HANG, request).await??;
    assert!(
        outcome.is_err(),
        "the stuck request was answered: {outcome:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_answered_503() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let stuck = ScriptedDiscount {
        delay: Duration::from_secs(3600),
        ..ScriptedDiscount::default()
    };
    let discount = DiscountServer::start_with(&pki, &[], stuck).await?;
    let catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        "60s",
        &["--request-timeout", "300ms"],
    )
    .await?;
    let answer = tokio::time::timeout(HANG, catalog.get("/products", Some(b"1"))).await??;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    // The catalog itself is fine: requests that need no discount still work.
    assert_eq!(
        catalog.products(None).await?,
        (StatusCode::OK, PLAIN.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn behind_a_mesh_both_sides_can_run_plaintext_when_asked_explicitly() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount =
        DiscountServer::start_with(&pki, &["--insecure-plaintext"], DiscountService).await?;
    let addr = discount.addr().to_string();
    let plaintext = Catalog::start_with(
        &addr,
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--discount-plaintext"],
    )
    .await?;
    assert_eq!(
        plaintext.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );

    // Without the flag the catalog insists on TLS, and gets no discounts.
    let tls = Catalog::start(&addr, &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(tls.priced("1").await?, (PLAIN.to_owned(), unavailable()));
    Ok(())
}

#[tokio::test]
async fn certificates_rotate_on_both_sides_without_a_restart_or_a_failed_request() -> SetupResult<()>
{
    let (old, new) = (Pki::generate()?, Pki::generate()?);
    let (discount_keys, catalog_keys) = (tempfile::tempdir()?, tempfile::tempdir()?);
    old.install_into(discount_keys.path())?;
    old.install_into(catalog_keys.path())?;

    let discount = DiscountServer::start_in(discount_keys.path(), 0, &[], DiscountService).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &catalog_keys.path().join("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );

    // discount rotates first: the catalog's open connection carries on.
    new.install_into(discount_keys.path())?;
    assert_eq!(discount.reload_tls(), Ok(()));
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );
    assert_eq!(proxy.connections(), 1);

    // A broken file on the catalog side changes nothing.
    std::fs::write(catalog_keys.path().join("client.pem"), "not a certificate")?;
    let refused = catalog.discount.reload().err().unwrap_or_default();
    assert!(refused.contains("client.pem"), "{refused}");
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );

    // Then the catalog: its next requests use a new connection with the
    // new material, which the rotated discount accepts.
    new.install_into(catalog_keys.path())?;
    assert_eq!(catalog.discount.reload(), Ok(()));
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );
    assert_eq!(proxy.connections(), 2);
    Ok(())
}

#[tokio::test]
async fn a_request_is_one_apply_discounts_call_or_one_apply_discount_per_product_for_seed_peers()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    for (batch, expected_calls) in [(true, 5), (false, 1 + 5 * 3)] {
        let discount = ScriptedDiscount {
            batch,
            ..ScriptedDiscount::default()
        };
        let calls = std::sync::Arc::clone(&discount.calls);
        let server = DiscountServer::start_with(&pki, &[], discount).await?;
        let catalog = Catalog::start(
            &server.addr().to_string(),
            &pki.path("ca.pem"),
            HEALTHY_DEADLINE,
        )
        .await?;
        for _ in 0..5 {
            // The same bytes either way.
            assert_eq!(
                catalog.priced("1").await?,
                (CUSTOMER_1.to_owned(), applied())
            );
        }
        // Without ApplyDiscounts: one UNIMPLEMENTED, then three calls a request.
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(calls, expected_calls, "batch={batch}");
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_handshake_is_retried_with_backoff_not_on_every_request() -> SetupResult<()> {
    // Keys rotated in the wrong order: the catalog's client certificate is
    // from a CA discount does not trust, so every TLS handshake fails.
    let (pki, stranger) = (Pki::generate()?, Pki::generate()?);
    let discount = DiscountServer::start(&pki).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let keys = tempfile::tempdir()?;
    pki.install_into(keys.path())?;
    std::fs::copy(stranger.path("client.pem"), keys.path().join("client.pem"))?;
    std::fs::copy(stranger.path("client.key"), keys.path().join("client.key"))?;
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &keys.path().join("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;

    let started = Instant::now();
    for _ in 0..100 {
        // Every product is still listed, at once, and says why.
        assert_eq!(
            catalog.priced("1").await?,
            (PLAIN.to_owned(), unavailable())
        );
    }
    let elapsed = started.elapsed();
    let handshakes = proxy.connections();
    eprintln!("100 requests in {elapsed:?}: {handshakes} connections to discount");
    // The first failure starts a backoff of about a second, doubling while
    // it keeps failing: a handful of attempts, not one a request.
    assert!(
        handshakes <= 2 + elapsed.as_secs() as usize,
        "{handshakes} connections for 100 requests in {elapsed:?}"
    );

    // The operator fixes the keys and reloads: new material is tried at
    // once, whatever the wait.
    pki.install_into(keys.path())?;
    assert_eq!(catalog.discount.reload(), Ok(()));
    assert_eq!(
        catalog.priced("1").await?,
        (CUSTOMER_1.to_owned(), applied())
    );
    Ok(())
}

#[tokio::test]
async fn on_shutdown_readyz_turns_503_first_and_requests_are_served_for_the_delay()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let mut catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--shutdown-delay", "1s"],
    )
    .await?;
    let ready = catalog.readiness_becomes(StatusCode::OK).await?;
    assert_eq!(ready.status, StatusCode::OK);

    catalog.begin_stop();
    let mut answer = catalog.readiness().await?;
    for _ in 0..100 {
        if answer.status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answer = catalog.readiness().await?;
    }
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n"
        )
    );
    // Still serving, new connections included, during the delay.
    let fresh = reqwest::Client::new()
        .get(format!("http://{}/products", catalog.addr))
        .header("X-USER-ID", "1")
        .send()
        .await?;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.text().await?, CUSTOMER_1);

    catalog.stopped_within(HANG).await?;
    Ok(())
}

#[tokio::test]
async fn a_hung_discount_is_logged_once_not_once_a_request() -> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let (addr, _) = silent_peer().await?;
    let catalog = Catalog::start(&addr.to_string(), &pki.path("ca.pem"), "100ms").await?;
    let answers: Vec<_> = futures_util::stream::iter(0..20)
        .map(|_| catalog.priced("1"))
        .buffer_unordered(20)
        .collect()
        .await;
    for answer in answers {
        assert_eq!(answer?, (PLAIN.to_owned(), unavailable()));
    }
    let warned = logs.lines_with("discount failed; listing these products without a discount");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("no answer from discount within 100ms"),
        "{warned:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn when_an_ejection_ends_one_health_check_probes_not_every_request_in_flight()
-> SetupResult<()> {
    // discount is down: every dial reaches the counting proxy, which finds
    // nothing behind it and hangs up.
    let pki = Pki::generate()?;
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let proxy = CountingProxy::start(closed).await?;
    let catalog = Catalog::start_with(
        &proxy.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &[
            "--discount-backoff-min",
            "200ms",
            "--discount-backoff-max",
            "200ms",
        ],
    )
    .await?;
    assert_eq!(
        catalog.priced("1").await?,
        (PLAIN.to_owned(), unavailable())
    );

    // The first wait is over; 100 listings arrive at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proxy.connections();
    let answers: Vec<_> = futures_util::stream::iter(0..100)
        .map(|_| catalog.priced("1"))
        .buffer_unordered(100)
        .collect()
        .await;
    for answer in answers {
        assert_eq!(answer?, (PLAIN.to_owned(), unavailable()));
    }
    let dialled = proxy.connections() - before;
    eprintln!("100 listings after the wait: {dialled} new connections");
    assert!(dialled <= 1, "{dialled} connections for one probe");
    Ok(())
}
