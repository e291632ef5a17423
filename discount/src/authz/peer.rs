//! The IO wrapper that carries each connection's client identity, read
//! once when its handshake ends, to tonic and so to every call on it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use common::identity::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose TLS handshake is done, with the identity its client
/// certificate carries, read once for all its calls.
#[derive(Debug)]
pub struct Authenticated<IO> {
    io: IO,
    identity: Arc<PeerIdentity>,
}

impl<IO> Authenticated<IO> {
    /// `io`, whose client presented `identity`.
    pub fn new(io: IO, identity: PeerIdentity) -> Self {
        Self {
            io,
            identity: Arc::new(identity),
        }
    }
}

/// What tonic is told of an [`Authenticated`] connection: what the stream
/// inside says, and the identity (moved into each request's extensions by
/// `server::connect_info::expose_peer`).
#[derive(Debug, Clone)]
pub struct AuthenticatedInfo<I> {
    /// The inner stream's own information (`TlsConnectInfo`).
    pub info: I,
    /// The client's identity.
    pub identity: Arc<PeerIdentity>,
}

impl<IO: Connected> Connected for Authenticated<IO> {
    type ConnectInfo = AuthenticatedInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        AuthenticatedInfo {
            info: self.io.connect_info(),
            identity: Arc::clone(&self.identity),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Authenticated<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Authenticated<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
