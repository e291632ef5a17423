//! The discount server over real TLS sockets on loopback, with certificates
//! made when the test runs.

use std::time::Duration;

use discount::DiscountService;
use ecommerce_proto::pb::discount_client::DiscountClient;
use ecommerce_proto::pb::{DiscountRequest, DiscountValue, DiscountsRequest, Product};
use testkit::{DiscountServer, HANG, Pki, SetupResult, customer, discount_request, product};
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

async fn client(server: &DiscountServer, pki: &Pki) -> SetupResult<DiscountClient<Channel>> {
    Ok(DiscountClient::new(
        testkit::grpc_channel(server.addr(), pki).await?,
    ))
}

#[tokio::test]
async fn customer_1_gets_ten_percent_off_each_seed_product_and_the_product_is_echoed()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let mut client = client(&server, &pki).await?;

    for (id, price, expected) in [(1, 99999, 89999), (2, 150000, 135000), (3, 32999, 29699)] {
        let sent = product(id, price);
        let response = client
            .apply_discount(discount_request(1, sent.clone()))
            .await?
            .into_inner();
        let got = response.product.ok_or("response without a product")?;
        assert_eq!(
            got,
            Product {
                discount_value: Some(DiscountValue {
                    pct: 0.1,
                    value_in_cents: expected
                }),
                ..sent
            }
        );
    }
    Ok(())
}

#[tokio::test]
async fn other_customers_get_the_product_back_with_an_empty_discount_value() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let mut client = client(&server, &pki).await?;

    for customer_id in [0, 2, -1] {
        let response = client
            .apply_discount(discount_request(customer_id, product(1, 99999)))
            .await?
            .into_inner();
        let got = response.product.ok_or("response without a product")?;
        assert_eq!(
            got.discount_value,
            Some(DiscountValue::default()),
            "customer {customer_id}"
        );
        assert_eq!(got.price_in_cents, 99999);
    }
    Ok(())
}

#[tokio::test]
async fn a_request_without_customer_or_product_is_an_invalid_argument() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let mut client = client(&server, &pki).await?;

    let no_customer = DiscountRequest {
        customer: None,
        product: Some(product(1, 99999)),
    };
    let status = client
        .apply_discount(no_customer)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("customer is missing"),
        "{}",
        status.message()
    );

    let no_product = DiscountRequest {
        customer: Some(customer(1)),
        product: None,
    };
    let status = client
        .apply_discount(no_product)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("product is missing"),
        "{}",
        status.message()
    );

    // The server is still fine afterwards.
    let ok = client
        .apply_discount(discount_request(1, product(1, 100)))
        .await?;
    assert_eq!(
        ok.into_inner().product.and_then(|p| p.discount_value),
        Some(DiscountValue {
            pct: 0.1,
            value_in_cents: 90
        })
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_with_a_certificate_error() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let stranger = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            stranger.path("ca.pem"),
        )?))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{}", server.addr()))?
        .connect_timeout(HANG)
        .tls_config(tls)?;
    let error = tokio::time::timeout(HANG, endpoint.connect())
        .await?
        .err()
        .ok_or("connected with an untrusted CA")?;
    let chain = testkit::error_chain(&error);
    // Every test CA has a name of its own, so the stranger's is unknown.
    assert!(
        chain.contains("invalid peer certificate: UnknownIssuer"),
        "not an unknown-issuer error: {chain}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_starts_the_handshake_is_disconnected_after_the_limit()
-> SetupResult<()> {
    let pki = Pki::generate()?;
    let limit = Duration::from_millis(200);
    let server =
        DiscountServer::start_with(&pki, &["--tls-handshake-timeout", "200ms"], DiscountService)
            .await?;

    let mut silent = tokio::net::TcpStream::connect(server.addr()).await?;
    let started = std::time::Instant::now();
    let mut buffer = [0_u8; 64];
    let read = tokio::time::timeout(HANG, silent.read(&mut buffer)).await?;
    // The server closes the socket: end of stream, or a reset.
    assert!(matches!(read, Ok(0) | Err(_)), "server sent data: {read:?}");
    assert!(started.elapsed() >= limit, "closed before the limit");

    // A stalled client does not block others.
    let mut client = client(&server, &pki).await?;
    let ok = client
        .apply_discount(discount_request(2, product(1, 100)))
        .await?;
    assert!(ok.into_inner().product.is_some());
    Ok(())
}

#[test]
fn the_binary_without_its_key_files_names_the_missing_file_and_the_fix() -> SetupResult<()> {
    let empty = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_discount"))
        .arg("0")
        .current_dir(empty.path())
        .env_remove("DISCOUNT_CERT")
        .env_remove("DISCOUNT_KEY")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without keys: {stderr}");
    assert!(stderr.contains("keys/cert.pem: file not found"), "{stderr}");
    assert!(stderr.contains("scripts/gen-keys.sh"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn apply_discounts_prices_several_products_in_one_call_in_order() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let mut client = client(&server, &pki).await?;

    let sent = vec![
        product(1, 99999),
        product(2, 150000),
        product(3, 32999),
        product(4, 0),
    ];
    let request = DiscountsRequest {
        customer: Some(customer(1)),
        products: sent.clone(),
    };
    let priced = client.apply_discounts(request).await?.into_inner().products;
    let cents: Vec<i32> = priced
        .iter()
        .map(|p| p.discount_value.map(|d| d.value_in_cents).unwrap_or(-1))
        .collect();
    assert_eq!(cents, [89999, 135000, 29699, 0]);
    let echoed: Vec<_> = priced
        .into_iter()
        .map(|p| Product {
            discount_value: None,
            ..p
        })
        .collect();
    assert_eq!(echoed, sent);

    let none = DiscountsRequest {
        customer: Some(customer(1)),
        products: Vec::new(),
    };
    assert!(
        client
            .apply_discounts(none)
            .await?
            .into_inner()
            .products
            .is_empty()
    );

    let no_customer = DiscountsRequest {
        customer: None,
        products: vec![product(1, 100)],
    };
    let status = client
        .apply_discounts(no_customer)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn a_flood_of_stalled_handshakes_is_logged_once_not_once_each() -> SetupResult<()> {
    let (logs, _capturing) = testkit::Logs::capture();
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--tls-handshake-timeout", "100ms"], DiscountService)
            .await?;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(server.addr()).await?);
    }
    // Every one of them is cut off at the limit...
    for mut tcp in silent {
        let mut buffer = [0_u8; 16];
        let read = tokio::time::timeout(HANG, tcp.read(&mut buffer)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // ...and the log says so once, not fifty times.
    let lines = logs.lines_with("TLS handshake timed out");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    Ok(())
}

/// What a call could tell about its client: the peer's address, and
/// whether it presented certificates.
type Noted = (Option<std::net::SocketAddr>, bool);

/// A discount that notes what each call can tell about its client.
#[derive(Debug, Clone, Default)]
struct PeerNoting(std::sync::Arc<std::sync::Mutex<Vec<Noted>>>);

#[tonic::async_trait]
impl ecommerce_proto::pb::discount_server::Discount for PeerNoting {
    async fn apply_discount(
        &self,
        request: tonic::Request<DiscountRequest>,
    ) -> Result<tonic::Response<ecommerce_proto::pb::DiscountResponse>, tonic::Status> {
        let noted = (request.remote_addr(), request.peer_certs().is_some());
        if let Ok(mut seen) = self.0.lock() {
            seen.push(noted);
        }
        DiscountService.apply_discount(request).await
    }

    async fn apply_discounts(
        &self,
        request: tonic::Request<DiscountsRequest>,
    ) -> Result<tonic::Response<ecommerce_proto::pb::DiscountsResponse>, tonic::Status> {
        DiscountService.apply_discounts(request).await
    }
}

#[tokio::test]
async fn a_call_can_tell_its_clients_address_and_certificate() -> SetupResult<()> {
    // The connection tracker stands between tonic and the TLS stream; the
    // details tonic's accessors need still reach the handler.
    let pki = Pki::generate()?;
    let noting = PeerNoting::default();
    let server = DiscountServer::start_with(&pki, &[], noting.clone()).await?;
    let mut client = client(&server, &pki).await?;
    client
        .apply_discount(discount_request(1, product(1, 1000)))
        .await?;
    let seen = noting.0.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(seen.len(), 1);
    let (addr, certified) = seen[0];
    assert_eq!(addr.map(|a| a.ip()), Some([127, 0, 0, 1].into()));
    assert!(certified, "the client's certificate is not visible");
    Ok(())
}
