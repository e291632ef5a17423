//! Hostile and malformed input to discount: each leaves the server up and
//! answering the next good call, with a clear status or a refused handshake.
//! Loopback only, bounded in count and time.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use discount::server::MAX_MESSAGE_SIZE;
use ecommerce_proto::pb::DiscountValue;
use ecommerce_proto::pb::discount_client::DiscountClient;
use rustls::pki_types::ServerName;
use testkit::{DiscountServer, HANG, Pki, SetupResult, discount_request, product};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

/// The discount customer 1 gets on `price`, asked over a fresh connection.
async fn priced(server: &DiscountServer, pki: &Pki, price: i32) -> SetupResult<DiscountValue> {
    let channel = testkit::grpc_channel(server.addr(), pki).await?;
    testkit::discount_value(channel, 1, price).await
}

/// Still up, still right.
async fn assert_healthy(server: &DiscountServer, pki: &Pki) -> SetupResult<()> {
    assert_eq!(priced(server, pki, 1000).await?.value_in_cents, 900);
    Ok(())
}

#[tokio::test]
async fn the_extreme_prices_are_priced_without_overflow() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    assert_eq!(
        priced(&server, &pki, i32::MIN).await?,
        DiscountValue::default()
    );
    assert_eq!(
        priced(&server, &pki, i32::MAX).await?,
        DiscountValue {
            pct: 0.1,
            value_in_cents: 1_932_735_282
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let mut huge = product(1, 1000);
    huge.description = "x".repeat(MAX_MESSAGE_SIZE + 1);
    let status = DiscountClient::new(channel)
        .apply_discount(discount_request(1, huge))
        .await
        .err()
        .ok_or("an oversized request was accepted")?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    assert_healthy(&server, &pki).await
}

#[tokio::test]
async fn health_and_reflection_have_the_same_size_limit() -> SetupResult<()> {
    // tonic's default for a service is 4 MiB a message: a client sending
    // part of one on each of 256 streams would pin a gigabyte.
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let huge = "x".repeat(MAX_MESSAGE_SIZE + 1);
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: huge.clone(),
        })
        .await
        .err()
        .ok_or("an oversized health check was accepted")?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(huge)),
    };
    let outcome = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await;
    // Reflection's handler reads the stream itself, and on the decoding
    // error ends its answer without one; without the limit it listed the
    // services.
    let answer = match outcome {
        Err(status) => Err(status),
        Ok(response) => response.into_inner().message().await,
    };
    match answer {
        Ok(None) => {}
        Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        Ok(Some(_)) => return Err("an oversized reflection request was answered".into()),
    }
    assert_healthy(&server, &pki).await
}

/// Sends bytes as the request message, unchanged: for what no generated
/// client would send.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

async fn send_raw(channel: Channel, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/ecommerce.Discount/ApplyDiscount");
    grpc.unary(tonic::Request::new(message), path, RawBytes)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_get_a_status_not_a_crash() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;

    // A field header with an invalid wire type, then a truncated varint.
    for garbage in [
        vec![0x0f, 0x01],
        vec![0x08, 0xff, 0xff],
        vec![0x12, 0x7f, 0x01],
    ] {
        let status = send_raw(channel.clone(), garbage.clone())
            .await
            .err()
            .ok_or("garbage was accepted")?;
        assert_eq!(status.code(), Code::Internal, "{garbage:?}: {status:?}");
        assert!(status.message().contains("decode"), "{}", status.message());
    }
    // An empty message is a valid DiscountRequest with nothing in it.
    let status = send_raw(channel, Vec::new())
        .await
        .err()
        .ok_or("empty accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_healthy(&server, &pki).await
}

#[tokio::test]
async fn a_plaintext_grpc_client_on_the_tls_port_is_refused_quickly() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let plaintext =
        Endpoint::from_shared(format!("http://{}", server.addr()))?.connect_timeout(HANG);
    let attempt = async {
        let channel = plaintext.connect().await?;
        DiscountClient::new(channel)
            .apply_discount(discount_request(1, product(1, 1000)))
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let outcome = tokio::time::timeout(HANG, attempt).await?;
    assert!(
        outcome.is_err(),
        "a plaintext client was served on the TLS port"
    );
    assert_healthy(&server, &pki).await
}

#[tokio::test]
async fn a_tls_client_that_only_speaks_http1_is_refused() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let server = DiscountServer::start(&pki).await?;
    let name = ServerName::try_from("localhost")?;

    // Offering only http/1.1: no protocol in common, so no handshake.
    let tcp = TcpStream::connect(server.addr()).await?;
    let refused = tokio::time::timeout(
        HANG,
        testkit::wire::tls_connector(&pki, &[b"http/1.1"])?.connect(name.clone(), tcp),
    )
    .await?;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("NoApplicationProtocol"), "{error:?}");

    // Offering nothing, then speaking HTTP/1.1: the connection is closed,
    // and nothing that looks like an HTTP/1.1 answer comes back.
    let tcp = TcpStream::connect(server.addr()).await?;
    let mut tls = tokio::time::timeout(
        HANG,
        testkit::wire::tls_connector(&pki, &[])?.connect(name, tcp),
    )
    .await??;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG, tls.read_to_end(&mut answer)).await?;
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_healthy(&server, &pki).await
}

#[tokio::test]
async fn calls_past_the_budget_are_refused_at_once_not_queued() -> SetupResult<()> {
    use testkit::ScriptedDiscount;
    // A discount whose calls take 1 s, with room for 8 at a time, gets 80
    // at once: 8 are served, the others are told at once rather than
    // waiting behind them past any caller's deadline.
    let pki = Pki::generate()?;
    let slow = ScriptedDiscount {
        delay: Duration::from_secs(1),
        ..ScriptedDiscount::default()
    };
    let server = DiscountServer::start_with(&pki, &["--max-concurrent-calls", "8"], slow).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let started = Instant::now();
    let calls = (0..80).map(|i| {
        let mut client = DiscountClient::new(channel.clone());
        async move {
            let outcome = client
                .apply_discount(discount_request(1, product(i, 1000)))
                .await;
            (outcome.map(|_| ()), started.elapsed())
        }
    });
    let outcomes = tokio::time::timeout(HANG, futures_util::future::join_all(calls)).await?;
    let served = outcomes
        .iter()
        .filter(|(outcome, _)| outcome.is_ok())
        .count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|(outcome, took)| outcome.as_ref().err().map(|status| (status, took)))
        .collect();
    let slowest_refusal = refused.iter().map(|(_, took)| **took).max();
    eprintln!(
        "{served} served, {} refused, the slowest refusal after {slowest_refusal:?}",
        refused.len()
    );
    assert_eq!(served, 8);
    assert_eq!(refused.len(), 72);
    for (status, took) in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-concurrent-calls"),
            "{status:?}"
        );
        assert!(*took < Duration::from_secs(1), "queued for {took:?}");
    }
    assert_healthy(&server, &pki).await
}

#[tokio::test]
async fn a_flood_of_shed_calls_writes_a_handful_of_lines_in_all() -> SetupResult<()> {
    use testkit::{Logs, ScriptedDiscount};
    const FLOOD: usize = 2_000;
    let (logs, _capturing) = Logs::capture();
    // Room for two calls, held by two that are never answered while the
    // flood lasts: every other call is shed.
    let pki = Pki::generate()?;
    let (slow, mut arrivals) = ScriptedDiscount::reporting(HANG * 6);
    let server = DiscountServer::start_with(&pki, &["--max-concurrent-calls", "2"], slow).await?;
    let channel = testkit::grpc_channel(server.addr(), &pki).await?;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let mut client = DiscountClient::new(channel.clone());
            tokio::spawn(async move {
                client
                    .apply_discount(discount_request(1, product(i, 1000)))
                    .await
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(HANG, arrivals.recv())
            .await
            .map_err(|_| "the two calls to hold never arrived")?;
    }

    // Everything logged from here on, at the default level (INFO).
    let before = logs.text().len();
    let started = Instant::now();
    let mut client = DiscountClient::new(channel.clone());
    for i in 0..FLOOD {
        let answer = tokio::time::timeout(
            HANG,
            client.apply_discount(discount_request(1, product(i as i32, 1000))),
        )
        .await
        .map_err(|_| format!("call {i} of the flood had no answer within {HANG:?}"))?;
        assert_eq!(
            answer.err().map(|status| status.code()),
            Some(Code::ResourceExhausted)
        );
    }
    let elapsed = started.elapsed();
    let written = logs.text().split_off(before);
    let lines: Vec<&str> = written.lines().collect();
    eprintln!(
        "{FLOOD} shed calls in {elapsed:?} wrote {} lines, {} bytes",
        lines.len(),
        written.len()
    );
    // The shedding, and the call's own line, each at most once per 5 s.
    let allowed = 1 + usize::try_from(elapsed.as_secs() / 5)?;
    assert!(
        lines.len() <= 2 * allowed,
        "{} lines: {:#?}",
        lines.len(),
        &lines[..lines.len().min(6)]
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("--max-concurrent-calls")),
        "{lines:#?}"
    );
    for call in held {
        call.abort();
    }
    Ok(())
}
