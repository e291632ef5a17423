//! Who may call what: the allow-list of workload identities
//! (`--allow-client`), over real TLS sockets on loopback with certificates
//! made when the test runs.

use discount::DiscountService;
use ecommerce_proto::pb::DiscountsRequest;
use ecommerce_proto::pb::discount_client::DiscountClient;
use testkit::{
    CATALOG_IDENTITY, DiscountServer, HANG, Logs, Pki, SetupResult, customer, discount_request,
    product,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

const INTRUDER: &str = "spiffe://ecommerce.local/intruder";

/// A channel to `server` presenting the client certificate `<name>.pem`.
async fn as_client(server: &DiscountServer, pki: &Pki, name: &str) -> SetupResult<Channel> {
    testkit::grpc_channel_with(
        server.addr(),
        &pki.path("ca.pem"),
        Some(pki.identity(name)?),
    )
    .await
}

/// Both discount methods over `channel`: the code and message of each
/// refusal, or `Ok` with the value of the first product.
async fn both_methods(channel: &Channel) -> SetupResult<[Result<i32, (Code, String)>; 2]> {
    let mut client = DiscountClient::new(channel.clone());
    let single = tokio::time::timeout(
        HANG,
        client.apply_discount(discount_request(1, product(1, 1000))),
    )
    .await?
    .map(|answer| {
        answer
            .into_inner()
            .product
            .and_then(|p| p.discount_value)
            .map_or(-1, |v| v.value_in_cents)
    });
    let batch = tokio::time::timeout(
        HANG,
        client.apply_discounts(DiscountsRequest {
            customer: Some(customer(1)),
            products: vec![product(1, 1000)],
        }),
    )
    .await?
    .map(|answer| {
        answer
            .into_inner()
            .products
            .first()
            .and_then(|p| p.discount_value)
            .map_or(-1, |v| v.value_in_cents)
    });
    let refusal = |status: tonic::Status| (status.code(), status.message().to_owned());
    Ok([single.map_err(refusal), batch.map_err(refusal)])
}

#[tokio::test]
async fn the_catalog_identity_is_let_in_by_default() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let channel = as_client(&server, &pki, "client").await?;
    assert_eq!(both_methods(&channel).await?, [Ok(900), Ok(900)]);
    Ok(())
}

#[tokio::test]
async fn another_identity_from_the_same_ca_is_refused_by_name_on_both_methods_and_logged()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    let server = DiscountServer::start(&pki).await?;
    let channel = as_client(&server, &pki, "intruder").await?;

    for answer in both_methods(&channel).await? {
        let (code, message) = answer.err().ok_or("the intruder was answered")?;
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains(INTRUDER), "{message}");
        assert!(message.contains("--allow-client"), "{message}");
        // Nothing beyond the identity presented: not what the list holds.
        assert!(!message.contains(CATALOG_IDENTITY), "{message}");
    }
    let line = logs
        .line_with("call refused")
        .await
        .ok_or("no log line for the refusal")?;
    assert!(line.contains(INTRUDER), "{line}");
    assert!(line.contains("ecommerce.Discount/ApplyDiscount"), "{line}");
    assert!(line.contains("127.0.0.1"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_certificate_without_an_identity_is_told_it_carries_none() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_as("nameless", &[])?;
    pki.issue_client_as("twice", &[CATALOG_IDENTITY, INTRUDER])?;
    let server = DiscountServer::start(&pki).await?;

    let nameless = as_client(&server, &pki, "nameless").await?;
    for answer in both_methods(&nameless).await? {
        let (code, message) = answer.err().ok_or("a nameless client was answered")?;
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("carries no identity"), "{message}");
    }
    // Two URIs, one of them allowed: which workload it is, is ambiguous.
    let twice = as_client(&server, &pki, "twice").await?;
    let [single, _] = both_methods(&twice).await?;
    let (code, message) = single.err().ok_or("an ambiguous client was answered")?;
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("2 URI subjectAltNames"), "{message}");
    Ok(())
}

#[tokio::test]
async fn health_and_reflection_answer_any_client_the_tls_layer_lets_in() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    let server = DiscountServer::start(&pki).await?;
    let channel = as_client(&server, &pki, "intruder").await?;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "ecommerce.Discount".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    assert!(answers.message().await?.is_some(), "no reflection answer");

    // The same connection is still refused the discount methods.
    let [single, _] = both_methods(&channel).await?;
    assert_eq!(
        single.err().map(|(code, _)| code),
        Some(Code::PermissionDenied)
    );
    Ok(())
}

#[tokio::test]
async fn entries_may_be_exact_a_prefix_several_or_any() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_as("orders", &["spiffe://ecommerce.local/orders"])?;
    pki.issue_client_as("billing", &["spiffe://ecommerce.local/billing"])?;
    pki.issue_client_as("outsider", &["spiffe://partner.example/orders"])?;
    pki.issue_client_as("nameless", &[])?;
    let allowed = |value: Result<i32, (Code, String)>| value.is_ok();
    // Which of client, orders, billing, outsider, nameless each setting
    // lets in, on both methods.
    let cases: [(&[&str], [bool; 5]); 4] = [
        (
            &["--allow-client", "spiffe://ecommerce.local/*"],
            [true, true, true, false, false],
        ),
        (
            // Repeated, and comma-separated as in the variable.
            &[
                "--allow-client",
                "spiffe://ecommerce.local/orders",
                "--allow-client",
                "spiffe://partner.example/orders,spiffe://ecommerce.local/catalog",
            ],
            [true, true, false, true, false],
        ),
        (&["--allow-client", "any"], [true, true, true, true, true]),
        (&[], [true, false, false, false, false]),
    ];
    for (flags, expected) in cases {
        let server = DiscountServer::start_with(&pki, flags, DiscountService).await?;
        let mut got = Vec::new();
        for name in ["client", "orders", "billing", "outsider", "nameless"] {
            let channel = as_client(&server, &pki, name).await?;
            let [single, batch] = both_methods(&channel).await?;
            assert_eq!(allowed(single.clone()), allowed(batch), "{flags:?} {name}");
            got.push(allowed(single));
        }
        assert_eq!(got, expected, "{flags:?}");
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn anonymous_clients_under_optional_client_auth_are_refused_unless_any() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--client-auth", "optional"], DiscountService).await?;
    let anonymous = testkit::grpc_channel_with(server.addr(), &pki.path("ca.pem"), None).await?;
    let [single, batch] = both_methods(&anonymous).await?;
    for answer in [single, batch] {
        let (code, message) = answer.err().ok_or("an anonymous client was answered")?;
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("--allow-client any"), "{message}");
    }
    // The certificate holders still get in.
    let channel = as_client(&server, &pki, "client").await?;
    assert_eq!(both_methods(&channel).await?, [Ok(900), Ok(900)]);
    Ok(())
}

#[tokio::test]
async fn with_client_auth_none_there_is_no_identity_to_check() -> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let server =
        DiscountServer::start_with(&pki, &["--client-auth", "none"], DiscountService).await?;
    let anonymous = testkit::grpc_channel_with(server.addr(), &pki.path("ca.pem"), None).await?;
    assert_eq!(both_methods(&anonymous).await?, [Ok(900), Ok(900)]);
    assert!(
        logs.line_with("allow-list (--allow-client) is off")
            .await
            .is_some(),
        "{}",
        logs.text()
    );
    Ok(())
}

#[test]
fn a_malformed_entry_is_refused_at_start_with_the_forms_that_work() {
    use clap::Parser;
    for bad in [
        "catalog",
        "spiffe://ecommerce.local/ca*",
        "*",
        "spiffe:///x",
        "",
        // Could never match: no workload, or not as certificates spell it.
        "spiffe://ecommerce.local/",
        "spiffe://ecommerce.local",
        "spiffe://Ecommerce.local/orders",
        "SPIFFE://ecommerce.local/orders",
    ] {
        let parsed = discount::Config::try_parse_from(["discount", "--allow-client", bad]);
        let error = parsed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("spiffe://ecommerce.local/*"),
            "{bad:?}: {error}"
        );
    }
}

/// One unary call of `path` (any spelling) over `channel`, with an
/// `ApplyDiscount` request as the message: the status code.
async fn raw_call(channel: &Channel, path: &'static str) -> SetupResult<Code> {
    use ecommerce_proto::pb::DiscountResponse;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<_, DiscountResponse>::default();
    let request = tonic::Request::new(discount_request(1, product(1, 1000)));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let answer = tokio::time::timeout(HANG, grpc.unary(request, path, codec)).await?;
    Ok(answer.err().map_or(Code::Ok, |status| status.code()))
}

#[tokio::test]
async fn every_path_but_health_and_reflection_needs_an_allowed_identity() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    let server = DiscountServer::start(&pki).await?;
    let intruder = as_client(&server, &pki, "intruder").await?;
    let catalog = as_client(&server, &pki, "client").await?;
    for path in [
        "/ecommerce.Discount/ApplyDiscount",
        "//ecommerce.Discount/ApplyDiscount",
        "/ecommerce.Discount//ApplyDiscount",
        "/ecommerce%2EDiscount/ApplyDiscount",
        "/ECOMMERCE.DISCOUNT/APPLYDISCOUNT",
        "/no.such.Service/Method",
    ] {
        assert_eq!(
            raw_call(&intruder, path).await?,
            Code::PermissionDenied,
            "{path}"
        );
    }
    // The allowed client reaches the router: the method, or nothing there.
    assert_eq!(
        raw_call(&catalog, "/ecommerce.Discount/ApplyDiscount").await?,
        Code::Ok
    );
    assert_eq!(
        raw_call(&catalog, "/no.such.Service/Method").await?,
        Code::Unimplemented
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_refused_calls_is_one_log_line_and_the_allowed_client_is_still_served()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    // Room for two calls in flight in the whole server.
    let server =
        DiscountServer::start_with(&pki, &["--max-concurrent-calls", "2"], DiscountService).await?;
    let intruder = as_client(&server, &pki, "intruder").await?;
    let catalog = as_client(&server, &pki, "client").await?;
    let floods = (0..200).map(|_| {
        let channel = intruder.clone();
        async move { raw_call(&channel, "/ecommerce.Discount/ApplyDiscount").await }
    });
    let (refused, allowed) = tokio::join!(futures_util::future::join_all(floods), async {
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(both_methods(&catalog).await);
        }
        answers
    });
    for code in refused {
        assert_eq!(code?, Code::PermissionDenied);
    }
    for answer in allowed {
        assert_eq!(answer?, [Ok(900), Ok(900)]);
    }
    assert_eq!(logs.lines_with("call refused").len(), 1, "{}", logs.text());
    Ok(())
}

#[tokio::test]
async fn at_the_connection_limit_clients_not_on_the_list_make_room_first() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    let server =
        DiscountServer::start_with(&pki, &["--max-connections", "4"], DiscountService).await?;
    // The allowed client, through a proxy that counts its connections.
    let proxy = testkit::CountingProxy::start(server.addr()).await?;
    let allowed = testkit::grpc_channel_with(
        proxy.addr(),
        &pki.path("ca.pem"),
        Some(pki.identity("client")?),
    )
    .await?;
    assert_eq!(both_methods(&allowed).await?, [Ok(900), Ok(900)]);

    // Then clients not on the list take every slot, and keep coming: each
    // newcomer's connection is newer than the allowed client's last call.
    let mut unlisted = Vec::new();
    for _ in 0..8 {
        unlisted.push(as_client(&server, &pki, "intruder").await?);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The allowed client kept its connection.
    assert_eq!(both_methods(&allowed).await?, [Ok(900), Ok(900)]);
    assert_eq!(proxy.connections(), 1, "the allowed client was pushed out");
    Ok(())
}

#[tokio::test]
async fn identities_that_break_the_spiffe_rules_are_refused_and_shown_short_and_escaped()
-> SetupResult<()> {
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    let long = format!("spiffe://ecommerce.local/{}", "a".repeat(30_000));
    let forged = "spiffe://ecommerce.local/x\nWARN forged line";
    pki.issue_client_as("long", &[&long])?;
    pki.issue_client_as("dotdot", &["spiffe://ecommerce.local/catalog/../orders"])?;
    pki.issue_client_as("forged", &[forged])?;
    // A prefix that would admit all three if they were taken as written.
    let server = DiscountServer::start_with(
        &pki,
        &["--allow-client", "spiffe://ecommerce.local/*"],
        DiscountService,
    )
    .await?;
    for (name, why) in [
        ("long", "longer than 2,048 bytes"),
        ("dotdot", "none empty, '.' or '..'"),
        ("forged", "characters other than printable ASCII"),
    ] {
        let channel = as_client(&server, &pki, name).await?;
        let [single, _] = both_methods(&channel).await?;
        let (code, message) = single.err().ok_or("answered")?;
        assert_eq!(code, Code::PermissionDenied, "{name}");
        assert!(message.contains(why), "{name}: {message}");
        assert!(message.len() < 1_000, "{name}: {} bytes", message.len());
    }
    assert!(
        !logs.text().contains("\nWARN forged line"),
        "{}",
        logs.text()
    );
    Ok(())
}

/// How many lines the rate limit lets a cause write in `elapsed`: the
/// first, then one every 5 s.
fn lines_allowed(elapsed: std::time::Duration) -> usize {
    1 + usize::try_from(elapsed.as_secs() / 5).unwrap_or(usize::MAX)
}

#[tokio::test]
async fn a_flood_of_refused_calls_writes_a_handful_of_lines_in_all() -> SetupResult<()> {
    const FLOOD: usize = 2_000;
    let (logs, _capturing) = Logs::capture();
    let pki = Pki::generate()?;
    pki.issue_client_as("intruder", &[INTRUDER])?;
    let server = DiscountServer::start(&pki).await?;
    let intruder = as_client(&server, &pki, "intruder").await?;
    let catalog = as_client(&server, &pki, "client").await?;

    // Everything logged from here on, at the default level (INFO).
    let before = logs.text().len();
    let started = std::time::Instant::now();
    for _ in 0..FLOOD {
        assert_eq!(
            raw_call(&intruder, "/ecommerce.Discount/ApplyDiscount").await?,
            Code::PermissionDenied
        );
    }
    // The allowed client's calls keep their line each, refusals or not.
    assert_eq!(both_methods(&catalog).await?, [Ok(900), Ok(900)]);
    let elapsed = started.elapsed();
    let written = logs.text().split_off(before);
    let lines: Vec<&str> = written.lines().collect();
    eprintln!(
        "{FLOOD} refused calls in {elapsed:?} wrote {} lines, {} bytes",
        lines.len(),
        written.len()
    );

    let (served, flood): (Vec<&str>, Vec<&str>) = lines
        .into_iter()
        .partition(|line| line.contains("code=\"OK\""));
    assert_eq!(served.len(), 2, "{served:#?}");
    // The refusal, and the call's own line, each at most once per 5 s.
    assert!(
        flood.len() <= 2 * lines_allowed(elapsed),
        "{} lines: {:#?}",
        flood.len(),
        &flood[..flood.len().min(6)]
    );
    assert!(
        flood.iter().any(|line| line.contains("call refused")),
        "{flood:#?}"
    );
    Ok(())
}
