//! Serving the discount service on TLS connections.
//!
//! The TLS handshake is done here with rustls rather than by tonic's built-in
//! TLS, for two reasons: each handshake runs in its own task with a time
//! limit, so a client that connects and says nothing ties up neither the
//! accept loop nor memory for long; and a failed handshake is logged with the
//! peer address and rustls' reason, which is the first thing anyone asks
//! when "the catalog cannot reach discount".

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ecommerce_proto::pb::discount_server::DiscountServer;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::StartupError;
use crate::service::DiscountService;

/// How long to pause accepting after `accept` fails (for example when the
/// process is out of file descriptors), instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Handshaken connections waiting for the gRPC server to pick them up.
const READY_QUEUE: usize = 128;

/// TLS settings of the server.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate, key, protocol versions and ALPN.
    pub config: Arc<ServerConfig>,
    /// The time a client has to complete its handshake.
    pub handshake_timeout: Duration,
}

/// Serves `ecommerce.Discount` on `listener` until `shutdown` completes.
///
/// Takes an already-bound listener so that callers (tests in particular) can
/// bind port 0 and read the real port before the server starts.
///
/// # Errors
/// [`StartupError::Serve`] if the gRPC server fails.
pub async fn run(
    listener: TcpListener,
    tls: Tls,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let incoming = tls_incoming(listener, tls);
    tonic::transport::Server::builder()
        .add_service(DiscountServer::new(DiscountService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Accepts TCP connections and yields those that complete a TLS handshake.
///
/// The accept loop stops when the returned stream is dropped, which is what
/// tonic does when it shuts down.
fn tls_incoming(
    listener: TcpListener,
    tls: Tls,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(tls.config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let handshake = handshake(acceptor.clone(), tcp, peer, tls.handshake_timeout);
                    let ready = ready.clone();
                    tokio::spawn(async move {
                        if let Some(stream) = handshake.await {
                            // Err only when the server is shutting down.
                            let _ = ready.send(Ok(stream)).await;
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing accepts briefly");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    });
    ReceiverStream::new(incoming)
}

/// Runs one server-side TLS handshake, bounded by `limit`.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<TlsStream<TcpStream>> {
    // gRPC messages are small and latency-bound; do not let Nagle hold them.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        // A TCP connect and close with no TLS at all is what port probes and
        // load balancer checks do: not worth a warning.
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "connection closed before the TLS handshake");
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?limit, "TLS handshake timed out; closing the connection");
            None
        }
    }
}
