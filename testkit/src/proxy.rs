//! Stand-ins on the network path: a forwarder that counts connections and
//! can stall, and a peer that accepts and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::SetupResult;

/// A TCP forwarder on `127.0.0.1` that counts the connections made through
/// it: put it between catalog and discount to see how many connections the
/// catalog opens. TLS passes through untouched. [`CountingProxy::stall`]
/// holds every byte in both directions for a while, as a discount stopped
/// by the scheduler (or SIGSTOP) would; [`CountingProxy::kill`] drops
/// everything, as a host that died would.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
    piping: Arc<Mutex<Vec<AbortHandle>>>,
}

impl CountingProxy {
    /// Forwards every connection to `target`.
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start(target: SocketAddr) -> SetupResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let (stalled, stall) = watch::channel(false);
        let piping = Arc::new(Mutex::new(Vec::new()));
        let pipes = Arc::clone(&piping);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let stall = stall.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::join!(
                            forward(from_client, to_server, stall.clone()),
                            forward(from_server, to_client, stall),
                        );
                    }
                });
                pipes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(pipe.abort_handle());
            }
        });
        Ok(Self {
            addr,
            connections,
            stalled,
            task,
            piping,
        })
    }

    /// Closes the listening socket (new connections are refused) and every
    /// connection through the proxy, at once.
    pub fn kill(&self) {
        self.task.abort();
        for pipe in self
            .piping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            pipe.abort();
        }
    }

    /// Holds everything in both directions for `period`, then lets it
    /// through at once.
    pub async fn stall(&self, period: Duration) {
        self.stalled.send_replace(true);
        tokio::time::sleep(period).await;
        self.stalled.send_replace(false);
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

/// Copies `from` to `to`, holding each chunk while `stall` is true; ends
/// when either side closes, and closes `to` for writing.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stall: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read @ 1..) = from.read(&mut buffer).await {
        if stall.wait_for(|stalled| !stalled).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP listener on `127.0.0.1` that accepts connections, counts them, and
/// never answers: a stand-in for a hung discount, and a witness of whether
/// the catalog tried to call discount at all. Returns its address and the
/// count.
///
/// # Errors
/// The port could not be bound.
pub async fn silent_peer() -> SetupResult<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Ok((addr, accepted))
}
