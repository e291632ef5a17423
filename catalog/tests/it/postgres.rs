//! The catalog on PostgreSQL, a real server (a throw-away cluster): two
//! replicas on one database, the database going away and coming back,
//! and a database that is not there yet at start.

use std::time::{Duration, Instant};

use catalog::store::{self, DatabaseUrl};
use reqwest::StatusCode;
use testkit::{DiscountServer, HANG, Pki, Postgres, SetupResult};

use crate::store::product;
use crate::support::{Catalog, HEALTHY_DEADLINE};

/// A password the URL carries, to check it is shown nowhere.
const PASSWORD: &str = "hunter2-never-shown";

/// A catalog on `url` that checks the store's revision every `refresh`.
async fn catalog_on(
    pki: &Pki,
    discount: &DiscountServer,
    url: &str,
    refresh: &str,
) -> SetupResult<Catalog> {
    Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--database-url", url, "--data-refresh-interval", refresh],
    )
    .await
}

/// `GET /products?page_size=1000` until it lists `count` products: how
/// long that took.
async fn lists(catalog: &Catalog, count: usize) -> SetupResult<Duration> {
    let started = Instant::now();
    loop {
        let answer = catalog.get("/products?page_size=1000", None).await?;
        let listed =
            serde_json::from_str::<Vec<serde_json::Value>>(&answer.body).map_or(0, |v| v.len());
        if answer.status == StatusCode::OK && listed == count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > HANG {
            return Err(format!("{} {}: not {count} products", answer.status, answer.body).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The check every `--data-refresh-interval` is an hour away here, so
/// only the notification can bring the import. The time each took is
/// printed, not asserted: a busy machine is no fault of the code.
#[tokio::test]
async fn an_import_is_served_by_both_replicas_on_its_notification() -> SetupResult<()> {
    let Some(postgres) = Postgres::start()? else {
        return Ok(());
    };
    let url = postgres.url(Some(PASSWORD));
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let (a, b) = tokio::try_join!(
        catalog_on(&pki, &discount, &url, "1h"),
        catalog_on(&pki, &discount, &url, "1h")
    )?;
    // PostgreSQL is not seeded.
    assert_eq!(a.get("/products", None).await?.body, "[]\n");

    let store = store::open(&DatabaseUrl::parse(&url)?).await?;
    store
        .import_products(vec![product(1, "one", 100), product(2, "two", 200)])
        .await?;
    let (took_a, took_b) = tokio::try_join!(lists(&a, 2), lists(&b, 2))?;
    eprintln!("served after {took_a:?} and {took_b:?}");
    Ok(())
}

#[tokio::test]
async fn the_database_going_away_leaves_listings_served_and_they_catch_up_after() -> SetupResult<()>
{
    let Some(postgres) = Postgres::start()? else {
        return Ok(());
    };
    let url = postgres.url(Some(PASSWORD));
    let store = store::open(&DatabaseUrl::parse(&url)?).await?;
    store::prepare(
        &*store,
        &DatabaseUrl::parse(&url)?,
        true,
        store::NewFile::Seeded,
    )
    .await?;
    store.import_products(vec![product(1, "one", 100)]).await?;
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let catalog = catalog_on(&pki, &discount, &url, "200ms").await?;
    lists(&catalog, 1).await?;

    postgres.stop()?;
    // Wait for the catalog to notice, then keep asking: every answer whole.
    let deadline = Instant::now() + HANG;
    loop {
        let ready = catalog.readiness().await?;
        if ready.body.contains("the store fails") {
            assert!(!ready.body.contains(PASSWORD), "{}", ready.body);
            break;
        }
        assert!(Instant::now() < deadline, "never noticed: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for user in [None, Some("1")] {
        for _ in 0..20 {
            let answer = catalog.get("/products", user.map(str::as_bytes)).await?;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert!(answer.body.contains("\"slug\":\"one\""), "{}", answer.body);
        }
    }
    postgres.restart()?;
    store.import_products(vec![product(2, "two", 200)]).await?;
    lists(&catalog, 2).await?;
    Ok(())
}

#[tokio::test]
async fn a_database_not_there_at_start_gets_503s_that_say_so_until_it_is() -> SetupResult<()> {
    let Some(postgres) = Postgres::start()? else {
        return Ok(());
    };
    let url = postgres.url(Some(PASSWORD));
    postgres.stop()?;
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let catalog = catalog_on(&pki, &discount, &url, "200ms").await?;
    for path in ["/products", "/readyz", "/products/1"] {
        let answer = catalog.get(path, None).await?;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            answer.body
        );
        assert!(
            answer.body.to_lowercase().contains("not loaded yet")
                || answer.body.to_lowercase().contains("no product data yet"),
            "{path}: {}",
            answer.body
        );
        assert!(!answer.body.contains(PASSWORD), "{path}: {}", answer.body);
    }
    // The cause, not sqlx's "pool timed out", once the first attempt ends.
    let started = Instant::now();
    loop {
        let answer = catalog.get("/readyz", None).await?;
        if answer.body.contains("Connection refused") {
            assert!(!answer.body.contains(PASSWORD), "{}", answer.body);
            break;
        }
        assert!(
            started.elapsed() < 3 * HANG,
            "/readyz never said why: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    postgres.restart()?;
    lists(&catalog, 0).await?;
    assert_eq!(
        catalog.readiness_becomes(StatusCode::OK).await?.status,
        StatusCode::OK
    );
    Ok(())
}
