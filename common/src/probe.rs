//! `--healthcheck`: the binary asks its own running copy whether it is
//! healthy, over plaintext HTTP on loopback, and exits 0 or 1.
//!
//! The container images hold the binary and nothing else (no shell, no
//! curl), so this is what Docker's `HEALTHCHECK` and a Kubernetes exec
//! probe run. It reads the same flags and variables as the service, so it
//! finds the port the service was given without being told twice.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest a health check may take, connecting included: well under
/// Docker's default `timeout` of 30 s and a probe's usual 1 to 5 s.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The most of an answer's body that is read and printed.
const MAX_BODY: usize = 16 * 1024;

/// Where a service listening on `listen` is reached from its own host: an
/// unspecified address (`::`, `0.0.0.0`) becomes `127.0.0.1`, which both
/// accept and which exists even where IPv6 is turned off (Docker's
/// default networks).
pub fn local(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

/// Why a health check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered at `addr`.
    #[error(
        "cannot connect to {addr}: {source}; is the service running, with the same flags and variables as this check?"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The exchange failed after connecting.
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
    /// No answer within [`TIMEOUT`].
    #[error("{url}: no answer within {TIMEOUT:?}")]
    Timeout { url: String },
    /// An answer other than 200.
    #[error("{url} answered {status}: {body}")]
    Unhealthy {
        url: String,
        status: StatusCode,
        body: String,
    },
}

/// `GET http://addr{path}`: the body when the answer is 200.
///
/// # Errors
/// A [`ProbeError`] naming the URL and what went wrong.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, ProbeError> {
    let url = format!("http://{addr}{path}");
    match tokio::time::timeout(TIMEOUT, exchange(addr, path, &url)).await {
        Ok(answer) => answer,
        Err(_) => Err(ProbeError::Timeout { url }),
    }
}

async fn exchange(addr: SocketAddr, path: &str, url: &str) -> Result<String, ProbeError> {
    let http = |source| ProbeError::Http {
        url: url.to_owned(),
        source,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(http)?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "healthcheck")
        .body(Empty::<Bytes>::new())
        .map_err(|error| ProbeError::Unhealthy {
            url: url.to_owned(),
            status: StatusCode::BAD_REQUEST,
            body: error.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    // A body past the cap, or cut off, is no healthy answer, whatever the
    // status said.
    let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
        Ok(collected) => printable(&collected.to_bytes()),
        Err(error) => {
            return Err(ProbeError::Unhealthy {
                url: url.to_owned(),
                status,
                body: format!("(the body could not be read whole: {error})"),
            });
        }
    };
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(ProbeError::Unhealthy {
            url: url.to_owned(),
            status,
            body: body.trim_end().to_owned(),
        })
    }
}

/// `bytes` as text fit for a terminal or a log: invalid UTF-8 replaced, and
/// control characters other than newline and tab escaped, so that an
/// answer cannot move the cursor or clear a screen.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Runs the check and turns it into what the command prints and returns:
/// the body on stdout and 0, or the cause on stderr and 1.
pub async fn run(program: &str, addr: SocketAddr, path: &str) -> ExitCode {
    match get(addr, path).await {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{program}: healthcheck failed: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_an_answer_are_escaped() {
        assert_eq!(printable(b"ok\n\x1b[2J\tx"), "ok\n\\u{1b}[2J\tx");
    }

    #[tokio::test]
    async fn a_200_whose_body_is_cut_off_fails() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nready")
                .await;
            // Closed with 95 bytes still owed.
        });
        let error = get(addr, "/readyz").await.unwrap_err();
        assert!(matches!(error, ProbeError::Unhealthy { .. }), "{error}");
        assert!(
            error.to_string().contains("could not be read whole"),
            "{error}"
        );
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        let any6: SocketAddr = "[::]:12443".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:12443".parse().unwrap();
        let given: SocketAddr = "10.1.2.3:12443".parse().unwrap();
        assert_eq!(local(any6), "127.0.0.1:12443".parse().unwrap());
        assert_eq!(local(any4), "127.0.0.1:12443".parse().unwrap());
        assert_eq!(local(given), given);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = get(addr, "/readyz").await.unwrap_err();
        assert!(matches!(error, ProbeError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_not_a_hang() {
        tokio::time::pause();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let check = tokio::spawn(async move { get(addr, "/readyz").await });
        // Accept and say nothing.
        let (_tcp, _) = listener.accept().await.unwrap();
        let error = check.await.unwrap().unwrap_err();
        assert!(matches!(error, ProbeError::Timeout { .. }), "{error}");
    }
}
