//! `catalog [PORT]`: starts the catalog HTTP service. See `--help`.

use std::process::ExitCode;

use catalog::discount::DiscountClient;
use catalog::{AppState, Config, StartupError};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init("warn,catalog=info,common=info,tower_http=info");
    let config = Config::parse();
    common::tls::install_default_provider();
    if config.check_certs {
        return common::doctor::print_and_exit_code(&config.discount().check_certificates());
    }
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Plain stderr rather than tracing: this must show even with
            // RUST_LOG=off.
            eprintln!("catalog: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), StartupError> {
    let discount = config.discount();
    let client = DiscountClient::connect_lazy(&discount)?;
    if config.discount_plaintext {
        tracing::warn!(
            "talking to discount in PLAINTEXT: no TLS, no authentication; only behind a service mesh that secures connections"
        );
    }
    let reloader = client.clone();
    tokio::spawn(common::reload::on_sighup(move || {
        let _ = reloader.reload();
    }));
    let listener = common::net::bind(config.listen_addr()).map_err(StartupError::Bind)?;
    // The bound address, not the configured one: with port 0 only this
    // says where the service really is.
    let addr = listener.local_addr().map_err(StartupError::Bind)?;
    tracing::info!(
        discount = %discount.addr,
        server_name = %discount.server_name,
        dial_per_request = discount.dial_per_request,
        ca = %common::tls::display_path(&config.discount_ca),
        client_cert = %common::tls::display_path(&config.client_cert),
        "Server running on {addr}"
    );
    catalog::run(
        listener,
        AppState::new(client),
        config.serve_options(),
        common::shutdown_signal(),
    )
    .await
    .map_err(StartupError::Serve)?;
    tracing::info!("catalog stopped");
    Ok(())
}
