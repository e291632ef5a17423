//! The catalog put together: what `main` runs and what the tests start
//! in-process, so both go through the same wiring.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::data::Data;
use crate::discount::{DiscountClient, Resolve, SystemResolver};
use crate::error::StartupError;
use crate::metrics::CatalogMetrics;
use crate::routes::AppState;
use crate::server;

/// A catalog with its client of discount prepared (not yet connected) and
/// its port bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    client: DiscountClient,
    data: Data,
    /// Keeps `data` fresh; stopped with the catalog.
    refresh: tokio::task::JoinHandle<()>,
    config: Config,
    open_files: Option<u64>,
    metrics: CatalogMetrics,
    /// The metrics listener, when `--metrics-addr` is set.
    admin: Option<(TcpListener, SocketAddr)>,
}

impl Application {
    /// Reads and checks the TLS material, prepares the client of discount,
    /// opens the data, and binds the port, as `config` says. Discount's
    /// names are resolved by the system's resolver.
    ///
    /// # Errors
    /// A [`StartupError`] naming the file or flag to fix.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        Self::build_with_resolver(config, Arc::new(SystemResolver)).await
    }

    /// [`Application::build`], with discount's names resolved by
    /// `resolver` (tests hand in answers of their own).
    ///
    /// # Errors
    /// A [`StartupError`] naming the file or flag to fix.
    pub async fn build_with_resolver(
        config: &Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, StartupError> {
        common::crypto::install_default_provider();
        let open_files = common::serve::open_files::raise_open_files_limit();
        let metrics = CatalogMetrics::new();
        let client = DiscountClient::start(&config.discount(), resolver, metrics.discount.clone())?;
        let url = config.database_url();
        let store = crate::store::open(url).await?;
        // A SQLite file that cannot be used fails the start; PostgreSQL
        // that cannot be reached yet is tried again while the catalog
        // serves 503s that say so.
        let retry = url.sqlite_path().is_none();
        let (data, refresh) = crate::data::start(
            store,
            url.clone(),
            !config.no_migrate,
            config.data_refresh_interval,
            retry,
        )
        .await?;
        let listener =
            common::serve::listener::bind(config.listen_addr()).map_err(StartupError::Bind)?;
        // The bound address, not the configured one: with port 0 only this
        // says where the service really is.
        let addr = listener.local_addr().map_err(StartupError::Bind)?;
        let admin = common::admin::bind(config.metrics_addr).map_err(StartupError::MetricsBind)?;
        let discount = client.clone();
        let (replicas, freshness, held) = (metrics.discount.clone(), metrics.clone(), data.clone());
        metrics.common.on_scrape(move || {
            let known = discount.replicas();
            let serving = known.iter().filter(|replica| replica.serving).count();
            replicas.replicas(serving, known.len());
            freshness.data(&held);
        });
        Ok(Self {
            listener,
            addr,
            client,
            data,
            refresh,
            config: config.clone(),
            open_files,
            metrics,
            admin,
        })
    }

    /// Where the catalog listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served, when `--metrics-addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// The catalog's metrics.
    pub fn metrics(&self) -> CatalogMetrics {
        self.metrics.clone()
    }

    /// The client of discount, whose TLS material
    /// [`DiscountClient::reload`] re-reads (what SIGHUP does).
    pub fn discount_client(&self) -> DiscountClient {
        self.client.clone()
    }

    /// Serves until `shutdown` completes, then drains (see [`server::run`]).
    /// Re-reads the TLS files on every SIGHUP meanwhile.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Self {
            listener,
            addr,
            client,
            data,
            refresh,
            config,
            open_files,
            metrics,
            admin,
        } = self;
        let (discount, options) = (config.discount(), config.serve_options());
        if !config.discount_plaintext && config.discount_identity.0.is_none() {
            tracing::warn!(
                "--discount-identity is empty: any server certificate from --discount-ca valid for the name dialled is taken for discount, whatever workload it belongs to"
            );
        }
        if config.discount_plaintext {
            tracing::warn!(
                "talking to discount in PLAINTEXT: no TLS, no authentication; only behind a service mesh that secures connections"
            );
        }
        // Installed before the start-up line: see common::shutdown_signal.
        let (reloader, reloads) = (client.clone(), metrics.clone());
        let reload_on_sighup = tokio::spawn(common::reload::on_sighup_or_change(
            config.tls_files(),
            config.tls_watch_interval,
            move || {
                // A failed reload is logged by the reloader and changes nothing.
                reloads.reloaded(reloader.reload().is_ok());
            },
        ));
        let metrics_addr = admin.as_ref().map(|(_, addr)| *addr);
        let admin = admin.map(|(listener, _)| {
            // No `/readyz` there: the catalog's is on its HTTP port.
            tokio::spawn(common::admin::serve(listener, metrics.common.clone(), None))
        });
        warn_about_ports(&config);
        tracing::info!(
            discount = %discount.targets,
            resolve_interval = ?discount.resolve_interval,
            health_interval = ?discount.health_interval,
            server_name = %discount.server_name,
            discount_identity = config.discount_identity.0.as_deref().unwrap_or("(not checked)"),
            dial_per_request = discount.dial_per_request,
            ca = %common::pem::display_path(&config.discount_ca),
            database = %config.database_url(),
            products = data.product_count(),
            client_cert = %common::pem::display_path(&config.client_cert),
            max_connections = options.max_connections,
            open_files,
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |addr| format!("http://{addr}/metrics")),
            "Server running on {addr}"
        );
        server::run(
            listener,
            AppState::new(client, data, metrics, config.max_unsent_bytes()),
            options,
            shutdown,
        )
        .await;
        reload_on_sighup.abort();
        refresh.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        tracing::info!("catalog stopped");
    }
}

/// Warns about `--discount-host` targets written without a port: they
/// dial 443 unless `--discount-port` says otherwise, and a single cluster
/// IP with the port Kubernetes injects pins every call to one pod.
fn warn_about_ports(config: &Config) {
    let targets: Vec<_> = config.discount_host.iter().collect();
    let Some(portless) = targets.iter().find(|target| target.port().is_none()) else {
        return;
    };
    match config.discount_port {
        None => tracing::warn!(
            target_without_port = %portless,
            "a --discount-host target has no port, so port 443 (grpc-go's default) is dialled; write host:port (discount listens on 11443 by default), or set --discount-port"
        ),
        Some(_) if targets.len() == 1 && portless.ip().is_some() => tracing::warn!(
            discount = %portless,
            "--discount-host is one IP address without a port, as Kubernetes sets DISCOUNT_SERVICE_HOST to a Service's cluster IP: \
             all calls go over one connection to whichever pod that address forwards it to, rebalanced only when discount \
             retires the connection (its --max-connection-age). To spread calls over every replica, name a headless Service \
             (clusterIP: None) with its port, e.g. --discount-host discount-headless:11443, and set enableServiceLinks: false"
        ),
        Some(_) => {}
    }
}
