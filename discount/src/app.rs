//! The discount service put together: what `main` runs and what the tests
//! start in-process, so both go through the same wiring.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ecommerce_proto::pb::discount_server::Discount;
use tokio::net::TcpListener;

use crate::authz::Allowed;
use crate::config::Config;
use crate::error::StartupError;
use crate::metrics::DiscountMetrics;
use crate::server;
use crate::service::DiscountService;
use crate::tls::{ClientAuth, TlsReloader, Transport};

/// A discount service with its TLS material loaded and its port bound,
/// ready to serve.
#[derive(Debug)]
pub struct Application<S = DiscountService> {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<TlsReloader>>,
    service: S,
    config: Config,
    open_files: Option<u64>,
    metrics: DiscountMetrics,
    /// The metrics listener, when `--metrics-addr` is set.
    admin: Option<(TcpListener, SocketAddr)>,
}

impl Application {
    /// Loads and checks the TLS material, then binds the port, as `config`
    /// says.
    ///
    /// # Errors
    /// A [`StartupError`] naming the file or flag to fix.
    pub fn build(config: &Config) -> Result<Self, StartupError> {
        Self::build_with(config, DiscountService)
    }
}

impl<S: Discount> Application<S> {
    /// [`Application::build`] serving `service` instead of the real rule:
    /// for tests that need a discount which fails or stalls on purpose.
    ///
    /// # Errors
    /// As [`Application::build`].
    pub fn build_with(config: &Config, service: S) -> Result<Self, StartupError> {
        common::crypto::install_default_provider();
        let open_files = common::serve::open_files::raise_open_files_limit();
        let metrics = DiscountMetrics::new();
        let tls = if config.insecure_plaintext {
            None
        } else {
            Some(Arc::new(
                config
                    .server_tls()
                    .reloadable(metrics.common.certificates())?,
            ))
        };
        let listener =
            common::serve::listener::bind(config.listen_addr()).map_err(StartupError::Bind)?;
        // The bound address, not the configured one: with port 0 only this
        // says where the service really is.
        let addr = listener.local_addr().map_err(StartupError::Bind)?;
        let admin = common::admin::bind(config.metrics_addr).map_err(StartupError::MetricsBind)?;
        Ok(Self {
            listener,
            addr,
            tls,
            service,
            config: config.clone(),
            open_files,
            metrics,
            admin,
        })
    }

    /// Where the service listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served, when `--metrics-addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// Discount's metrics.
    pub fn metrics(&self) -> DiscountMetrics {
        self.metrics.clone()
    }

    /// The handle that re-reads the TLS files (what SIGHUP does); `None` in
    /// plaintext mode.
    pub fn tls_reloader(&self) -> Option<Arc<TlsReloader>> {
        self.tls.clone()
    }

    /// Serves until `shutdown` completes, then drains (see
    /// [`server::serve`]). Re-reads the TLS files on every SIGHUP meanwhile.
    ///
    /// # Errors
    /// [`StartupError::Reflection`] if the reflection service cannot be
    /// built.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            addr,
            tls,
            service,
            config,
            open_files,
            metrics,
            admin,
        } = self;
        let options = config.server_options(metrics.clone());
        let metrics_addr = admin.as_ref().map_or_else(
            || "off".to_owned(),
            |(_, addr)| format!("http://{addr}/metrics"),
        );
        let admin = admin.map(|(listener, _)| {
            tokio::spawn(common::admin::serve(
                listener,
                metrics.common.clone(),
                Some(metrics.serving.clone()),
            ))
        });
        let (transport, reload_on_sighup) = match tls {
            Some(tls) => {
                let transport = Transport::Tls(tls.subscribe());
                // Installed before the start-up line: see common::shutdown_signal.
                let (reloader, reloads) = (Arc::clone(&tls), metrics.clone());
                let task = tokio::spawn(common::reload::on_sighup_or_change(
                    config.tls_files(),
                    config.tls_watch_interval,
                    move || {
                        // A failed reload is logged by the reloader and changes nothing.
                        reloads.reloaded(reloader.reload().is_ok());
                    },
                ));
                tracing::info!(
                    cert = %common::pem::display_path(&config.cert),
                    client_auth = ?config.client_auth,
                    client_ca = %common::pem::display_path(&config.client_ca),
                    handshake_timeout = ?options.handshake_timeout,
                    max_connections = options.max_connections,
                    open_files,
                    metrics = %metrics_addr,
                    "Running Discount service on {addr}"
                );
                if config.client_auth != ClientAuth::Required {
                    tracing::warn!(client_auth = ?config.client_auth, "clients without a certificate are accepted");
                }
                log_allow_list(&config);
                (transport, Some(task))
            }
            None => {
                tracing::warn!(
                    max_connections = options.max_connections,
                    open_files,
                    metrics = %metrics_addr,
                    "Running Discount service on {addr} in PLAINTEXT: no TLS, no authentication; only behind a service mesh that secures connections"
                );
                tracing::warn!(
                    "the allow-list (--allow-client) is off in plaintext: no client certificate, so no identity to check"
                );
                (Transport::Plaintext, None)
            }
        };
        let served = server::serve(listener, transport, options, service, shutdown).await;
        if let Some(task) = reload_on_sighup {
            task.abort();
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        served?;
        tracing::info!("Discount service stopped");
        Ok(())
    }
}

/// Says at start who may call `ecommerce.Discount`, and warns when that is
/// anyone.
fn log_allow_list(config: &Config) {
    // One string, "a, b": the field is text, not a Debug-printed list.
    let allowed = config
        .allow_clients
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if config.client_auth == ClientAuth::None {
        tracing::warn!(
            "the allow-list (--allow-client) is off: with --client-auth none clients present no certificate, so there is no identity to check, and anyone who reaches the port may call"
        );
    } else if config.allow_clients.contains(&Allowed::Any) {
        tracing::warn!(
            allow_clients = %allowed,
            "--allow-client any: every client the TLS layer accepts may call ecommerce.Discount, whatever its identity"
        );
    } else {
        tracing::info!(allow_clients = %allowed, "ecommerce.Discount is open to these client identities only");
    }
}
