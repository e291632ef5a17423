//! `discount [PORT]`: starts the Discount gRPC service. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use discount::config::ClientAuth;
use discount::{Config, StartupError};

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init("warn,discount=info,common=info");
    let config = Config::parse();
    common::tls::install_default_provider();
    if config.check_certs {
        return common::doctor::print_and_exit_code(&config.check_certificates());
    }
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
    let (options, tls) = config.server_options()?;
    let listener = common::net::bind(config.listen_addr()).map_err(StartupError::Bind)?;
    let addr = listener.local_addr().map_err(StartupError::Bind)?;
    match tls {
        Some(tls) => {
            tracing::info!(
                cert = %common::tls::display_path(&config.cert),
                client_auth = ?config.client_auth,
                client_ca = %common::tls::display_path(&config.client_ca),
                handshake_timeout = ?options.handshake_timeout,
                "Running Discount service on {addr}"
            );
            tokio::spawn(common::reload::on_sighup(move || {
                let _ = tls.reload();
            }));
        }
        None => tracing::warn!(
            "Running Discount service on {addr} in PLAINTEXT: no TLS, no authentication; only behind a service mesh that secures connections"
        ),
    }
    if config.client_auth != ClientAuth::Required && !config.insecure_plaintext {
        tracing::warn!(client_auth = ?config.client_auth, "clients without a certificate are accepted");
    }
    discount::run(listener, options, common::shutdown_signal()).await?;
    tracing::info!("Discount service stopped");
    Ok(())
}
