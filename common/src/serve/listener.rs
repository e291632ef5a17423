//! Binding listening sockets.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// How many connections may wait in the kernel's accept queue.
const BACKLOG: i32 = 1024;

/// How long to pause accepting after `accept` fails, instead of spinning on
/// the error.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`, with `TCP_NODELAY` set.
///
/// `accept` fails for reasons that pass (the process is out of file
/// descriptors, a connection was reset while queued); a server must not
/// stop over them, nor spin. So errors are logged, accepting pauses
/// briefly, and it tries again. Nagle's algorithm is turned off because both
/// services write small, complete messages that should leave at once.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                }
                return (tcp, peer);
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed; pausing accepts briefly");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Binds `addr` for accepting TCP connections.
///
/// For an IPv6 address the socket is made dual-stack explicitly
/// (`IPV6_V6ONLY` off), so `[::]` takes IPv4 clients too whatever the host's
/// `net.ipv6.bindv6only` says. On a host without IPv6 the wildcard `[::]`
/// falls back to `0.0.0.0` on the same port, and says so.
///
/// # Errors
/// The OS error, with the address in the message (port taken, needs
/// privileges, address not on this host).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_socket(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn bind_socket(requested: SocketAddr) -> io::Result<TcpListener> {
    let (socket, addr) = match new_socket(requested) {
        Err(e) if requested.is_ipv6() && requested.ip().is_unspecified() => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, requested.port()));
            tracing::warn!(%requested, fallback = %v4, error = %e, "no IPv6 on this host; listening on IPv4 only");
            (new_socket(v4)?, v4)
        }
        other => (other?, requested),
    };
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Lets a restarted service bind again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ipv6_wildcard_also_accepts_ipv4_clients() {
        let listener = bind("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connect = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        let (client, server) = tokio::join!(connect, listener.accept());
        assert!(client.is_ok(), "IPv4 client refused: {client:?}");
        assert!(server.is_ok());
    }

    #[tokio::test]
    async fn a_taken_port_names_the_address_in_the_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        // SO_REUSEADDR does not allow two listeners on one port.
        let second = bind(addr).unwrap_err().to_string();
        assert!(
            second.contains(&format!("cannot listen on {addr}")),
            "{second}"
        );
    }
}
