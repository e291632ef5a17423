//! The catalog API end to end: the real catalog and the real discount
//! server in-process, on `127.0.0.1:0`, talking TLS gRPC with certificates
//! made when the test runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catalog::AppState;
use catalog::discount::DiscountClient;
use clap::Parser;
use reqwest::StatusCode;
use testkit::{DiscountServer, Pki, SetupResult};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The seed's three products with no discount: what anyone without a known
/// `X-USER-ID` gets, and what everyone gets when discount is unavailable.
const PLAIN: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999}]"#,
    "\n"
);

/// The seed README's output for `X-USER-ID: 1`, compact as Go writes it.
const CUSTOMER_1: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{"pct":0.1,"value_in_cents":89999}},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,"discount_value":{"pct":0.1,"value_in_cents":135000}},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{"pct":0.1,"value_in_cents":29699}}]"#,
    "\n"
);

/// Customer 2: discount answers, with an empty discount for every product.
const CUSTOMER_2: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{}},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,"discount_value":{}},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{}}]"#,
    "\n"
);

/// Deadline for discount calls in tests where discount is healthy: generous,
/// because a debug build on a loaded CI machine is slow, and a pass never
/// waits for it.
const HEALTHY_DEADLINE: &str = "5s";

/// The catalog, serving on `127.0.0.1:<port>` until dropped.
struct Catalog {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    http: reqwest::Client,
}

impl Catalog {
    /// Starts the catalog with its real command-line parsing, pointed at
    /// `discount` and trusting `ca`.
    async fn start(discount: &str, ca: &Path, deadline: &str) -> SetupResult<Self> {
        let client = discount_client(discount, ca, deadline, &[])?;
        let listener = common::net::bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(catalog::run(listener, AppState::new(client), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            _stop: stop,
            http: reqwest::Client::new(),
        })
    }

    async fn get(
        &self,
        path: &str,
        user_id: Option<&[u8]>,
    ) -> SetupResult<(StatusCode, String, String)> {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(user_id) = user_id {
            request = request.header(
                "X-USER-ID",
                reqwest::header::HeaderValue::from_bytes(user_id)?,
            );
        }
        let response = request.send().await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((status, content_type, response.text().await?))
    }

    async fn products(&self, user_id: Option<&str>) -> SetupResult<(StatusCode, String)> {
        let (status, _, body) = self.get("/products", user_id.map(str::as_bytes)).await?;
        Ok((status, body))
    }
}

/// The catalog's client of discount, configured through the real command
/// line: `--discount-host discount --discount-ca ca --discount-deadline
/// deadline`, then `extra`.
fn discount_client(
    discount: &str,
    ca: &Path,
    deadline: &str,
    extra: &[&str],
) -> SetupResult<DiscountClient> {
    common::tls::install_default_provider();
    let ca = ca.display().to_string();
    let mut args = vec![
        "catalog",
        "0",
        "--listen-addr",
        "127.0.0.1",
        "--discount-host",
        discount,
        "--discount-ca",
        &ca,
        "--discount-deadline",
        deadline,
    ];
    args.extend_from_slice(extra);
    let config = catalog::Config::try_parse_from(args)?;
    Ok(DiscountClient::connect_lazy(&config.discount())?)
}

/// Why `client` could not price the first product for customer 1.
async fn call_error(client: &DiscountClient) -> SetupResult<String> {
    let customer = catalog::customer::find(1).ok_or("no customer 1")?;
    let product = catalog::products::all()
        .into_iter()
        .next()
        .ok_or("no products")?;
    match client.discount(&customer, &product).await {
        Ok(answer) => Err(format!("discount answered: {answer:?}").into()),
        Err(error) => Ok(error.to_string()),
    }
}

/// discount and a catalog pointed at it.
async fn system() -> SetupResult<(Pki, DiscountServer, Catalog)> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    Ok((pki, discount, catalog))
}

#[tokio::test]
async fn the_root_says_it_is_working() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let (status, _, body) = catalog.get("/", None).await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "It is working."));
    Ok(())
}

#[tokio::test]
async fn without_a_user_the_list_is_the_seed_products_without_discounts() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let (status, content_type, body) = catalog.get("/products", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    assert_eq!(body, PLAIN);

    for blank in ["", "   "] {
        assert_eq!(
            catalog.products(Some(blank)).await?,
            (StatusCode::OK, PLAIN.to_owned()),
            "{blank:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn customer_1_gets_the_seed_readme_output_however_the_id_is_written() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    for id in ["1", "+1", "01", " 1", "1 "] {
        let (status, content_type, body) = catalog.get("/products", Some(id.as_bytes())).await?;
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::OK, "application/json"),
            "{id:?}"
        );
        assert_eq!(body, CUSTOMER_1, "X-USER-ID {id:?}");
    }
    Ok(())
}

#[tokio::test]
async fn customer_2_gets_every_product_with_an_empty_discount() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    assert_eq!(
        catalog.products(Some("2")).await?,
        (StatusCode::OK, CUSTOMER_2.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn an_id_that_is_not_a_number_is_a_400_with_the_seed_message() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let not_numbers: [&[u8]; 9] = [
        b"abc",
        b"1.0",
        b"0x1",
        b"1e3",
        b"+",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"1 2",
        b"\xff",
    ];
    for id in not_numbers {
        let (status, content_type, body) = catalog.get("/products", Some(id)).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}");
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert_eq!(body, "Customer ID is not a number.\n");
    }
    // The catalog is unharmed.
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, CUSTOMER_1.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let (status, _, body) = catalog.get("/nope", None).await?;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found\n")
    );
    let (status, _, _) = catalog.get("/products/1", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let post = catalog
        .http
        .post(format!("http://{}/products", catalog.addr))
        .send()
        .await?;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

/// A TCP listener that accepts connections, counts them, and never answers:
/// a stand-in for a discount that is hung, and a witness of whether the
/// catalog tried to call discount at all.
async fn silent_discount() -> SetupResult<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Ok((addr, accepted))
}

#[tokio::test]
async fn unknown_customers_get_the_plain_list_without_any_call_to_discount() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (addr, accepted) = silent_discount().await?;
    let catalog = Catalog::start(&addr.to_string(), &pki.path("ca.pem"), "300ms").await?;

    for id in ["3", "0", "-1", "9223372036854775807"] {
        assert_eq!(
            catalog.products(Some(id)).await?,
            (StatusCode::OK, PLAIN.to_owned()),
            "{id:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "catalog dialled discount for an unknown customer"
    );

    // Control: a known customer does dial, which shows the witness works.
    catalog.products(Some("1")).await?;
    assert!(accepted.load(Ordering::SeqCst) > 0);
    Ok(())
}

#[tokio::test]
async fn a_discount_that_never_answers_costs_at_most_the_deadline_and_drops_nothing()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let (addr, _) = silent_discount().await?;
    let catalog = Catalog::start(&addr.to_string(), &pki.path("ca.pem"), "300ms").await?;

    let started = Instant::now();
    let answer =
        tokio::time::timeout(Duration::from_secs(5), catalog.products(Some("1"))).await??;
    assert_eq!(answer, (StatusCode::OK, PLAIN.to_owned()));
    // The three calls run concurrently: one deadline, not three.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn when_discount_stops_every_product_is_still_listed() -> SetupResult<()> {
    let (_pki, discount, catalog) = system().await?;
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, CUSTOMER_1.to_owned())
    );

    discount.stop().await?;
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, PLAIN.to_owned())
    );
    assert_eq!(
        catalog.products(Some("2")).await?,
        (StatusCode::OK, PLAIN.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn when_discount_was_never_up_every_product_is_still_listed() -> SetupResult<()> {
    let pki = Pki::generate()?;
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let catalog =
        Catalog::start(&closed.to_string(), &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, PLAIN.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn a_catalog_that_does_not_trust_discounts_certificate_lists_without_discounts()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let stranger = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &stranger.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, PLAIN.to_owned())
    );

    // And the reason is the certificate, not the network.
    let client = discount_client(
        &discount.addr().to_string(),
        &stranger.path("ca.pem"),
        HEALTHY_DEADLINE,
        &[],
    )?;
    let error = call_error(&client).await?;
    assert!(error.contains("invalid peer certificate"), "{error}");
    Ok(())
}

#[tokio::test]
async fn the_server_name_is_checked_against_discounts_certificate() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    // Dial by "localhost", which the certificate names: discounted.
    let by_name = format!("localhost:{}", discount.addr().port());
    let catalog = Catalog::start(&by_name, &pki.path("ca.pem"), HEALTHY_DEADLINE).await?;
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, CUSTOMER_1.to_owned())
    );

    // Same server and CA, a name the certificate does not carry: refused.
    let client = discount_client(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--discount-server-name", "discount.example"],
    )?;
    let error = call_error(&client).await?;
    assert!(error.contains("not valid for name"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_refused_connection_is_reported_with_its_cause() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let client = discount_client(
        &closed.to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &[],
    )?;
    let error = call_error(&client).await?;
    // tonic alone says "transport error"; the chain says why.
    assert!(error.contains("Connection refused"), "{error}");
    Ok(())
}

#[test]
fn the_binary_without_its_ca_file_names_the_missing_file_and_the_fix() -> SetupResult<()> {
    let empty = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("0")
        .current_dir(empty.path())
        .env_remove("CATALOG_DISCOUNT_CA")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without a CA: {stderr}");
    assert!(stderr.contains("keys/ca.pem: file not found"), "{stderr}");
    assert!(stderr.contains("scripts/gen-keys.sh"), "{stderr}");
    Ok(())
}
