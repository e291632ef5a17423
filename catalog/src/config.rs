//! The catalog command line.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use common::tls::PemSource;
use http::uri::Authority;

use crate::ServeOptions;
use crate::discount::{DiscountSettings, Security};

/// `catalog [PORT]`: the catalog HTTP API, a TLS gRPC client of discount.
///
/// Every option can also be set through the environment variable shown in
/// `--help`; a flag wins over its variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "catalog", version, about, long_about = None)]
pub struct Config {
    /// Port to serve HTTP on. The seed took it as its only argument.
    #[arg(env = "CATALOG_PORT", default_value_t = 11080)]
    pub port: u16,

    /// Address to listen on. `::` accepts IPv6 and IPv4 clients on every
    /// interface; `127.0.0.1` keeps the service to this machine.
    #[arg(long, env = "CATALOG_LISTEN_ADDR", default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// Where discount listens, as `host:port` (the seed's variable). The
    /// port defaults to 443 when left out, as in grpc-go.
    #[arg(long, env = "DISCOUNT_SERVICE_HOST", default_value = "localhost:11443")]
    pub discount_host: DiscountAddr,

    /// The name discount's certificate must be issued to. Defaults to the
    /// host part of `--discount-host`; set it when dialling an address the
    /// certificate does not name (a load balancer, a bare IP).
    #[arg(long, env = "DISCOUNT_SERVER_NAME")]
    pub discount_server_name: Option<String>,

    /// PEM file with the CA certificate(s) that signed discount's
    /// certificate. Only these are trusted: not the system's roots.
    #[arg(long, env = "CATALOG_DISCOUNT_CA", default_value = "keys/ca.pem")]
    pub discount_ca: PathBuf,

    /// PEM file with the catalog's client certificate, presented to
    /// discount (which requires one by default).
    #[arg(long, env = "CATALOG_CLIENT_CERT", default_value = "keys/client.pem")]
    pub client_cert: PathBuf,

    /// PEM file with the private key of `--client-cert`.
    #[arg(long, env = "CATALOG_CLIENT_KEY", default_value = "keys/client.key")]
    pub client_key: PathBuf,

    /// Check the TLS material (files, dates, key pair, purpose), print what
    /// is wrong and how to fix it, and exit: 0 when it can be used, 1
    /// otherwise. Nothing is served.
    #[arg(long)]
    pub check_certs: bool,

    /// Talk to discount in plaintext, with no TLS at all. Only for running
    /// behind a service mesh (Linkerd, Istio) whose sidecar does mutual TLS.
    #[arg(long, env = "CATALOG_DISCOUNT_PLAINTEXT")]
    pub discount_plaintext: bool,

    /// The longest one ApplyDiscount call may take, connecting included.
    /// Past it the product is listed without its discount.
    #[arg(long, env = "CATALOG_DISCOUNT_DEADLINE", default_value = "300ms", value_parser = humantime::parse_duration)]
    pub discount_deadline: Duration,

    /// The longest a TCP connect to discount, and then the TLS handshake,
    /// may each take.
    #[arg(long, env = "CATALOG_DISCOUNT_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub discount_connect_timeout: Duration,

    /// Open a new TLS connection to discount for every HTTP request, as the
    /// seed did, instead of sharing one. Slower; for comparison only.
    #[arg(long, env = "CATALOG_DIAL_PER_REQUEST")]
    pub dial_per_request: bool,

    /// The longest an HTTP request may take; past it the answer is 503.
    #[arg(long, env = "CATALOG_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// The longest a client may take to send a request's headers, and the
    /// longest an HTTP/1 connection may sit idle between requests.
    #[arg(long, env = "CATALOG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// The most HTTP connections served at once; further clients wait in
    /// the kernel's queue until one closes.
    #[arg(long, env = "CATALOG_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// On SIGTERM or Ctrl-C, how long requests in flight get to finish
    /// before their connections are closed and the process exits.
    #[arg(long, env = "CATALOG_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_addr, self.port)
    }

    /// How to reach discount.
    pub fn discount(&self) -> DiscountSettings {
        DiscountSettings {
            server_name: self
                .discount_server_name
                .clone()
                .unwrap_or_else(|| self.discount_host.host().to_owned()),
            addr: self.discount_host.clone(),
            security: if self.discount_plaintext {
                Security::Plaintext
            } else {
                Security::MutualTls {
                    ca: PemSource::new(&self.discount_ca, "--discount-ca / CATALOG_DISCOUNT_CA"),
                    client_cert: PemSource::new(
                        &self.client_cert,
                        "--client-cert / CATALOG_CLIENT_CERT",
                    ),
                    client_key: PemSource::new(
                        &self.client_key,
                        "--client-key / CATALOG_CLIENT_KEY",
                    ),
                }
            },
            deadline: self.discount_deadline,
            connect_timeout: self.discount_connect_timeout,
            dial_per_request: self.dial_per_request,
        }
    }

    /// How the HTTP server treats requests and shutdown.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// A `host:port` to dial, as `DISCOUNT_SERVICE_HOST` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscountAddr {
    host: String,
    port: u16,
}

/// The port grpc-go assumes when the address has none.
const DEFAULT_PORT: u16 = 443;

impl DiscountAddr {
    /// The host name or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URI tonic dials: `https://` unless the connection is plaintext.
    pub fn uri(&self, security: &Security) -> String {
        match security {
            Security::MutualTls { .. } => format!("https://{self}"),
            Security::Plaintext => format!("http://{self}"),
        }
    }
}

impl fmt::Display for DiscountAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for DiscountAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hint = "expected host:port, such as localhost:11443, 10.0.0.5:11443 or [::1]:11443";
        let text = text.trim();
        if text.contains("://") {
            return Err(format!(
                "{text:?} has a scheme; {hint} (TLS is always used)"
            ));
        }
        // Authority checks the syntax (brackets, allowed characters); the
        // port is parsed below because Authority quietly drops one that does
        // not fit 16 bits.
        let authority = Authority::from_str(text)
            .map_err(|e| format!("{text:?} is not an address ({e}); {hint}"))?;
        if text.contains('@') {
            return Err(format!("{text:?} has user information; {hint}"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host; {hint}"));
        }
        // The text after the last colon, unless that colon is inside the
        // brackets of an IPv6 address.
        let port_text = text
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| !port.contains(']'));
        let port = match port_text {
            Some("") => return Err(format!("{text:?} has an empty port; {hint}")),
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("{text:?} has a port outside 1-65535; {hint}"))?,
            None => DEFAULT_PORT,
        };
        if port == 0 {
            return Err(format!("{text:?} has port 0; {hint}"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn addr(text: &str) -> Result<(String, u16), String> {
        DiscountAddr::from_str(text).map(|a| (a.host().to_owned(), a.port()))
    }

    #[test]
    fn discount_addresses_parse_like_grpc_targets() {
        assert_eq!(addr("localhost:11443"), Ok(("localhost".into(), 11443)));
        assert_eq!(addr("10.1.2.3:50051"), Ok(("10.1.2.3".into(), 50051)));
        assert_eq!(addr("[::1]:11443"), Ok(("::1".into(), 11443)));
        assert_eq!(
            addr("discount.internal"),
            Ok(("discount.internal".into(), 443))
        );
    }

    #[test]
    fn bad_discount_addresses_say_what_is_expected() {
        for bad in [
            "https://localhost:11443",
            "localhost:",
            "user@host:1",
            "host:99999",
            "host:0",
            ":11443",
            "",
        ] {
            let error = addr(bad).err().unwrap_or_default();
            assert!(
                error.contains("expected host:port"),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_address_is_bracketed_in_the_uri() {
        let parsed = DiscountAddr::from_str("[::1]:11443").map(|a| a.uri(&Security::Plaintext));
        assert_eq!(parsed.ok().as_deref(), Some("http://[::1]:11443"));
    }

    #[test]
    fn defaults_find_a_discount_started_with_its_defaults() {
        let config = Config::try_parse_from(["catalog"]).ok();
        let discount = config.as_ref().map(Config::discount);
        assert_eq!(
            discount.as_ref().map(|d| d.addr.to_string()).as_deref(),
            Some("localhost:11443")
        );
        assert_eq!(
            discount.map(|d| d.server_name).as_deref(),
            Some("localhost")
        );
        assert_eq!(config.map(|c| c.port), Some(11080));
    }
}
