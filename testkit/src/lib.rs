//! Test support shared by the services' integration tests.
//!
//! - [`Pki`]: a CA, a server identity and client identities (good, expired,
//!   for the wrong purpose) made with
//!   `rcgen` when the test runs and written to a temporary directory, so tests
//!   go through the same file-loading code as the binaries and nothing
//!   secret is ever committed.
//! - [`DiscountServer`]: the real discount server on `127.0.0.1:0`, stopped
//!   when dropped; with [`ScriptedDiscount`] behind it, one that fails or
//!   stalls on purpose.
//! - [`CountingProxy`]: a TCP forwarder that counts connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::tls::PemSource;
use discount::config::ClientAuth;
use discount::{DiscountService, ServerOptions, Transport};
use ecommerce_proto::pb::discount_server::Discount;
use ecommerce_proto::pb::{
    Customer, DiscountRequest, DiscountResponse, DiscountsRequest, DiscountsResponse, Product,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

/// Result type for test set-up: any failure there is a failed test.
pub type SetupResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The host names and addresses the test server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A throw-away public key infrastructure in a temporary directory, laid out
/// like `keys/` after `scripts/gen-keys.sh`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

/// What kind of client certificate [`Pki::issue_client`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// A good one: `clientAuth`, valid now.
    Valid,
    /// Valid for `clientAuth`, but expired in 2021.
    Expired,
    /// Valid now, but for `serverAuth` only: the wrong purpose.
    ServerPurpose,
}

impl Pki {
    /// Makes a CA and, signed by it, a server identity for [`SERVER_NAMES`]
    /// and a client identity. ECDSA P-256, like the dev keys.
    ///
    /// # Errors
    /// Key generation or file writing failed.
    pub fn generate() -> SetupResult<Self> {
        let dir = tempfile::tempdir()?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ecommerce test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("ca.key"), ca_key.serialize_pem())?;

        let pki = Self {
            dir,
            ca_params,
            ca_key,
        };
        let names = SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect();
        pki.issue(
            "cert.pem",
            "private.key",
            names,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )?;
        pki.issue_client("client", ClientCert::Valid)?;
        Ok(pki)
    }

    /// Issues a client certificate from this CA into `<name>.pem` and
    /// `<name>.key`.
    ///
    /// # Errors
    /// Key generation or file writing failed.
    pub fn issue_client(&self, name: &str, kind: ClientCert) -> SetupResult<()> {
        let usage = match kind {
            ClientCert::ServerPurpose => ExtendedKeyUsagePurpose::ServerAuth,
            ClientCert::Valid | ClientCert::Expired => ExtendedKeyUsagePurpose::ClientAuth,
        };
        let names = vec![name.to_owned()];
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        self.issue(&cert, &key, names, name, usage, kind == ClientCert::Expired)
    }

    fn issue(
        &self,
        cert_file: &str,
        key_file: &str,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> SetupResult<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(self.path(cert_file), cert.pem())?;
        std::fs::write(self.path(key_file), key.serialize_pem())?;
        Ok(())
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one file, e.g. `"ca.pem"`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies this PKI's files into `dir`, replacing what is there: what an
    /// operator does when rotating certificates.
    ///
    /// # Errors
    /// A file could not be copied.
    pub fn install_into(&self, dir: &Path) -> SetupResult<()> {
        for name in [
            "ca.pem",
            "cert.pem",
            "private.key",
            "client.pem",
            "client.key",
        ] {
            std::fs::copy(self.path(name), dir.join(name))?;
        }
        Ok(())
    }

    /// The CA certificate, as a [`PemSource`].
    pub fn ca(&self) -> PemSource {
        PemSource::new(self.path("ca.pem"), "test CA")
    }

    /// The server certificate, as a [`PemSource`].
    pub fn server_cert(&self) -> PemSource {
        PemSource::new(self.path("cert.pem"), "test server certificate")
    }

    /// The server key, as a [`PemSource`].
    pub fn server_key(&self) -> PemSource {
        PemSource::new(self.path("private.key"), "test server key")
    }
}

/// A request for customer `customer_id`'s price of product `product_id`,
/// priced `price_in_cents`.
pub fn discount_request(customer_id: i32, product_id: i32, price_in_cents: i32) -> DiscountRequest {
    DiscountRequest {
        customer: Some(Customer {
            id: customer_id,
            ..Customer::default()
        }),
        product: Some(Product {
            id: product_id,
            price_in_cents,
            ..Product::default()
        }),
    }
}

/// `error` followed by each of its sources, joined by `": "`: the whole
/// story, where tonic's own message is often just "transport error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A tonic channel to `addr` over mutual TLS, trusting the CA of `pki`,
/// expecting the server to be `localhost`, and presenting `pki`'s client
/// certificate. Connects before returning.
///
/// # Errors
/// The connection or the handshake failed.
pub async fn grpc_channel(addr: SocketAddr, pki: &Pki) -> SetupResult<Channel> {
    let identity = Identity::from_pem(
        std::fs::read(pki.path("client.pem"))?,
        std::fs::read(pki.path("client.key"))?,
    );
    grpc_channel_with(addr, &pki.path("ca.pem"), Some(identity)).await
}

/// A tonic channel to `addr` over TLS, trusting the CA of `ca_pem`,
/// expecting the server to be `localhost`, presenting `identity` if any.
/// Connects before returning.
///
/// # Errors
/// The connection or the handshake failed.
pub async fn grpc_channel_with(
    addr: SocketAddr,
    ca_pem: &Path,
    identity: Option<Identity>,
) -> SetupResult<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca_pem)?))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await?)
}

/// The real discount server, serving on `127.0.0.1` in this process.
///
/// Dropping it (or calling [`DiscountServer::stop`]) shuts it down.
#[derive(Debug)]
pub struct DiscountServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DiscountServer {
    /// Starts discount, with the server identity of `pki`, on port 0.
    ///
    /// # Errors
    /// The TLS material was refused or the port could not be bound.
    pub async fn start(pki: &Pki) -> SetupResult<Self> {
        Self::start_with(pki, "127.0.0.1:0".parse()?, |_| {}, DiscountService).await
    }

    /// Starts `service` on `addr` (port 0 for any) behind the real server,
    /// with options adjusted by `configure`.
    ///
    /// # Errors
    /// As [`DiscountServer::start`].
    pub async fn start_with(
        pki: &Pki,
        addr: SocketAddr,
        configure: impl FnOnce(&mut ServerOptions),
        service: impl Discount,
    ) -> SetupResult<Self> {
        common::tls::install_default_provider();
        let tls = discount::config::server_tls(
            &pki.server_cert(),
            &pki.server_key(),
            ClientAuth::Required,
            &pki.ca(),
        )?;
        let mut options = ServerOptions::new(Transport::tls(tls));
        configure(&mut options);
        let listener = common::net::bind(addr)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            if let Err(error) = discount::serve(listener, options, service, shutdown).await {
                panic!("discount server failed: {error}");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where the server listens (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the shutdown signal, as SIGTERM would, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the server has stopped (after [`DiscountServer::begin_stop`]).
    /// `true` if it stopped within `limit`.
    pub async fn stopped_within(mut self, limit: Duration) -> bool {
        match self.task.take() {
            Some(task) => tokio::time::timeout(limit, task).await.is_ok(),
            None => true,
        }
    }

    /// Shuts the server down and waits until it has stopped, so that the
    /// port is closed when this returns.
    ///
    /// # Errors
    /// The server did not stop within 10 seconds.
    pub async fn stop(mut self) -> SetupResult<()> {
        self.begin_stop();
        if self.stopped_within(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err("discount did not stop within 10 s".into())
        }
    }
}

impl Drop for DiscountServer {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

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
    /// How many calls it has answered, of either method.
    pub calls: Arc<AtomicUsize>,
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
        let product_id = request.get_ref().product.as_ref().map(|p| p.id);
        if let (Some(received), Some(id)) = (&self.received, product_id) {
            let _ = received.send(id);
        }
        tokio::time::sleep(self.delay).await;
        if product_id.is_some() && product_id == self.fail_product {
            return Err(Status::internal("scripted failure for this product"));
        }
        DiscountService.apply_discount(request).await
    }

    async fn apply_discounts(
        &self,
        request: Request<DiscountsRequest>,
    ) -> Result<Response<DiscountsResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.batch {
            return Err(Status::unimplemented(
                "this discount predates ApplyDiscounts",
            ));
        }
        tokio::time::sleep(self.delay).await;
        DiscountService.apply_discounts(request).await
    }
}

/// A TCP forwarder on `127.0.0.1` that counts the connections made through
/// it: put it between catalog and discount to see how many connections the
/// catalog opens. TLS passes through untouched.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Forwards every connection to `target`.
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start(target: SocketAddr) -> SetupResult<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections have been made through the proxy so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
