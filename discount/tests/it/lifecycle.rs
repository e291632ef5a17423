//! Health, reflection and graceful shutdown of the discount server, over
//! real TLS sockets on loopback.

use std::time::Duration;

use discount::DiscountService;
use ecommerce_proto::pb::discount_client::DiscountClient;
use testkit::{
    DiscountServer, HANG, Pki, ScriptedDiscount, SetupResult, discount_request, product,
};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn health(channel: &Channel, service: &str) -> SetupResult<ServingStatus> {
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status)?)
}

#[tokio::test]
async fn health_is_serving_then_not_serving_while_shutting_down() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let mut server =
        DiscountServer::start_with(&pki, &["--shutdown-delay", "2s"], DiscountService).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    assert_eq!(health(&channel, "").await?, ServingStatus::Serving);
    assert_eq!(
        health(&channel, "ecommerce.Discount").await?,
        ServingStatus::Serving
    );

    server.begin_stop();
    // Within the shutdown delay the server still answers, and says it is
    // going away. Poll: the flip happens on the server's own task.
    let mut status = ServingStatus::Serving;
    for _ in 0..100 {
        status = health(&channel, "ecommerce.Discount").await?;
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    assert_eq!(health(&channel, "").await?, ServingStatus::NotServing);

    server.stopped_within(HANG).await?;
    Ok(())
}

#[tokio::test]
async fn reflection_lists_the_discount_and_health_services() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let answer = answers.message().await?.ok_or("no reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        return Err(format!("unexpected answer: {answer:?}").into());
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ecommerce.Discount",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_call_in_flight_when_shutdown_starts_completes() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (slow, mut arrivals) = ScriptedDiscount::reporting(Duration::from_millis(500));
    let mut server = DiscountServer::start_with(&pki, &[], slow).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let mut client = DiscountClient::new(channel);
    let call = tokio::spawn(async move {
        client
            .apply_discount(discount_request(1, product(7, 1000)))
            .await
    });

    // Stop exactly when the call has reached the server.
    assert_eq!(tokio::time::timeout(HANG, arrivals.recv()).await?, Some(7));
    server.begin_stop();

    let answer = tokio::time::timeout(HANG, call).await???.into_inner();
    let value = answer
        .product
        .and_then(|p| p.discount_value)
        .map(|d| d.value_in_cents);
    assert_eq!(value, Some(900));
    server.stopped_within(HANG).await?;
    Ok(())
}

#[tokio::test]
async fn a_call_that_outlasts_the_drain_timeout_does_not_keep_the_server_up() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let (stuck, mut arrivals) = ScriptedDiscount::reporting(Duration::from_secs(3600));
    let mut server = DiscountServer::start_with(&pki, &["--drain-timeout", "300ms"], stuck).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let mut client = DiscountClient::new(channel);
    let call = tokio::spawn(async move {
        client
            .apply_discount(discount_request(1, product(7, 1000)))
            .await
    });
    tokio::time::timeout(HANG, arrivals.recv()).await?;

    server.begin_stop();
    // A stuck call does not keep the server up.
    server.stopped_within(HANG).await?;
    // The stuck call ends with an error rather than hanging.
    let outcome = tokio::time::timeout(HANG, call).await??;
    assert!(outcome.is_err(), "the stuck call succeeded: {outcome:?}");
    Ok(())
}

#[tokio::test]
async fn sigterm_or_sighup_right_after_the_start_up_line_is_handled() -> SetupResult<()> {
    // An orchestrator or a script may signal discount as soon as it
    // announces itself. The handlers are installed before the start-up
    // line is logged; were they installed after it (or when first polled),
    // a signal on the line would meet the default action, which ends the
    // process. So, once per signal, on the real binary: the moment the
    // line is read, the kernel already records the signal as caught; sent
    // then, it is logged as received, and discount goes on (SIGHUP
    // reloads) or stops cleanly (SIGTERM). common/tests/signals.rs checks
    // the same of the functions that install the handlers.
    let pki = Pki::generate()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_discount"));
    let args = testkit::discount::command_line(pki.dir(), 0, &[]);

    let mut discount = testkit::Process::start(binary, &args, testkit::discount::STARTED).await?;
    assert!(
        discount.catches("HUP")?,
        "SIGHUP not caught at the start-up line"
    );
    discount.signal("HUP").await?;
    discount.logged("received SIGHUP").await?;
    discount.logged("reloaded").await?;
    let status = discount.terminate().await?;
    assert!(status.success(), "exited with {status}");

    let mut discount = testkit::Process::start(binary, &args, testkit::discount::STARTED).await?;
    assert!(
        discount.catches("TERM")?,
        "SIGTERM not caught at the start-up line"
    );
    discount.signal("TERM").await?;
    discount.logged("received SIGTERM").await?;
    discount.logged("Discount service stopped").await?;
    let status = discount.exited().await?;
    assert!(status.success(), "exited with {status}");
    Ok(())
}
