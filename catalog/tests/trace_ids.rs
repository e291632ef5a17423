//! The two services' JSON logs join on `trace_id` with no OTLP endpoint:
//! the caller's `traceparent` is passed on by the catalog, and a request
//! without one gets a new trace id that discount's lines carry too.
//!
//! The catalog runs as its real binary, without `OTEL_*` variables;
//! discount runs in this process with the telemetry its `main` would set
//! up without an endpoint, logging JSON into a buffer. A test binary of its
//! own: it installs the process's one global subscriber.

use common::telemetry::{LogFormat, init_with};
use reqwest::StatusCode;
use serde_json::Value;
use testkit::{DiscountServer, Logs, Pki, Process, SetupResult};
use tracing_subscriber::EnvFilter;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_both_logs_carry_the_trace_id() -> SetupResult<()> {
    let discount_log = Logs::default();
    let writer = discount_log.clone();
    init_with(
        EnvFilter::new("warn,discount=info,common=info"),
        LogFormat::Json,
        None,
        "discount",
        move || writer.clone(),
    );
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let path = |name: &str| pki.path(name).display().to_string();
    let args: Vec<String> = [
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
    let mut catalog = Process::start_with_env(
        env!("CARGO_BIN_EXE_catalog").as_ref(),
        &args,
        "Server running on ",
        &[("LOG_FORMAT", "json"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
    )
    .await?;
    let client = reqwest::Client::new();
    let url = format!("http://{}/products", catalog.addr());

    // The caller's trace, passed on.
    let answer = client
        .get(&url)
        .header("X-USER-ID", "1")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-discount-status"], "applied");
    let line = catalog.logged(&format!("\"trace_id\":\"{TRACE}\"")).await?;
    let line: Value = serde_json::from_str(&line)?;
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    let answered = discount_log.json_messages("call answered");
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0]["trace_id"], TRACE, "{}", answered[0]);

    // No traceparent: a new trace, the same in both logs.
    let answer = client.get(&url).header("X-USER-ID", "1").send().await?;
    assert_eq!(answer.status(), StatusCode::OK);
    let answered = discount_log.json_messages("call answered");
    assert_eq!(answered.len(), 2, "{answered:?}");
    let fresh = answered[1]["trace_id"].as_str().ok_or("no trace_id")?;
    assert_eq!(fresh.len(), 32, "{}", answered[1]);
    assert_ne!(fresh, TRACE);
    catalog.logged(&format!("\"trace_id\":\"{fresh}\"")).await?;

    assert!(catalog.terminate().await?.success());
    Ok(())
}
