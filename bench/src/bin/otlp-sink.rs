//! `otlp-sink`: an OTLP trace receiver for `scripts/bench.sh`'s `traced`
//! scenario, so that exporting spans is measured against a real gRPC
//! endpoint on loopback. Prints its endpoint, counts the spans it is sent
//! without keeping them, and at SIGTERM or Ctrl-C prints
//! `{"spans": N}` and exits.

use std::io::Write;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!(
            "usage: otlp-sink\n\nAn OTLP/gRPC trace receiver on 127.0.0.1 (a port the system picks) that counts spans and keeps none.\nPrints its endpoint (for OTEL_EXPORTER_OTLP_ENDPOINT); at SIGTERM or Ctrl-C prints {{\"spans\": N}} and exits.\nIt takes no arguments."
        );
        return ExitCode::from(2);
    }
    let receiver = match testkit::TraceReceiver::start_counting().await {
        Ok(receiver) => receiver,
        Err(error) => {
            eprintln!("otlp-sink: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stopped = common::shutdown_signal();
    println!("{}", receiver.endpoint());
    let _ = std::io::stdout().flush();
    stopped.await;
    println!("{{\"spans\": {}}}", receiver.count());
    ExitCode::SUCCESS
}
