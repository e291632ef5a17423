//! `catalog [PORT]`: starts the catalog HTTP service. See `--help`.

use std::process::ExitCode;

use catalog::{Application, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(command) = &config.command {
        return catalog::commands::run(&config, command).await;
    }
    if config.check_certs {
        common::crypto::install_default_provider();
        let report = config.discount().security.check_certificates();
        return common::doctor::print_and_exit_code(&report);
    }
    if config.healthcheck {
        let addr = common::probe::local(config.listen_addr());
        return common::probe::run("catalog", addr, "/healthz").await;
    }
    let telemetry = common::telemetry::init(
        "catalog",
        "warn,h2=error,catalog=info,common=info,tower_http=info",
        config.log_format,
        config.max_traces_per_second,
    );
    match Application::build(&config).await {
        Ok(app) => {
            app.run_until_stopped(common::shutdown_signal()).await;
            telemetry.shutdown().await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            // Plain stderr rather than tracing: this must show even with
            // RUST_LOG=off.
            eprintln!("catalog: error: {error}");
            ExitCode::FAILURE
        }
    }
}
