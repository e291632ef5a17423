//! A discount replica that refuses every call's stream: it holds
//! discount's certificate and speaks HTTP/2, but answers each call with
//! `RST_STREAM(REFUSED_STREAM)`, which tonic's own server cannot be made to
//! send. Its health check says SERVING, or is refused too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::pem::{PemFile, PemSource};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::SetupResult;
use crate::pki::Pki;

/// The health check's path.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A `grpc.health.v1.HealthCheckResponse` with `status: SERVING`, framed:
/// uncompressed, two bytes long, field 1 (varint) = 1.
const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

/// The replica, on `127.0.0.1:0` until dropped.
#[derive(Debug)]
pub struct RefusingPeer {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RefusingPeer {
    /// Serves with the server certificate of `pki`. With `healthy`, health
    /// checks are answered SERVING; without, refused like every call.
    ///
    /// # Errors
    /// The keys could not be read or the port bound.
    pub async fn start(pki: &Pki, healthy: bool) -> SetupResult<Self> {
        let read = |name: &str| PemFile::read(&PemSource::new(pki.path(name), "test"));
        let mut config = rustls::ServerConfig::builder_with_provider(common::crypto::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                read("cert.pem")?.certificates()?,
                read("private.key")?.private_key()?,
            )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, healthy, &count).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            refused,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many streams it has refused.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for RefusingPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: every stream refused, but health checks when `healthy`.
async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    healthy: bool,
    refused: &AtomicUsize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut connection = h2::server::handshake(tls).await?;
    while let Some(stream) = connection.accept().await {
        let (request, mut respond) = stream?;
        if !(healthy && request.uri().path() == HEALTH_CHECK) {
            refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let mut body = request.into_body();
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk?.len());
        }
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())?;
        let mut send = respond.send_response(head, false)?;
        send.send_data(Bytes::from_static(&SERVING), false)?;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        send.send_trailers(trailers)?;
    }
    Ok(())
}
