//! `discount [PORT]`: starts the Discount gRPC service. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use discount::{Config, StartupError};

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init("warn,discount=info,common=info");
    let config = Config::parse();
    common::tls::install_default_provider();
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Plain stderr rather than tracing: this must show even with
            // RUST_LOG=off.
            eprintln!("discount: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), StartupError> {
    let options = config.server_options()?;
    let listener = common::net::bind(config.listen_addr()).map_err(StartupError::Bind)?;
    tracing::info!(
        cert = %common::tls::display_path(&config.cert),
        handshake_timeout = ?options.handshake_timeout,
        "Running Discount service on {}",
        config.listen_addr()
    );
    discount::run(listener, options, common::shutdown_signal()).await?;
    tracing::info!("Discount service stopped");
    Ok(())
}
