//! One request followed across the HTTP -> gRPC hop: the spans both
//! services export over OTLP, and their JSON logs joined on `trace_id`.
//!
//! The catalog runs as its real binary (its own `main`, its own telemetry
//! set-up from the environment); discount runs in this process, with the
//! telemetry set-up it would have, exporting under its own service name.
//! Both export to an OTLP receiver in this process, on `127.0.0.1:0`.
//!
//! Only the first test installs this process's global subscriber; the
//! other's discount, in the same process, then logs through it too, so the
//! first looks only at lines of its own trace.
//!
//! A test binary of its own, not a module of `tests/it`: a process has one
//! global subscriber, and discount's telemetry set-up (`init_with`, as its
//! `main` calls it) installs it. Among the other tests it would take the
//! place of the one `testkit::Logs` installs for the tests that read their
//! log, or be refused when one of those came first.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::telemetry::{LogFormat, exporting_provider, init_with};
use reqwest::StatusCode;
use serde_json::Value;
use testkit::{DiscountServer, Logs, Pki, Process, ReceivedSpan, SetupResult, TraceReceiver};
use tracing_subscriber::EnvFilter;

/// The trace and span the test request says it comes from.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The catalog's command line: port 0 on loopback, `discount` with the
/// keys of `pki`, a deadline no debug build misses, then `extra`.
fn command_line(pki: &Pki, discount: &DiscountServer, extra: &[&str]) -> Vec<String> {
    let path = |name: &str| pki.path(name).display().to_string();
    let mut args: Vec<String> = [
        "0",
        "--listen-addr",
        "127.0.0.1",
        "--discount-host",
        &discount.addr().to_string(),
        "--discount-ca",
        &path("ca.pem"),
        "--client-cert",
        &path("client.pem"),
        "--client-key",
        &path("client.key"),
        "--discount-deadline",
        "5s",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|span| span.service == service && span.kind == kind && span.trace_id == TRACE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_across_both_services_and_both_logs() -> SetupResult<()> {
    let receiver = TraceReceiver::start().await?;
    let provider = exporting_provider(
        "discount",
        Some(&receiver.endpoint()),
        NonZeroU32::new(100).ok_or("zero")?,
    )?;
    let discount_log = Logs::default();
    let writer = discount_log.clone();
    init_with(
        // discount's default filter, as its main sets it.
        EnvFilter::new("warn,discount=info,common=info"),
        LogFormat::Json,
        Some(&provider),
        "discount",
        move || writer.clone(),
    );

    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let args = command_line(&pki, &discount, &[]);
    let endpoint = receiver.endpoint();
    let mut catalog = Process::start_with_env(
        env!("CARGO_BIN_EXE_catalog").as_ref(),
        &args,
        "Server running on ",
        &[
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await?;

    let answer = reqwest::Client::new()
        .get(format!("http://{}/products", catalog.addr()))
        .header("X-USER-ID", "1")
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-discount-status"], "applied");

    // discount's spans leave when flushed; the catalog's within 100 ms.
    let flushed = tokio::task::spawn_blocking(move || {
        let flushed = provider.force_flush();
        (provider, flushed)
    })
    .await?;
    flushed.1?;
    let spans = receiver
        .wait_for(|spans| {
            find(spans, "catalog", SERVER).is_some()
                && find(spans, "catalog", CLIENT).is_some()
                && find(spans, "discount", SERVER).is_some()
        })
        .await?;
    let request = find(&spans, "catalog", SERVER).ok_or("no catalog server span")?;
    let call = find(&spans, "catalog", CLIENT).ok_or("no catalog client span")?;
    let served = find(&spans, "discount", SERVER).ok_or("no discount server span")?;

    // One trace, the caller's, and each span the child of the one before.
    assert_eq!(request.name, "GET /products");
    assert_eq!(request.parent_span_id, CALLER);
    assert_eq!(request.attribute("http.route"), Some("/products"));
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));
    assert_eq!(call.name, "ecommerce.Discount/ApplyDiscounts");
    assert_eq!(call.parent_span_id, request.span_id);
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(served.name, "ecommerce.Discount/ApplyDiscounts");
    assert_eq!(served.parent_span_id, call.span_id);
    assert_eq!(served.attribute("rpc.grpc.status_code"), Some("0"));

    // The catalog's access log line, in JSON, inside the request span.
    let line = catalog.logged(&format!("\"trace_id\":\"{TRACE}\"")).await?;
    let line: Value = serde_json::from_str(&line)?;
    for field in ["timestamp", "level", "target", "message"] {
        assert!(line.get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(line["span_id"], request.span_id.as_str(), "{line}");

    // discount's access line for the call, at its default level, in its
    // own log, with the same trace id and its own span's id: the two logs
    // join on trace_id.
    let answered: Vec<Value> = discount_log
        .json_messages("call answered")
        .into_iter()
        .filter(|line| line["trace_id"] == TRACE)
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
    let line = &answered[0];
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["span_id"], served.span_id.as_str(), "{line}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(
        line["fields"]["method"],
        "ecommerce.Discount/ApplyDiscounts"
    );
    assert_eq!(line["fields"]["code"], "OK");
    // Health checks are neither traced nor logged by discount.
    assert!(
        !spans.iter().any(|span| span.name.contains("Health")),
        "{spans:#?}"
    );

    // At SIGTERM the catalog exports what it still holds and exits 0.
    let status = catalog.terminate().await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// `catalog_traces_dropped_total` as the catalog's `/metrics` says now.
async fn traces_dropped(metrics: std::net::SocketAddr) -> SetupResult<u64> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("catalog_traces_dropped_total "))
        .ok_or("no catalog_traces_dropped_total in /metrics")?;
    Ok(value.trim().parse()?)
}

/// Issue 25: a caller whose every request carries a sampled `traceparent`
/// made the catalog export every span, whatever its own 1% sampler. With
/// `--max-traces-per-second`, the caller's decision is still followed but
/// at most the cap of traces a second is recorded, each one whole, and the
/// rest are counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_sampling_every_request_gets_at_most_the_cap_of_whole_traces() -> SetupResult<()> {
    const CAP: u32 = 2;
    const REQUESTS: u64 = 200;
    const SPANS_PER_LISTING: usize = 2;
    let receiver = TraceReceiver::start().await?;
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let args = command_line(
        &pki,
        &discount,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-traces-per-second",
            &CAP.to_string(),
        ],
    );
    let endpoint = receiver.endpoint();
    // Before the catalog exists, so before its bucket does: every sampling
    // decision falls between this and the last answer.
    let began = Instant::now();
    let catalog = Process::start_with_env(
        env!("CARGO_BIN_EXE_catalog").as_ref(),
        &args,
        "Server running on ",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // The set-up: 1% of new traces, the caller's decision
            // followed.
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ],
    )
    .await?;
    let metrics = catalog.metrics_addr()?;

    let client = reqwest::Client::new();
    for n in 1..=REQUESTS {
        let answer = client
            .get(format!("http://{}/products", catalog.addr()))
            .header("X-USER-ID", "1")
            // A trace of its own per request, sampled, as such a caller sends.
            .header("traceparent", format!("00-{n:032x}-{CALLER}-01"))
            .send()
            .await?;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let elapsed = began.elapsed();

    // Every listing is either recorded (its spans exported) or counted as
    // dropped: wait until both add up, within HANG.
    let deadline = Instant::now() + testkit::HANG;
    let (spans, dropped) = loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|span| span.service == "catalog")
            .collect();
        let dropped = traces_dropped(metrics).await?;
        if spans.len() as u64 + dropped * SPANS_PER_LISTING as u64
            >= REQUESTS * SPANS_PER_LISTING as u64
        {
            break (spans, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{} spans and {dropped} dropped traces for {REQUESTS} listings",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut traces: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in &spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    let recorded = traces.len() as u64;
    assert_eq!(
        recorded + dropped,
        REQUESTS,
        "each listing recorded or dropped, once"
    );

    // Whole traces: the request's span, the caller's child, and its call.
    for (trace, spans) in &traces {
        assert_eq!(spans.len(), SPANS_PER_LISTING, "trace {trace}: {spans:#?}");
        let request = of_kind(spans, SERVER).ok_or("no server span")?;
        let call = of_kind(spans, CLIENT).ok_or("no client span")?;
        assert_eq!(request.parent_span_id, CALLER);
        assert_eq!(call.parent_span_id, request.span_id);
    }

    // The bucket holds one second's worth and refills at CAP a second, so
    // over `elapsed` it gave at most CAP * (elapsed + 1) tokens; + 1 for its
    // floating-point arithmetic. A bound from above only: a slow machine
    // sends fewer requests a second and so has fewer dropped, never more
    // recorded.
    let bound = f64::from(CAP) * (elapsed.as_secs_f64() + 1.0) + 1.0;
    assert!(
        (recorded as f64) <= bound,
        "{recorded} traces recorded in {elapsed:?} at {CAP} a second"
    );
    assert!(recorded >= 1, "nothing was recorded");
    assert!(
        dropped > 0,
        "nothing dropped: {REQUESTS} listings took {elapsed:?}"
    );

    let status = catalog.terminate().await?;
    assert!(status.success(), "{status}");
    Ok(())
}

fn of_kind<'a>(spans: &[&'a ReceivedSpan], kind: i32) -> Option<&'a ReceivedSpan> {
    spans.iter().copied().find(|span| span.kind == kind)
}
