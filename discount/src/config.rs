//! The discount command line, and the typed settings it turns into. The
//! defaults live here, in the clap attributes, and nowhere else.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::pem::PemSource;

use crate::authz::{Allowed, Authorize};
use crate::metrics::DiscountMetrics;
use crate::server::{Http2Limits, ServerOptions};
use crate::tls::{ClientAuth, ServerTls};

/// `discount [PORT]`: the Discount gRPC service over TLS.
///
/// Every option can also be set through the environment variable shown in
/// `--help`; a flag wins over its variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "discount", version, about, long_about = None)]
pub struct Config {
    /// Port to listen on. The seed took it as its only argument and defaulted
    /// to 443; 11443 is the port the catalog dials by default and needs no
    /// privileges.
    #[arg(env = "DISCOUNT_PORT", default_value_t = 11443)]
    pub port: u16,

    /// Address to listen on. `::` accepts IPv6 and IPv4 clients on every
    /// interface; `127.0.0.1` keeps the service to this machine.
    #[arg(long, env = "DISCOUNT_LISTEN_ADDR", default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// PEM file with the server certificate, followed by any intermediates.
    /// Its subjectAltName must cover the host name clients dial.
    #[arg(long, env = "DISCOUNT_CERT", default_value = "keys/cert.pem")]
    pub cert: PathBuf,

    /// PEM file with the private key of `--cert`.
    #[arg(long, env = "DISCOUNT_KEY", default_value = "keys/private.key")]
    pub key: PathBuf,

    /// Which clients may call: `required` (mutual TLS: a certificate signed
    /// by `--client-ca`), `optional` (clients without a certificate too), or
    /// `none` (anyone who can reach the port, as in the seed).
    #[arg(long, env = "DISCOUNT_CLIENT_AUTH", value_enum, default_value_t = ClientAuth::Required)]
    pub client_auth: ClientAuth,

    /// PEM file with the CA certificate(s) that sign client certificates.
    #[arg(long, env = "DISCOUNT_CLIENT_CA", default_value = "keys/ca.pem")]
    pub client_ca: PathBuf,

    /// How often `--cert`, `--key` and `--client-ca` are looked at: when
    /// they change (rewritten, replaced, a Kubernetes Secret's `..data`
    /// swapped) they are reloaded as on SIGHUP. `0s` turns it off; else at
    /// least 100ms.
    #[arg(long, env = "DISCOUNT_TLS_WATCH_INTERVAL", default_value = "5s", value_parser = common::flags::watch_interval)]
    pub tls_watch_interval: Duration,

    /// A host name or address clients dial; the certificate doctor checks
    /// that `--cert` covers it. Repeat for several. Without it, the doctor
    /// only warns when `localhost` is not covered.
    #[arg(
        long = "server-name",
        env = "DISCOUNT_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,

    /// Who may call `ecommerce.Discount`: a client's workload identity (the
    /// URI subjectAltName of its certificate) must match an entry, either
    /// exactly (`spiffe://ecommerce.local/catalog`) or under a prefix
    /// (`spiffe://ecommerce.local/*`, the whole trust domain). `any` lets in
    /// every client the TLS layer accepts. Repeat the flag, or separate with
    /// commas; the entries given replace the default, so list the catalog
    /// too when adding a workload. Keys made with `scripts/gen-keys.sh
    /// --trust-domain TD` need `spiffe://TD/catalog`. Health and reflection
    /// are open to any client. Off with `--client-auth none`, where no client
    /// has an identity.
    #[arg(
        long = "allow-client",
        env = "DISCOUNT_ALLOW_CLIENTS",
        value_delimiter = ',',
        default_value = "spiffe://ecommerce.local/catalog",
        value_parser = Allowed::parse
    )]
    pub allow_clients: Vec<Allowed>,

    /// How log lines are written: `text`, `json` (one object per line,
    /// with `trace_id` and `span_id` inside a request, to join the two
    /// services' logs), or `auto`: text on a terminal, JSON otherwise.
    #[arg(long, env = "LOG_FORMAT", default_value = "auto", value_parser = common::telemetry::LogFormat::parse)]
    pub log_format: common::telemetry::LogFormat,

    /// The most traces a second this process records, whatever its
    /// callers ask: each trace that starts here or arrives with a sampled
    /// `traceparent` takes one of this many tokens a second (a burst of as
    /// many); spans inside a recorded trace follow it, so traces are kept
    /// or dropped whole. Those refused are counted in
    /// `discount_traces_dropped_total`. Only matters with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set.
    #[arg(long, env = "MAX_TRACES_PER_SECOND", default_value = "100", value_parser = common::flags::traces_per_second)]
    pub max_traces_per_second: std::num::NonZeroU32,

    /// Serve Prometheus metrics at `GET /metrics` on this address
    /// (`HOST:PORT`), in plaintext HTTP and apart from the gRPC port, so a
    /// scraper needs no client certificate and takes no gRPC connection
    /// slot. Keep it off public networks. Unset: no metrics listener.
    #[arg(long, env = "DISCOUNT_METRICS_ADDR", value_parser = common::flags::listen_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Check the TLS material (files, dates, names, key pairs, purposes),
    /// print what is wrong and how to fix it, and exit: 0 when it can be
    /// used, 1 otherwise. Nothing is served.
    #[arg(long)]
    pub check_certs: bool,

    /// Ask the discount already running with these same settings whether
    /// it is ready, and exit: 0 when it is serving, 1 otherwise, with the
    /// cause. It calls `GET /readyz` on the `--metrics-addr` listener
    /// (loopback when that is `::` or `0.0.0.0`), which it needs: the gRPC
    /// port asks for a client certificate. For Docker's `HEALTHCHECK` and
    /// exec probes, in images with no shell or curl.
    #[arg(long, conflicts_with = "check_certs")]
    pub healthcheck: bool,

    /// Serve gRPC in plaintext, with no TLS at all. Only for running behind
    /// a service mesh (Linkerd, Istio) whose sidecar does mutual TLS; on any
    /// other network it exposes every call.
    #[arg(long, env = "DISCOUNT_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// How long a client may take to finish the TLS handshake before the
    /// connection is closed, so stalled or half-open clients cannot pile up.
    #[arg(long, env = "DISCOUNT_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = common::flags::positive_duration)]
    pub tls_handshake_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long to keep serving with health reporting
    /// NOT_SERVING before refusing new calls. Behind a load balancer or a
    /// health-checking client, set it to a little more than their check
    /// interval so no call is sent to a closing server.
    #[arg(long, env = "DISCOUNT_SHUTDOWN_DELAY", default_value = "0s", value_parser = common::flags::duration)]
    pub shutdown_delay: Duration,

    /// Then, how long calls in flight get to finish before the process
    /// closes their connections and exits.
    #[arg(long, env = "DISCOUNT_DRAIN_TIMEOUT", default_value = "5s", value_parser = common::flags::duration)]
    pub drain_timeout: Duration,

    /// The most connections open at once, those still in their TLS
    /// handshake included. At the limit a newcomer makes room by closing
    /// the oldest unfinished handshake, else the connection, idle or not,
    /// whose last call began longest ago, so clients that connect and say
    /// nothing, or hold one call open for ever, cannot keep a real one out.
    #[arg(long, env = "DISCOUNT_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// The most calls one connection may have open at once, advertised to
    /// clients as HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; streams past it are
    /// refused. The catalog multiplexes every call over one connection, and
    /// under full load has a few dozen open; this bounds what one client can
    /// make the server hold.
    #[arg(long, env = "DISCOUNT_MAX_CONCURRENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_streams: u32,

    /// The most calls in flight in the whole server, over all
    /// connections; a call past it is answered RESOURCE_EXHAUSTED at once
    /// rather than queued past its caller's deadline. Each call may hold a
    /// message being received (up to 64 KiB), so this bounds that memory
    /// (streams opened past it are not counted yet: see docs/security.md).
    /// A healthy call takes well under a
    /// millisecond, so the catalog under full load has a few dozen in
    /// flight.
    #[arg(long, env = "DISCOUNT_MAX_CONCURRENT_CALLS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_calls: u32,

    /// The longest any call may run, whatever `grpc-timeout` the client asks
    /// for (or none); past it the call ends with CANCELLED "Timeout expired".
    #[arg(long, env = "DISCOUNT_MAX_CALL_DURATION", default_value = "10s", value_parser = common::flags::positive_duration)]
    pub max_call_duration: Duration,

    /// How long a connection may live: past it, discount asks the client to
    /// move to a new one (HTTP/2 GOAWAY; calls in flight finish, within
    /// `--max-call-duration`), so that long-lived clients re-resolve and
    /// spread over replicas added since they connected, as grpc-go's
    /// MaxConnectionAge does. `--max-call-duration` later the connection
    /// is closed, whatever stream (a health Watch) is still open on it.
    #[arg(long, env = "DISCOUNT_MAX_CONNECTION_AGE", default_value = "5m", value_parser = common::flags::positive_duration)]
    pub max_connection_age: Duration,

    /// How often a connection is pinged (HTTP/2 PING), to find clients that
    /// vanished without closing it.
    #[arg(long, env = "DISCOUNT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = common::flags::positive_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "DISCOUNT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = common::flags::positive_duration)]
    pub http2_keepalive_timeout: Duration,

    /// How many calls a client may open and cancel (RST_STREAM) before the
    /// server has picked them up, on one connection, before it is closed
    /// with GOAWAY ENHANCE_YOUR_CALM (the "rapid reset" guard). h2's
    /// default of 20 is too low for an honest client: when discount stalls
    /// for longer than the callers' deadline, every call they cancel
    /// arrives at once when it wakes up, and the guard used to tear down
    /// the catalog's shared connection and the healthy calls on it. The
    /// default covers a one-second stall with all 256 streams busy and the
    /// catalog's default deadline of 300 ms (about 850 cancelled calls).
    #[arg(long, env = "DISCOUNT_MAX_PENDING_RESETS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(20..=100_000))]
    pub max_pending_resets: u32,

    /// The largest header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, in
    /// bytes) a call may send. gRPC metadata here is a few hundred bytes.
    #[arg(long, env = "DISCOUNT_MAX_HEADER_LIST_SIZE", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_header_list_size: u32,

    /// How many bytes of one call's request a client may send before the
    /// server reads them (HTTP/2 stream flow-control window).
    #[arg(long, env = "DISCOUNT_STREAM_WINDOW", default_value_t = 65_535, value_parser = clap::value_parser!(u32).range(65_535..=16_777_216))]
    pub stream_window: u32,

    /// The same for all of a connection's calls together (HTTP/2
    /// connection flow-control window).
    #[arg(long, env = "DISCOUNT_CONNECTION_WINDOW", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(65_535..=67_108_864))]
    pub connection_window: u32,
}

impl Config {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_addr, self.port)
    }

    /// The TLS files and client verification these flags name. Used unless
    /// `--insecure-plaintext`; `--check-certs` checks them either way.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls {
            cert: PemSource::new(&self.cert, "--cert / DISCOUNT_CERT"),
            key: PemSource::new(&self.key, "--key / DISCOUNT_KEY"),
            client_auth: self.client_auth,
            client_ca: PemSource::new(&self.client_ca, "--client-ca / DISCOUNT_CLIENT_CA"),
            server_names: self.server_names.clone(),
            allow_clients: self.allow_clients.clone(),
        }
    }

    /// The files whose change reloads the TLS material.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        if self.client_auth != ClientAuth::None {
            files.push(self.client_ca.clone());
        }
        files
    }

    /// The allow-list as it applies: off when there is no client identity
    /// to check (`--client-auth none`, `--insecure-plaintext`).
    pub fn authorize(&self) -> Authorize {
        if self.insecure_plaintext || self.client_auth == ClientAuth::None {
            Authorize::off()
        } else {
            Authorize::allowing(&self.allow_clients)
        }
    }

    /// How the server treats connections, calls and shutdown.
    pub fn server_options(&self, metrics: DiscountMetrics) -> ServerOptions {
        ServerOptions {
            metrics,
            handshake_timeout: self.tls_handshake_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_concurrent_calls: usize::try_from(self.max_concurrent_calls).unwrap_or(usize::MAX),
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
            authorize: self.authorize(),
            http2: Http2Limits {
                max_concurrent_streams: self.max_concurrent_streams,
                max_call_duration: self.max_call_duration,
                max_connection_age: self.max_connection_age,
                keepalive_interval: self.http2_keepalive_interval,
                keepalive_timeout: self.http2_keepalive_timeout,
                max_pending_resets: usize::try_from(self.max_pending_resets).unwrap_or(usize::MAX),
                max_header_list_size: self.max_header_list_size,
                stream_window: self.stream_window,
                connection_window: self.connection_window,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_port_is_the_first_argument_and_defaults_to_what_catalog_dials() {
        let default = Config::try_parse_from(["discount"]).map(|c| c.listen_addr());
        assert_eq!(default.ok(), Some("[::]:11443".parse().unwrap()));
        let given = Config::try_parse_from(["discount", "12000"]).map(|c| c.port);
        assert_eq!(given.ok(), Some(12000));
        assert!(Config::try_parse_from(["discount", "https"]).is_err());
    }
}
