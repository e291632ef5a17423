//! Workload identities between the catalog and discount: the catalog
//! checks discount's (`--discount-identity`), discount checks the
//! catalog's (`--allow-client`), and rotating the catalog's certificate
//! keeps or loses its place by the identity it carries. Real TLS sockets
//! on loopback, certificates made when the test runs.

use std::path::Path;
use std::time::Duration;

use crate::support::{CUSTOMER_1, Catalog, HEALTHY_DEADLINE, PLAIN};
use discount::DiscountService;
use testkit::{CountingProxy, DiscountServer, Logs, Pki, SetupResult};

const APPLIED: Option<&str> = Some("applied");
const UNAVAILABLE: Option<&str> = Some("unavailable");

/// A copy of `pki`'s files in a directory of their own, where a test may
/// replace some.
fn keys_from(pki: &Pki) -> SetupResult<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    pki.install_into(dir.path())?;
    Ok(dir)
}

/// Replaces `<to>.pem` and `<to>.key` in `dir` with `pki`'s `<from>` pair.
fn replace(pki: &Pki, from: [&str; 2], dir: &Path, to: [&str; 2]) -> SetupResult<()> {
    for (from, to) in from.iter().zip(to) {
        std::fs::copy(pki.path(from), dir.join(to))?;
    }
    Ok(())
}

async fn listing(catalog: &Catalog) -> SetupResult<(String, Option<String>)> {
    catalog.priced("1").await
}

#[tokio::test]
async fn with_the_dev_identities_the_catalog_gets_its_discounts() -> SetupResult<()> {
    let (_pki, _discount, catalog) = crate::support::system().await?;
    assert_eq!(
        listing(&catalog).await?,
        (CUSTOMER_1.to_owned(), APPLIED.map(str::to_owned))
    );
    Ok(())
}

#[tokio::test]
async fn a_discount_whose_certificate_carries_another_identity_is_refused_and_said_why()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    // Signed by the same CA, valid for localhost: only the identity is
    // wrong.
    let orders = "spiffe://ecommerce.local/orders";
    pki.issue_server_as("orders.pem", "orders.key", &[orders])?;
    let keys = keys_from(&pki)?;
    replace(
        &pki,
        ["orders.pem", "orders.key"],
        keys.path(),
        ["cert.pem", "private.key"],
    )?;
    let impostor = DiscountServer::start_in(keys.path(), 0, &[], DiscountService).await?;
    let addr = impostor.addr().to_string();

    let catalog = Catalog::start(&addr, &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        listing(&catalog).await?,
        (PLAIN.to_owned(), UNAVAILABLE.map(str::to_owned))
    );
    let line = logs
        .line_with("not the identity spiffe://ecommerce.local/discount")
        .await
        .ok_or_else(|| format!("the reason was not logged:\n{}", logs.text()))?;
    assert!(line.contains(orders), "{line}");
    assert!(line.contains("--discount-identity"), "{line}");
    let ready = catalog.readiness().await?;
    assert_eq!(ready.status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body.contains("TLS handshake failed"),
        "{}",
        ready.body
    );

    // Told to expect that identity, or to check none, it is discount.
    for expected in [orders, ""] {
        let catalog = Catalog::start_with(
            &addr,
            &pki.path("ca.pem"),
            HEALTHY_DEADLINE,
            &["--discount-identity", expected],
        )
        .await?;
        assert_eq!(
            listing(&catalog).await?,
            (CUSTOMER_1.to_owned(), APPLIED.map(str::to_owned)),
            "--discount-identity {expected:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_rotated_client_certificate_keeps_its_place_by_identity_and_another_is_refused()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let proxy = CountingProxy::start(discount.addr()).await?;
    let keys = keys_from(&pki)?;
    let catalog = Catalog::start(
        &proxy.addr().to_string(),
        &keys.path().join("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    let applied = (CUSTOMER_1.to_owned(), APPLIED.map(str::to_owned));
    assert_eq!(listing(&catalog).await?, applied);

    // A new certificate for the same workload, reloaded while listings
    // are under way: none fails, and the next connection carries it.
    pki.issue_client("renewed", testkit::ClientCert::Valid)?;
    replace(
        &pki,
        ["renewed.pem", "renewed.key"],
        keys.path(),
        ["client.pem", "client.key"],
    )?;
    let (answers, reloaded) = tokio::join!(
        async {
            let mut answers = Vec::new();
            for _ in 0..40 {
                answers.push(listing(&catalog).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            catalog.discount.reload()
        }
    );
    assert_eq!(reloaded, Ok(()));
    for answer in answers {
        assert_eq!(answer?, applied);
    }
    assert_eq!(listing(&catalog).await?, applied);
    assert_eq!(proxy.connections(), 2, "a new connection after the reload");

    // A certificate from the same CA for another workload: refused from
    // its first connection on, with discount's reason in the catalog's log.
    let intruder = "spiffe://ecommerce.local/intruder";
    pki.issue_client_as("intruder", &[intruder])?;
    replace(
        &pki,
        ["intruder.pem", "intruder.key"],
        keys.path(),
        ["client.pem", "client.key"],
    )?;
    assert_eq!(catalog.discount.reload(), Ok(()));
    assert_eq!(
        listing(&catalog).await?,
        (PLAIN.to_owned(), UNAVAILABLE.map(str::to_owned))
    );
    let line = logs
        .line_with("may not call ecommerce.Discount")
        .await
        .ok_or_else(|| format!("the refusal was not logged:\n{}", logs.text()))?;
    assert!(line.contains(intruder), "{line}");
    // Not ready: the one replica will not serve this catalog, and its
    // health checks (open to everyone, every second) do not change that.
    for _ in 0..2 {
        let ready = catalog.readiness().await?;
        assert_eq!(ready.status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            ready.body.contains("refuses this catalog's identity"),
            "{}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    // The catalog's certificate fixed and reloaded: served again at once.
    replace(
        &pki,
        ["renewed.pem", "renewed.key"],
        keys.path(),
        ["client.pem", "client.key"],
    )?;
    assert_eq!(catalog.discount.reload(), Ok(()));
    assert_eq!(listing(&catalog).await?, applied);
    Ok(())
}

#[tokio::test]
async fn a_replica_that_refuses_the_catalog_is_passed_over_for_one_that_does_not() -> SetupResult<()>
{
    let pki = Pki::generate()?;
    // Two replicas, one of them with an allow-list that forgot the catalog.
    let welcoming = DiscountServer::start(&pki).await?;
    let forgetful = DiscountServer::start_with(
        &pki,
        &["--allow-client", "spiffe://ecommerce.local/orders"],
        DiscountService,
    )
    .await?;
    let list = format!("{},{}", welcoming.addr(), forgetful.addr());
    let catalog = Catalog::start_with(
        &list,
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        // Out for long once out, so the state read below is not a probe's.
        &[
            "--discount-server-name",
            "localhost",
            "--discount-backoff-min",
            "20s",
            "--discount-backoff-max",
            "20s",
        ],
    )
    .await?;
    let applied = (CUSTOMER_1.to_owned(), APPLIED.map(str::to_owned));
    for _ in 0..30 {
        assert_eq!(listing(&catalog).await?, applied);
    }
    let states: Vec<String> = catalog
        .discount
        .replicas()
        .into_iter()
        .filter(|replica| replica.addr == forgetful.addr())
        .map(|replica| replica.state)
        .collect();
    assert!(
        states
            .iter()
            .all(|state| state.contains("refuses this catalog's identity")),
        "{states:?}"
    );
    Ok(())
}
