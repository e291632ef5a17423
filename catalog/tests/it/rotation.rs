//! Certificates rotated with no one to send SIGHUP: both services watch
//! their TLS files (`--tls-watch-interval`) and reload when they change, as
//! the kubelet updates a Secret volume (a new directory, then `..data`
//! swapped) and as agents rewrite files in place, under load.
//!
//! The rotation moves both services to a new CA, in the order an operator
//! must follow; each stage is proved by a new connection that only the
//! rotated material can make.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use discount::DiscountService;
use testkit::{CountingProxy, DiscountServer, HANG, Pki, SecretVolume, SetupResult};
use tokio::task::JoinHandle;

use crate::support::{CUSTOMER_1, Catalog, HEALTHY_DEADLINE};

const WATCH: [&str; 4] = [
    "--tls-watch-interval",
    "100ms",
    "--metrics-addr",
    "127.0.0.1:0",
];

/// Polls `value` until `done` says yes, for at most [`HANG`].
async fn until<F, Fut>(what: &str, mut value: F, done: impl Fn(f64) -> bool) -> SetupResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = SetupResult<f64>>,
{
    let started = Instant::now();
    loop {
        let now = value().await?;
        if done(now) {
            return Ok(());
        }
        if started.elapsed() > HANG {
            return Err(format!("{what}: still {now} after {HANG:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `proxy` has seen more connections than `before`: the
/// catalog dialled with the material it reloaded.
async fn new_connection(proxy: &CountingProxy, before: usize) -> SetupResult<()> {
    let connections = || async { Ok(proxy.connections() as f64) };
    until("a new connection", connections, |n| n > before as f64).await
}

/// Listings for customer 1 sent one after another by `clients` tasks until
/// `stop`: how many, and those not whole and discounted.
fn steady_load(
    catalog: &Arc<Catalog>,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<(usize, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let (catalog, stop) = (Arc::clone(catalog), Arc::clone(stop));
            tokio::spawn(async move {
                let (mut sent, mut bad) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    match catalog.priced("1").await {
                        Ok((body, status))
                            if body == CUSTOMER_1 && status.as_deref() == Some("applied") => {}
                        other => bad.push(format!("{other:?}")),
                    }
                }
                (sent, bad)
            })
        })
        .collect()
}

#[tokio::test]
async fn both_services_rotate_to_a_new_ca_from_their_files_with_no_listing_undiscounted()
-> SetupResult<()> {
    let (old, new) = (Pki::generate()?, Pki::generate()?);
    // Both CAs trusted from the start: the new CA is distributed first.
    let both = old.dir().join("both-cas.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(old.path("ca.pem"))?
            + &std::fs::read_to_string(new.path("ca.pem"))?,
    )?;

    // discount's files in a Secret volume, the kubelet's way.
    let mut volume = SecretVolume::new()?;
    volume.publish(&[
        ("cert.pem", &old.path("cert.pem")),
        ("private.key", &old.path("private.key")),
        ("ca.pem", &both),
    ])?;
    let discount = DiscountServer::start_in(volume.dir(), 0, &WATCH, DiscountService).await?;
    let discount_metrics = discount.metrics_addr().ok_or("no discount metrics")?;
    let proxy = CountingProxy::start(discount.addr()).await?;

    // The catalog's files rewritten in place, as an agent does.
    let keys = tempfile::tempdir()?;
    std::fs::copy(&both, keys.path().join("ca.pem"))?;
    std::fs::copy(old.path("client.pem"), keys.path().join("client.pem"))?;
    std::fs::copy(old.path("client.key"), keys.path().join("client.key"))?;
    let catalog = Arc::new(
        Catalog::start_with(
            &proxy.addr().to_string(),
            &keys.path().join("ca.pem"),
            HEALTHY_DEADLINE,
            &WATCH,
        )
        .await?,
    );
    let catalog_metrics = catalog.metrics_addr.ok_or("no catalog metrics")?;
    // `catalog_reloads_total` or `discount_reloads_total`, by outcome.
    let reloads = |addr, outcome: &'static str| {
        let labels = format!("outcome=\"{outcome}\"");
        move || {
            let labels = labels.clone();
            async move {
                let catalog = testkit::metric(addr, "catalog_reloads_total", &labels).await?;
                let discount = testkit::metric(addr, "discount_reloads_total", &labels).await?;
                SetupResult::Ok(catalog + discount)
            }
        }
    };
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&catalog, 4, &stop);

    // 1. discount's new certificate, from the new CA, by a `..data` swap.
    volume.publish(&[
        ("cert.pem", &new.path("cert.pem")),
        ("private.key", &new.path("private.key")),
        ("ca.pem", &both),
    ])?;
    until(
        "discount's reloads",
        reloads(discount_metrics, "success"),
        |n| n >= 1.0,
    )
    .await?;

    // 2. Half of the catalog's new identity: a certificate without its
    // key. Refused, the old identity kept, listings still discounted.
    std::fs::copy(new.path("client.pem"), keys.path().join("client.pem"))?;
    until(
        "the catalog's failed reloads",
        reloads(catalog_metrics, "failure"),
        |n| n >= 1.0,
    )
    .await?;
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);
    let connections = proxy.connections();

    // 3. The key, and the catalog trusting the new CA alone: from now on
    // its new connections find discount's new certificate (1.) or fail.
    std::fs::copy(new.path("client.key"), keys.path().join("client.key"))?;
    std::fs::copy(new.path("ca.pem"), keys.path().join("ca.pem"))?;
    until(
        "the catalog's reloads",
        reloads(catalog_metrics, "success"),
        |n| n >= 1.0,
    )
    .await?;
    new_connection(&proxy, connections).await?;
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);

    // 4. discount trusts the new CA alone; the catalog's next connection
    // must present its new certificate (3.) to work. The catalog makes a
    // new one when its files change again.
    volume.publish(&[
        ("cert.pem", &new.path("cert.pem")),
        ("private.key", &new.path("private.key")),
        ("ca.pem", &new.path("ca.pem")),
    ])?;
    until(
        "discount's reloads",
        reloads(discount_metrics, "success"),
        |n| n >= 2.0,
    )
    .await?;
    let connections = proxy.connections();
    let reloaded = reloads(catalog_metrics, "success")().await?;
    std::fs::copy(new.path("client.key"), keys.path().join("client.key"))?;
    until(
        "the catalog's reloads",
        reloads(catalog_metrics, "success"),
        |n| n > reloaded,
    )
    .await?;
    new_connection(&proxy, connections).await?;
    assert_eq!(catalog.priced("1").await?.0, CUSTOMER_1);

    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut bad) = (0, Vec::new());
    for client in load {
        let (n, failed) = tokio::time::timeout(HANG, client).await??;
        sent += n;
        bad.extend(failed);
    }
    eprintln!(
        "{sent} listings during the rotation, {} not whole and discounted",
        bad.len()
    );
    assert!(sent > 0);
    assert!(bad.is_empty(), "{bad:?}");
    // Never a failed reload on discount's side: the swap is atomic.
    assert_eq!(reloads(discount_metrics, "failure")().await?, 0.0);
    Ok(())
}
