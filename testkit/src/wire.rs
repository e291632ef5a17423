//! Raw bytes on the wire, for what no well-behaved client sends: a TLS
//! connection offering chosen ALPN protocols, and HTTP/2 frames written by
//! hand (RFC 9113), so a test can open streams past the server's limit or
//! leave its pings unanswered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pem::{PemFile, PemSource};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::SetupResult;
use crate::pki::Pki;

/// What an HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod kind {
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
}

/// SETTINGS parameters.
pub mod setting {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Frame flags.
pub mod flag {
    /// ACK, on SETTINGS and PING.
    pub const ACK: u8 = 0x1;
    /// END_HEADERS, on HEADERS.
    pub const END_HEADERS: u8 = 0x4;
    /// END_STREAM, on HEADERS and DATA.
    pub const END_STREAM: u8 = 0x1;
}

/// One HTTP/2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its stream (0 for the connection).
    pub stream: u32,
    /// What follows the 9-byte header.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let length = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        let mut bytes = length.to_be_bytes()[1..].to_vec();
        bytes.push(self.kind);
        bytes.push(self.flags);
        bytes.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    /// The parameters of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let code = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]))
    }
}

/// A SETTINGS frame with no settings: the client's opening one (`flags`
/// 0) or the acknowledgement of the server's ([`flag::ACK`]).
pub fn settings_frame(flags: u8) -> Frame {
    Frame {
        kind: kind::SETTINGS,
        flags,
        stream: 0,
        payload: Vec::new(),
    }
}

/// Reads one frame; `None` at the end of the stream.
///
/// # Errors
/// The connection failed mid-frame.
pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    let mut header = [0_u8; 9];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0_u8; length];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// The HPACK block of a gRPC request to `path` on `localhost`: every field
/// a literal without indexing and without Huffman coding, so each block
/// stands alone whatever was sent before.
pub fn grpc_request_headers(path: &str) -> Vec<u8> {
    let mut block = vec![
        0x83, // :method POST (static table 3)
        0x87, // :scheme https (static table 7)
    ];
    // Literal without indexing, name from the static table (4-bit prefix).
    let mut indexed_name = |index: u8, value: &str| {
        if index < 15 {
            block.push(index);
        } else {
            block.extend_from_slice(&[0x0f, index - 15]);
        }
        push_string(&mut block, value);
    };
    indexed_name(4, path); // :path
    indexed_name(1, "localhost"); // :authority
    indexed_name(31, "application/grpc"); // content-type
    block.push(0x00); // literal without indexing, new name
    push_string(&mut block, "te");
    push_string(&mut block, "trailers");
    block
}

/// The HPACK block of `GET path` over plain HTTP (h2c) on `localhost`.
pub fn get_request_headers(path: &str) -> Vec<u8> {
    let mut block = vec![
        0x82, // :method GET (static table 2)
        0x86, // :scheme http (static table 6)
        0x04, // :path, literal without indexing, name from the static table
    ];
    push_string(&mut block, path);
    block.push(0x01); // :authority, the same
    push_string(&mut block, "localhost");
    block
}

/// `block` with one more field, `x-pad`, whose value is `pad` bytes long:
/// a request head as large as the server allows.
pub fn padded(mut block: Vec<u8>, pad: usize) -> Vec<u8> {
    block.push(0x00); // literal without indexing, new name
    push_string(&mut block, "x-pad");
    push_string(&mut block, &"p".repeat(pad));
    block
}

/// An HPACK string literal, not Huffman-coded: its length as an integer
/// with a 7-bit prefix (RFC 7541 §5.1), then its bytes.
fn push_string(block: &mut Vec<u8>, value: &str) {
    let mut length = value.len();
    if length < 0x7f {
        block.extend(u8::try_from(length));
    } else {
        block.push(0x7f);
        length -= 0x7f;
        while length >= 0x80 {
            block.push(0x80 | (length & 0x7f) as u8);
            length >>= 7;
        }
        block.extend(u8::try_from(length));
    }
    block.extend_from_slice(value.as_bytes());
}

/// A TLS client of `pki` (trusting its CA, presenting its client
/// certificate) that offers the ALPN protocols `alpn`.
///
/// # Errors
/// The PKI's files could not be read or used.
pub fn tls_connector(pki: &Pki, alpn: &[&[u8]]) -> SetupResult<TlsConnector> {
    let read = |name: &str| PemFile::read(&PemSource::new(pki.path(name), "test"));
    let roots = read("ca.pem")?.root_store()?;
    let chain = read("client.pem")?.certificates()?;
    let key = read("client.key")?.private_key()?;
    let mut config = rustls::ClientConfig::builder_with_provider(common::crypto::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A mutual-TLS connection to `addr` as `localhost`, offering `h2`.
///
/// # Errors
/// The connection or the handshake failed.
pub async fn h2_over_tls(addr: SocketAddr, pki: &Pki) -> SetupResult<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(tls_connector(pki, &[b"h2"])?.connect(name, tcp).await?)
}

/// HTTP/2 error code CANCEL.
pub const CANCEL: u32 = 0x8;

/// The rapid-reset attack, for `period`: on a connection past its
/// preface, opens stream after stream with the request head `block` and
/// cancels each at once (RST_STREAM CANCEL). Returns how many streams it
/// opened before `period` ran out or the server stopped reading.
pub async fn cancel_flood(
    mut writer: impl AsyncWrite + Unpin,
    block: Vec<u8>,
    period: Duration,
) -> u32 {
    let deadline = Instant::now() + period;
    let mut sent = 0_u32;
    while Instant::now() < deadline && sent < 1 << 29 {
        let mut bytes = Vec::new();
        for _ in 0..64 {
            let stream = 2 * sent + 1;
            let headers = Frame {
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream,
                payload: block.clone(),
            };
            let cancel = Frame {
                kind: kind::RST_STREAM,
                flags: 0,
                stream,
                payload: CANCEL.to_be_bytes().to_vec(),
            };
            bytes.extend(headers.encode());
            bytes.extend(cancel.encode());
            sent += 1;
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
    sent
}
