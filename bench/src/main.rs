//! `grpc-load`: drives `ecommerce.Discount/ApplyDiscount` directly, with many
//! concurrent calls over a few mutual-TLS connections, for `scripts/bench.sh`.
//!
//! wrk and oha speak HTTP/1.1, not gRPC; this client uses the generated
//! stubs. It sends the seed's `ApplyDiscount` (one product a call), which
//! isolates discount's per-call cost; the catalog itself sends one
//! `ApplyDiscounts` per listing, which scenario 2 of the benchmark measures
//! through the catalog.
//! Every answer is checked: anything but customer 1's price of the
//! iPhone (89999) counts as an error. Prints one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ecommerce_proto::pb::discount_client::DiscountClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, Product};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Load for the discount service.
#[derive(Debug, Parser)]
struct Args {
    /// `host:port` of discount.
    #[arg(long)]
    addr: String,
    /// Directory with `ca.pem`, `client.pem` and `client.key`.
    #[arg(long)]
    keys: PathBuf,
    /// Calls in flight at any time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// TLS connections the calls are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// How long to drive load.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// The answer every call must get.
const EXPECTED_CENTS: i32 = 89999;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    common::crypto::install_default_provider();
    match run(args).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("grpc-load: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn channel(args: &Args) -> Result<Channel, Box<dyn std::error::Error>> {
    let read = |name: &str| std::fs::read(args.keys.join(name));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("client.pem")?, read("client.key")?))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{}", args.addr))?
        .tcp_nodelay(true)
        .tls_config(tls)?
        .connect()
        .await?)
}

async fn run(args: Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(channel(&args).await?);
    }
    let request = DiscountRequest {
        customer: Some(Customer {
            id: 1,
            first_name: "John".into(),
            last_name: "Snow".into(),
        }),
        product: Some(Product {
            id: 1,
            slug: "iphone-x".into(),
            description: "64GB, black and iOS 12".into(),
            price_in_cents: 99999,
            discount_value: None,
        }),
    };
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let mut client = DiscountClient::new(channels[worker % channels.len()].clone());
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0_u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answer = client.apply_discount(request.clone()).await;
                latencies.push(sent.elapsed());
                let cents = answer
                    .ok()
                    .and_then(|a| a.into_inner().product)
                    .and_then(|p| p.discount_value)
                    .map(|d| d.value_in_cents);
                if cents != Some(EXPECTED_CENTS) {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (mine, my_errors) = worker.await?;
        latencies.extend(mine);
        errors += my_errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index =
            ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(serde_json::json!({
        "requests": latencies.len(),
        "errors": errors,
        "seconds": seconds,
        "rps": latencies.len() as f64 / seconds,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }))
}
