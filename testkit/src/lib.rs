//! Test support shared by the services' integration tests.
//!
//! - [`Pki`]: a CA, a server identity and a client identity made with
//!   `rcgen` when the test runs and written to a temporary directory, so tests
//!   go through the same file-loading code as the binaries and nothing
//!   secret is ever committed.
//! - [`DiscountServer`]: the real discount server on `127.0.0.1:0`, stopped
//!   when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tls::PemSource;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Result type for test set-up: any failure there is a failed test.
pub type SetupResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The host names and addresses the test server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A throw-away public key infrastructure in a temporary directory, laid out
/// like `keys/` after `scripts/gen-keys.sh`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
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
        let issuer = Issuer::new(ca_params, &ca_key);

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.is_ca = IsCa::ExplicitNoCa;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let names = SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let (server_pem, server_key) =
            leaf(names, "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_pem, client_key) =
            leaf(Vec::new(), "catalog", ExtendedKeyUsagePurpose::ClientAuth)?;

        let write = |name: &str, contents: &str| std::fs::write(dir.path().join(name), contents);
        write("ca.pem", &ca_cert.pem())?;
        write("ca.key", &ca_key.serialize_pem())?;
        write("cert.pem", &server_pem)?;
        write("private.key", &server_key)?;
        write("client.pem", &client_pem)?;
        write("client.key", &client_key)?;
        Ok(Self { dir })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one file, e.g. `"ca.pem"`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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
    /// Starts discount with the server identity of `pki` on port 0.
    ///
    /// # Errors
    /// The TLS material was refused or the port could not be bound.
    pub async fn start(pki: &Pki) -> SetupResult<Self> {
        Self::start_on("127.0.0.1:0".parse()?, pki, Duration::from_secs(10)).await
    }

    /// Starts discount on `addr` (port 0 for any) with a given TLS handshake
    /// time limit.
    ///
    /// # Errors
    /// As [`DiscountServer::start`].
    pub async fn start_on(
        addr: SocketAddr,
        pki: &Pki,
        handshake_timeout: Duration,
    ) -> SetupResult<Self> {
        common::tls::install_default_provider();
        let tls = discount::server::Tls {
            config: discount::config::server_tls(&pki.server_cert(), &pki.server_key())?,
            handshake_timeout,
        };
        let listener = common::net::bind(addr)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = discount::run(listener, tls, shutdown).await {
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

    /// Shuts the server down and waits until it has stopped, so that the
    /// port is closed when this returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DiscountServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
