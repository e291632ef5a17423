//! The catalog stopping under load: keep-alive clients are told to go
//! (`Connection: close`, GOAWAY) instead of having their connections reset
//! under a request. Raw HTTP/1.1 over TCP, so that no client library
//! retries a reset away. Loopback only, bounded in count and time.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Catalog, HEALTHY_DEADLINE, PLAIN};
use testkit::wire::{self, Frame, flag, kind};
use testkit::{DiscountServer, HANG, Pki, SetupResult};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What one keep-alive client saw until the catalog stopped accepting.
#[derive(Debug, Default)]
struct Client {
    /// Complete `200` answers with the right body.
    answered: usize,
    /// Whether an answer said `Connection: close`, after which the client
    /// went elsewhere, as a load balancer following `/readyz` would send it.
    told_to_close: bool,
    /// Requests that got no complete answer: the connection was reset or
    /// closed under them. Each with when it happened.
    cut_off: Vec<(Duration, String)>,
}

/// One response on `reader`: the head's lines and the body.
async fn response(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(Vec<String>, String)>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let length = head
        .iter()
        .find_map(|h| {
            h.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some((head, String::from_utf8_lossy(&body).into_owned())))
}

/// Asks for the product list over and over on one keep-alive connection
/// until `period` is over or the catalog asks it to close; after a
/// connection was cut off, on a new one.
async fn keep_alive_client(
    addr: SocketAddr,
    start: Instant,
    period: Duration,
    answers: Arc<AtomicUsize>,
) -> Client {
    let mut seen = Client::default();
    'connections: while start.elapsed() < period {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            break; // the listener is closed: the catalog stopped
        };
        let mut reader = BufReader::new(tcp);
        while start.elapsed() < period {
            let request = b"GET /products HTTP/1.1\r\nHost: catalog\r\n\r\n";
            let at = start.elapsed();
            let answer = match reader.get_mut().write_all(request).await {
                Ok(()) => response(&mut reader).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(Some((head, body))) if head[0].starts_with("HTTP/1.1 200") && body == PLAIN => {
                    seen.answered += 1;
                    answers.fetch_add(1, Ordering::SeqCst);
                    if head
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case("connection: close"))
                    {
                        seen.told_to_close = true;
                        break 'connections;
                    }
                }
                Ok(Some((head, _))) => seen.cut_off.push((at, format!("answered {head:?}"))),
                Ok(None) => seen.cut_off.push((at, "closed with no answer".to_owned())),
                Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                    seen.cut_off.push((at, "reset".to_owned()));
                }
                Err(error) => seen.cut_off.push((at, error.to_string())),
            }
            if !seen.cut_off.is_empty() {
                continue 'connections;
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_catalog_stopping_under_load_closes_keep_alive_connections_politely() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let mut catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--shutdown-delay", "500ms"],
    )
    .await?;
    let addr = catalog.addr;

    // The clients run until the catalog tells them to close (the period
    // only bounds them); it begins to stop once they have had 100 answers.
    let (start, period) = (Instant::now(), HANG);
    let answers = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..32)
        .map(|_| tokio::spawn(keep_alive_client(addr, start, period, Arc::clone(&answers))))
        .collect();
    while answers.load(Ordering::SeqCst) <= 100 {
        if start.elapsed() > HANG {
            return Err("the clients never had 100 answers".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    catalog.begin_stop();
    catalog.stopped_within(HANG).await?;
    let mut seen = Vec::new();
    for client in clients {
        seen.push(tokio::time::timeout(HANG, client).await??);
    }

    let answered: usize = seen.iter().map(|c| c.answered).sum();
    let told = seen.iter().filter(|c| c.told_to_close).count();
    let cut_off: Vec<_> = seen.iter().flat_map(|c| &c.cut_off).collect();
    eprintln!(
        "{answered} answers, {told} of 32 clients told to close, {} requests cut off",
        cut_off.len()
    );
    assert!(answered > 100, "too little load: {answered} answers");
    assert_eq!(told, 32, "every client is told to close");
    assert!(cut_off.is_empty(), "cut off: {cut_off:?}");
    Ok(())
}

/// Answers the server's SETTINGS and PINGs on `tcp` until a frame `wanted`
/// arrives; returns it, or `None` if the connection closed first.
async fn h2_until(
    tcp: &mut TcpStream,
    wanted: impl Fn(&Frame) -> bool,
) -> SetupResult<Option<Frame>> {
    while let Some(frame) = wire::read_frame(tcp).await? {
        if wanted(&frame) {
            return Ok(Some(frame));
        }
        let unacknowledged = frame.flags & flag::ACK == 0;
        if unacknowledged && (frame.kind == kind::SETTINGS || frame.kind == kind::PING) {
            let ack = Frame {
                flags: flag::ACK,
                ..frame
            };
            tcp.write_all(&ack.encode()).await?;
        }
    }
    Ok(None)
}

#[tokio::test]
async fn an_http2_client_gets_a_goaway_as_soon_as_the_catalog_starts_draining() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let mut catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        &["--shutdown-delay", "2s"],
    )
    .await?;

    // h2c with prior knowledge: one `GET /`, answered, then the connection
    // sits idle.
    let mut tcp = TcpStream::connect(catalog.addr).await?;
    let mut hello = wire::PREFACE.to_vec();
    hello.extend(wire::settings_frame(0).encode());
    // :method GET, :scheme http, :path / (static table), :authority.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 7];
    block.extend_from_slice(b"catalog");
    let get = Frame {
        kind: kind::HEADERS,
        flags: flag::END_HEADERS | flag::END_STREAM,
        stream: 1,
        payload: block,
    };
    hello.extend(get.encode());
    tcp.write_all(&hello).await?;
    let answered = h2_until(&mut tcp, |f| {
        f.stream == 1 && f.flags & flag::END_STREAM != 0
    });
    assert!(tokio::time::timeout(HANG, answered).await??.is_some());

    // The catalog starts its 2 s shutdown delay: the HTTP/2 client is told
    // at once, with the last stream it took, rather than when the delay
    // ends.
    let draining = Instant::now();
    catalog.begin_stop();
    let goaway = h2_until(&mut tcp, |f| f.kind == kind::GOAWAY);
    let goaway = tokio::time::timeout(HANG, goaway)
        .await??
        .ok_or("closed with no GOAWAY")?;
    let after = draining.elapsed();
    eprintln!("GOAWAY {:?} after {after:?}", goaway.error_code());
    assert!(
        after < Duration::from_secs(1),
        "GOAWAY only after {after:?}"
    );
    assert_eq!(goaway.error_code(), Some(0), "NO_ERROR");
    catalog
        .stopped_within(HANG + Duration::from_secs(5))
        .await?;
    Ok(())
}
