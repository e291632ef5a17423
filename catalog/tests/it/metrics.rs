//! The metrics of both services after a known sequence of requests,
//! scraped over HTTP from their `--metrics-addr` listeners, on
//! `127.0.0.1:0`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::support::{CUSTOMER_1, Catalog, HEALTHY_DEADLINE};
use discount::DiscountService;
use reqwest::StatusCode;
use testkit::{DiscountServer, Pki, SetupResult};

/// One sample: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// A scrape, parsed: every sample by series.
struct Scrape {
    samples: BTreeMap<Series, f64>,
    text: String,
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// [`Scrape::get`], which must be there.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }

    /// Every series of `name`, with their values.
    fn all(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((sample, _), _)| sample == name)
            .map(|((_, labels), value)| (labels.clone(), *value))
            .collect()
    }
}

/// Parses the Prometheus text format, as far as these services write it
/// (no escaped quotes or commas in label values here).
fn parse(text: &str) -> SetupResult<Scrape> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').ok_or(line)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut parsed = BTreeMap::new();
        for pair in labels.split("\",").filter(|pair| !pair.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or(pair)?;
            parsed.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            other => other.parse()?,
        };
        samples.insert((name.to_owned(), parsed), value);
    }
    Ok(Scrape {
        samples,
        text: text.to_owned(),
    })
}

async fn scrape(addr: Option<SocketAddr>) -> SetupResult<Scrape> {
    let addr = addr.ok_or("started without --metrics-addr")?;
    let response = reqwest::get(format!("http://{addr}/metrics")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&response.text().await?)
}

const METRICS: [&str; 2] = ["--metrics-addr", "127.0.0.1:0"];

#[tokio::test]
async fn a_known_sequence_shows_exactly_in_both_services_metrics() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start_with(&pki, &METRICS, DiscountService).await?;
    let replica = discount.addr().to_string();
    let catalog =
        Catalog::start_with(&replica, &pki.path("ca.pem"), HEALTHY_DEADLINE, &METRICS).await?;

    for _ in 0..3 {
        let (body, status) = catalog.priced("1").await?;
        assert_eq!(
            (body.as_str(), status.as_deref()),
            (CUSTOMER_1, Some("applied"))
        );
    }
    assert_eq!(
        catalog.products(Some("abc")).await?.0,
        StatusCode::BAD_REQUEST
    );
    for path in ["/nope", "/wp-login.php?x=1"] {
        assert_eq!(catalog.get(path, None).await?.status, StatusCode::NOT_FOUND);
    }

    let served = scrape(discount.metrics_addr()).await?;
    let apply = [
        ("method", "ecommerce.Discount/ApplyDiscounts"),
        ("code", "OK"),
    ];
    assert_eq!(served.value("discount_grpc_calls_total", &apply), 3.0);
    assert_eq!(
        served.value(
            "discount_grpc_call_duration_seconds_count",
            &[("method", "ecommerce.Discount/ApplyDiscounts")]
        ),
        3.0
    );
    // The catalog checks the replica's health every second.
    assert!(
        served.value(
            "discount_grpc_calls_total",
            &[("method", "grpc.health.v1.Health/Check"), ("code", "OK")]
        ) >= 1.0
    );
    // Every method's OK series exists from the start (at 0, so rate()
    // works at once), and only the two methods called counted anything.
    let all = served.all("discount_grpc_calls_total");
    assert_eq!(all.len(), 7, "{all:?}");
    let methods: Vec<String> = all
        .into_iter()
        .filter(|(_, value)| *value > 0.0)
        .map(|(labels, _)| labels["method"].clone())
        .collect();
    assert!(
        methods
            .iter()
            .all(|m| m == "ecommerce.Discount/ApplyDiscounts" || m == "grpc.health.v1.Health/Check"),
        "{methods:?}"
    );
    for reason in [
        "no_certificate",
        "unknown_issuer",
        "expired",
        "wrong_purpose",
        "timeout",
        "client_refused",
        "other",
    ] {
        assert_eq!(
            served.value(
                "discount_tls_handshakes_refused_total",
                &[("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    assert_eq!(served.value("discount_calls_shed_total", &[]), 0.0);
    assert_eq!(served.value("discount_serving", &[]), 1.0);
    assert!(served.value("discount_connections_open", &[]) >= 1.0);
    assert_eq!(served.all("discount_authz_refusals_total"), vec![]);
    assert_eq!(
        served.value(
            "discount_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let cert = pki.path("cert.pem").display().to_string();
    let left = served.value(
        "tls_certificate_expiry_seconds",
        &[("file", &cert), ("role", "server")],
    );
    // testkit's certificates are valid until rcgen's default, 4096.
    assert!(left > 1e10, "{left}");
    assert!(served.value("process_open_fds", &[]) > 0.0);

    // discount goes away: the listing is still served, without discounts.
    discount.stop().await?;
    catalog
        .readiness_becomes(StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    assert_eq!(catalog.priced("1").await?.1.as_deref(), Some("unavailable"));

    let seen = scrape(catalog.metrics_addr).await?;
    let products = |status| {
        [
            ("route", "/products"),
            ("method", "GET"),
            ("status", status),
        ]
    };
    assert_eq!(
        seen.value("catalog_http_requests_total", &products("200")),
        4.0
    );
    assert_eq!(
        seen.value("catalog_http_requests_total", &products("400")),
        1.0
    );
    assert_eq!(
        seen.value(
            "catalog_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        2.0
    );
    assert_eq!(
        seen.value(
            "catalog_http_request_duration_seconds_count",
            &[("route", "/products"), ("method", "GET")]
        ),
        5.0
    );
    // Routes are templates: no raw path ever becomes a label.
    let routes: Vec<String> = seen
        .all("catalog_http_requests_total")
        .into_iter()
        .map(|(labels, _)| labels["route"].clone())
        .collect();
    assert!(
        routes
            .iter()
            .all(|r| ["/products", "/readyz", "unmatched"].contains(&r.as_str())),
        "{routes:?}"
    );
    for (status, count) in [
        ("applied", 3.0),
        ("unavailable", 1.0),
        ("partial", 0.0),
        ("not_asked", 0.0),
    ] {
        assert_eq!(
            seen.value("catalog_listings_total", &[("discount_status", status)]),
            count,
            "{status}"
        );
    }
    let call = |code| {
        [
            ("method", "ecommerce.Discount/ApplyDiscounts"),
            ("replica", replica.as_str()),
            ("code", code),
        ]
    };
    assert_eq!(seen.value("catalog_discount_calls_total", &call("OK")), 3.0);
    let calls: f64 = seen
        .all("catalog_discount_calls_total")
        .iter()
        .map(|(_, value)| value)
        .sum();
    assert_eq!(
        seen.value(
            "catalog_discount_call_duration_seconds_count",
            &[
                ("method", "ecommerce.Discount/ApplyDiscounts"),
                ("replica", replica.as_str())
            ]
        ),
        calls
    );
    assert_eq!(seen.value("catalog_discount_retries_total", &[]), 0.0);
    let ejections: f64 = seen
        .all("catalog_discount_ejections_total")
        .iter()
        .map(|(_, value)| value)
        .sum();
    assert!(ejections >= 1.0, "{}", seen.text);
    assert_eq!(
        seen.value("catalog_discount_replicas", &[("state", "serving")]),
        0.0
    );
    assert_eq!(
        seen.value("catalog_discount_replicas", &[("state", "not_serving")]),
        1.0
    );
    assert!(seen.value("catalog_http_connections_open", &[]) >= 1.0);
    assert_eq!(
        seen.value("catalog_reloads_total", &[("outcome", "success")]),
        0.0
    );
    assert_eq!(
        seen.value(
            "catalog_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let ca = pki.path("ca.pem").display().to_string();
    assert!(
        seen.value(
            "tls_certificate_expiry_seconds",
            &[("file", &ca), ("role", "server-ca")]
        ) > 0.0
    );
    Ok(())
}

#[tokio::test]
async fn the_metrics_listener_serves_get_metrics_only() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let catalog = Catalog::start_with(
        "127.0.0.1:9",
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &METRICS,
    )
    .await?;
    let admin = catalog.metrics_addr.ok_or("no metrics listener")?;
    let client = reqwest::Client::new();
    let answer = client
        .get(format!("http://{admin}/products"))
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let answer = client
        .post(format!("http://{admin}/metrics"))
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers()["allow"], "GET, HEAD");
    // Without the flag there is no listener.
    let quiet =
        Catalog::start_with("127.0.0.1:9", &pki.path("ca.pem"), HEALTHY_DEADLINE, &[]).await?;
    assert_eq!(quiet.metrics_addr, None);
    Ok(())
}
