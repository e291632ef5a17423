//! `discount [PORT]`: starts the Discount gRPC service. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use discount::{Application, Config, StartupError};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if config.check_certs {
        common::crypto::install_default_provider();
        return common::doctor::print_and_exit_code(&config.server_tls().check_certificates());
    }
    if config.healthcheck {
        let Some(admin) = config.metrics_addr else {
            eprintln!(
                "discount: --healthcheck needs --metrics-addr (DISCOUNT_METRICS_ADDR): readiness is served on that plaintext listener, because the gRPC port asks for a client certificate"
            );
            return ExitCode::FAILURE;
        };
        return common::probe::run("discount", common::probe::local(admin), "/readyz").await;
    }
    let telemetry = common::telemetry::init(
        "discount",
        "warn,h2=error,discount=info,common=info",
        config.log_format,
        config.max_traces_per_second,
    );
    let ran = run(&config).await;
    telemetry.shutdown().await;
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Plain stderr rather than tracing: this must show even with
            // RUST_LOG=off.
            eprintln!("discount: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: &Config) -> Result<(), StartupError> {
    Application::build(config)?
        .run_until_stopped(common::shutdown_signal())
        .await
}
