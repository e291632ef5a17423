//! The real discount service in this process, started the way `main`
//! starts it ([`discount::Application`]) from a real command line, and a
//! scripted discount that fails or stalls on purpose.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use discount::tls::TlsReloader;
use discount::{Application, DiscountService, StartupError};
use ecommerce_proto::pb::discount_server::Discount;
use ecommerce_proto::pb::{
    DiscountRequest, DiscountResponse, DiscountsRequest, DiscountsResponse, Product,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::SetupResult;
use crate::pki::Pki;
use crate::task::ServerTask;

/// The arguments that start discount on `127.0.0.1:port` with the keys in
/// `keys` (laid out as [`Pki`] lays them out), then `extra`: for the
/// in-process server and for the binary alike.
pub fn command_line(keys: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let file = |name: &str| keys.join(name).display().to_string();
    let mut args = vec![
        port.to_string(),
        "--listen-addr".to_owned(),
        "127.0.0.1".to_owned(),
        "--cert".to_owned(),
        file("cert.pem"),
        "--key".to_owned(),
        file("private.key"),
        "--client-ca".to_owned(),
        file("ca.pem"),
    ];
    // Tests that rewrite TLS files reload when they say (SIGHUP, or
    // `reload_tls`), unless they test the watch and set it.
    if !extra.contains(&"--tls-watch-interval") {
        args.extend(["--tls-watch-interval".to_owned(), "0s".to_owned()]);
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// The start-up line discount logs, followed by its bound address.
pub const STARTED: &str = "Running Discount service on ";

/// discount, serving on `127.0.0.1` in this process until stopped or
/// dropped.
#[derive(Debug)]
pub struct DiscountServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsReloader>>,
    task: ServerTask<StartupError>,
}

impl DiscountServer {
    /// Starts discount with the keys of `pki`, on port 0.
    ///
    /// # Errors
    /// The TLS material was refused or the port could not be bound.
    pub async fn start(pki: &Pki) -> SetupResult<Self> {
        Self::start_with(pki, &[], DiscountService).await
    }

    /// Starts `service` with the keys of `pki`, on port 0, with the extra
    /// command-line flags `args` (`["--shutdown-delay", "2s"]`).
    ///
    /// # Errors
    /// As [`DiscountServer::start`].
    pub async fn start_with(pki: &Pki, args: &[&str], service: impl Discount) -> SetupResult<Self> {
        Self::start_in(pki.dir(), 0, args, service).await
    }

    /// Starts `service` on `127.0.0.1:port` with the keys in `keys` (laid
    /// out as [`Pki`] lays them out), plus the flags `args`.
    ///
    /// # Errors
    /// As [`DiscountServer::start`].
    pub async fn start_in(
        keys: &Path,
        port: u16,
        args: &[&str],
        service: impl Discount,
    ) -> SetupResult<Self> {
        let argv = std::iter::once("discount".to_owned()).chain(command_line(keys, port, args));
        let config = discount::Config::try_parse_from(argv)?;
        let app = Application::build_with(&config, service)?;
        let (addr, metrics_addr, tls) = (app.local_addr(), app.metrics_addr(), app.tls_reloader());
        let task = ServerTask::spawn(|shutdown| app.run_until_stopped(shutdown.wait()));
        Ok(Self {
            addr,
            metrics_addr,
            tls,
            task,
        })
    }

    /// Where `GET /metrics` is served, when started with `--metrics-addr`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the server listens (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Re-reads the TLS files, as SIGHUP does.
    ///
    /// # Errors
    /// Why the new files were refused (the old ones stay in use), or that
    /// the server runs in plaintext.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err("plaintext: no TLS to reload".to_owned()),
        }
    }

    /// Sends the shutdown signal, as SIGTERM would, without waiting.
    pub fn begin_stop(&mut self) {
        self.task.begin_stop();
    }

    /// See [`ServerTask::stopped_within`].
    ///
    /// # Errors
    /// Still running, panicked or failed.
    pub async fn stopped_within(self, limit: Duration) -> Result<(), String> {
        self.task.stopped_within(limit).await
    }

    /// Stops the server and waits until its port is closed.
    ///
    /// # Errors
    /// As [`ServerTask::stop`].
    pub async fn stop(self) -> SetupResult<()> {
        self.task.stop().await
    }
}

/// How long a call that [`ScriptedDiscount::hang_every`] picks hangs: past
/// any deadline the tests set.
pub const HUNG: Duration = Duration::from_secs(10);

/// A discount that misbehaves on request: it answers like the real one,
/// but after `delay`, and with an error for `fail_product`. It reports each
/// product id it receives on `received`, so a test can act at the moment a
/// call is in flight instead of sleeping and hoping.
#[derive(Debug, Clone, Default)]
pub struct ScriptedDiscount {
    /// The product id to answer with `INTERNAL`.
    pub fail_product: Option<i32>,
    /// How long to wait before answering.
    pub delay: Duration,
    /// Where to report each received product id.
    pub received: Option<mpsc::UnboundedSender<i32>>,
    /// Whether it has `ApplyDiscounts`; without, it answers UNIMPLEMENTED,
    /// as a peer built from the seed's proto does.
    pub batch: bool,
    /// How many calls it has taken, of either method.
    pub calls: Arc<AtomicUsize>,
    /// How many of those it has answered: a call whose handler was dropped
    /// first (its connection torn down) is taken and never answered.
    pub answered: Arc<AtomicUsize>,
    /// While set, every call of either method is answered `fail_code`
    /// (after `delay`); its health service, if any, still says SERVING.
    pub failing: Arc<AtomicBool>,
    /// What `failing` answers with; `INTERNAL` when not set.
    pub fail_code: Option<tonic::Code>,
    /// When not 0, every `ApplyDiscounts` call whose number is a multiple
    /// of it (counted in `calls`) hangs for [`HUNG`] before it is
    /// answered: a replica that is mostly fine, and never fails twice in a
    /// row.
    pub hang_every: usize,
    /// Changes every product of every answer before it is sent: a replica
    /// that holds discount's certificate and lies.
    pub tamper: Option<fn(&mut Product)>,
}

impl ScriptedDiscount {
    /// A discount that answers after `delay` and reports every product id it
    /// receives on the returned channel.
    pub fn reporting(delay: Duration) -> (Self, mpsc::UnboundedReceiver<i32>) {
        let (received, arrivals) = mpsc::unbounded_channel();
        let discount = Self {
            delay,
            received: Some(received),
            ..Self::default()
        };
        (discount, arrivals)
    }
}

#[tonic::async_trait]
impl Discount for ScriptedDiscount {
    async fn apply_discount(
        &self,
        request: Request<DiscountRequest>,
    ) -> Result<Response<DiscountResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.apply_discount_now(request).await;
        self.answered.fetch_add(1, Ordering::SeqCst);
        answer
    }

    async fn apply_discounts(
        &self,
        request: Request<DiscountsRequest>,
    ) -> Result<Response<DiscountsResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = self.apply_discounts_now(call, request).await;
        self.answered.fetch_add(1, Ordering::SeqCst);
        answer
    }
}

impl ScriptedDiscount {
    /// `ApplyDiscount` as scripted.
    async fn apply_discount_now(
        &self,
        request: Request<DiscountRequest>,
    ) -> Result<Response<DiscountResponse>, Status> {
        let product_id = request.get_ref().product.as_ref().map(|p| p.id);
        if let (Some(received), Some(id)) = (&self.received, product_id) {
            let _ = received.send(id);
        }
        tokio::time::sleep(self.delay).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(self.failure());
        }
        if product_id.is_some() && product_id == self.fail_product {
            return Err(Status::internal("scripted failure for this product"));
        }
        let mut answer = DiscountService.apply_discount(request).await?;
        if let (Some(tamper), Some(product)) = (self.tamper, &mut answer.get_mut().product) {
            tamper(product);
        }
        Ok(answer)
    }

    /// `ApplyDiscounts` as scripted; `call` is its number in `calls`.
    async fn apply_discounts_now(
        &self,
        call: usize,
        request: Request<DiscountsRequest>,
    ) -> Result<Response<DiscountsResponse>, Status> {
        if call.is_multiple_of(self.hang_every) {
            tokio::time::sleep(HUNG).await;
        }
        if !self.batch {
            return Err(Status::unimplemented(
                "this discount predates ApplyDiscounts",
            ));
        }
        tokio::time::sleep(self.delay).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(self.failure());
        }
        let mut answer = DiscountService.apply_discounts(request).await?;
        if let Some(tamper) = self.tamper {
            answer.get_mut().products.iter_mut().for_each(tamper);
        }
        Ok(answer)
    }

    /// The status every call gets while `failing`.
    fn failure(&self) -> Status {
        Status::new(
            self.fail_code.unwrap_or(tonic::Code::Internal),
            "scripted failure of every call",
        )
    }
}

/// A discount as a peer built from the seed's proto would be: only the
/// `ecommerce.Discount` service (no health service, no reflection), over
/// mutual TLS with the keys of a [`Pki`], on `127.0.0.1:0`. Stops when
/// dropped.
#[derive(Debug)]
pub struct SeedStylePeer {
    addr: SocketAddr,
    task: ServerTask<tonic::transport::Error>,
}

impl SeedStylePeer {
    /// Serves `service` (say a [`ScriptedDiscount`] without `batch`).
    ///
    /// # Errors
    /// The keys could not be read or the port bound.
    pub async fn start(pki: &Pki, service: impl Discount) -> SetupResult<Self> {
        use ecommerce_proto::pb::discount_server::DiscountServer as Service;
        use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(pki.path("cert.pem"))?,
                std::fs::read(pki.path("private.key"))?,
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(pki.path("ca.pem"))?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let router = Server::builder()
            .tls_config(tls)?
            .add_service(Service::new(service));
        let task = ServerTask::spawn(|shutdown| {
            router.serve_with_incoming_shutdown(incoming, shutdown.wait())
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long it took to stop; see [`ServerTask::stop`].
    ///
    /// # Errors
    /// As [`ServerTask::stop`].
    pub async fn stop(self) -> SetupResult<()> {
        self.task.stop().await
    }
}
