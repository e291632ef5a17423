//! The admin listener's socket I/O, kept apart from whom it accepts and
//! closes: reading heads (at accept, straight from the socket), writing
//! answers (within a time limit), closing without leaving TIME_WAIT.

use std::io::{self, Read};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::answer::{self, Head, MAX_HEAD, Reply};
use super::waiting::Waiting;

/// The longest one of the answers written apart from the listener's task
/// (scrapes, answers the socket could not take at once) may take to be
/// written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where reading a connection got to.
pub(super) enum Step {
    /// Its head is not whole, and nothing more has come.
    Wait,
    /// Its head is whole: the reply.
    Answer(Reply),
    /// It closed, or failed.
    Gone,
}

/// Reads what `conn` has sent: at once if `fresh` (just accepted: its head
/// may have been waiting in the kernel while it was queued), else once the
/// runtime has seen the socket readable. Whatever it returns, the socket
/// is registered to wake the listener naming `conn` when more comes.
pub(super) fn pull(conn: &mut Waiting, fresh: bool, ready: Option<&IntGauge>) -> Step {
    let mut buffer = [0_u8; MAX_HEAD];
    let mut fresh = fresh;
    loop {
        // Below MAX_HEAD: a head that reaches it is answered 431.
        let room = MAX_HEAD.saturating_sub(conn.head.len()).max(1);
        let read = if std::mem::take(&mut fresh) {
            read_now(&conn.tcp, &mut buffer[..room])
        } else {
            match conn
                .tcp
                .poll_read_ready(&mut Context::from_waker(conn.waker()))
            {
                Poll::Pending => return Step::Wait,
                Poll::Ready(Err(_)) => return Step::Gone,
                Poll::Ready(Ok(())) => conn.tcp.try_read(&mut buffer[..room]),
            }
        };
        match read {
            Ok(0) => return Step::Gone,
            Ok(n) => {
                let new = conn.head.len();
                conn.head.extend_from_slice(&buffer[..n]);
                if let Head::Complete(reply) = answer::read(&conn.head, new, ready) {
                    return Step::Answer(reply);
                }
            }
            // Readiness is cleared: the next poll registers for more.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Gone,
        }
    }
}

/// One non-blocking read straight from the socket, whatever readiness the
/// runtime has recorded for it: for a socket it has not polled yet.
fn read_now(tcp: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let socket = SockRef::from(tcp);
    (&*socket).read(buffer)
}

/// One non-blocking write straight to the socket, as [`read_now`] reads.
pub(super) fn write_now(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    SockRef::from(tcp).send(bytes)
}

/// Writes `bytes` and closes, within [`WRITE_TIMEOUT`]; `slot` is held
/// until then.
pub(super) async fn finish(mut tcp: TcpStream, bytes: Vec<u8>, slot: OwnedSemaphorePermit) {
    let _slot = slot;
    // The last segment of an answer leaves at once, not after the client
    // acknowledges the ones before. (An answer written whole at once is a
    // single send, which Nagle's algorithm does not hold: no need to set
    // this on every connection, one system call less for each.)
    let _ = tcp.set_nodelay(true);
    // A client that does not read its answer in time is closed all the same.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Closes with a reset: a client that never finished its request leaves
/// no TIME_WAIT behind, however many of them there are.
pub(super) fn close_abruptly(tcp: &TcpStream) {
    let _ = SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}
