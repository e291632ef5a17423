//! The catalog command line, and the typed settings it turns into. The
//! defaults live here, in the clap attributes, and nowhere else.

mod command;

pub use command::{Command, Table};

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::pem::PemSource;

use crate::discount::{DEFAULT_PORT, DiscountSettings, Targets};
use crate::server::ServeOptions;
use crate::store::{DatabaseUrl, DatabaseUrlFileParser, DatabaseUrlParser};
use crate::tls::{ExpectedIdentity, Security};

/// `catalog [PORT]`: the catalog HTTP API, a TLS gRPC client of discount.
///
/// Every option can also be set through the environment variable shown in
/// `--help`; a flag wins over its variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "catalog", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Config {
    /// Without a command, serve; the commands manage the data.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Port to serve HTTP on. The seed took it as its only argument.
    #[arg(env = "CATALOG_PORT", default_value_t = 11080)]
    pub port: u16,

    /// Where the products and customers are kept:
    /// `sqlite://PATH` (a file, created with the seed's products and
    /// customers when missing) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (for several catalog
    /// replicas; bring the data with `catalog import`). See docs/data.md.
    /// (`--help` shows the variable, never its value: it may hold the
    /// password.)
    #[arg(long, env = "CATALOG_DATABASE_URL", hide_env_values = true, default_value = "sqlite://catalog.db", value_parser = DatabaseUrlParser, global = true)]
    database_url: DatabaseUrl,

    /// A file holding the database URL, as `--database-url` takes it (one
    /// line): how orchestrators hand over secrets (a Docker or Swarm
    /// secret in `/run/secrets/`, a Kubernetes Secret mounted as a file),
    /// so the password is in no environment or command line. Read once,
    /// at start; wins over `--database-url` (the images set
    /// `CATALOG_DATABASE_URL` to their embedded file).
    #[arg(long, env = "CATALOG_DATABASE_URL_FILE", value_parser = DatabaseUrlFileParser, global = true)]
    database_url_file: Option<DatabaseUrl>,

    /// Do not apply the database migrations at start, or before `catalog
    /// import` (for operators who run `catalog migrate` themselves): the
    /// schema is checked, and a database that lacks a migration is refused.
    #[arg(long, env = "CATALOG_NO_MIGRATE", global = true)]
    pub no_migrate: bool,

    /// How often the data is checked for changes (imports by another
    /// replica or by `catalog import`). PostgreSQL also tells each replica
    /// of an import at once (LISTEN/NOTIFY); this is the backstop.
    #[arg(long, env = "CATALOG_DATA_REFRESH_INTERVAL", default_value = "500ms", value_parser = common::flags::positive_duration)]
    pub data_refresh_interval: Duration,

    /// Address to listen on. `::` accepts IPv6 and IPv4 clients on every
    /// interface; `127.0.0.1` keeps the service to this machine.
    #[arg(long, env = "CATALOG_LISTEN_ADDR", default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// Where discount listens, as `host:port` (the seed's variable), or
    /// several separated by commas. Every address a name resolves to is a
    /// replica, and names are resolved again every
    /// `--discount-resolve-interval`.
    #[arg(long, env = "DISCOUNT_SERVICE_HOST", default_value = "localhost:11443")]
    pub discount_host: Targets,

    /// The port of a `--discount-host` target that names none. Kubernetes
    /// sets this variable next to `DISCOUNT_SERVICE_HOST` for a Service
    /// named `discount`; without it, 443, as in grpc-go.
    #[arg(long, env = "DISCOUNT_SERVICE_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub discount_port: Option<u16>,

    /// The name discount's certificate must be issued to, whatever address
    /// is dialled. Defaults to the host part of the first `--discount-host`
    /// target; set it when dialling addresses the certificate does not
    /// name (a load balancer, a bare IP).
    #[arg(long, env = "DISCOUNT_SERVER_NAME", value_parser = crate::tls::server_name)]
    pub discount_server_name: Option<String>,

    /// The workload identity discount's certificate must carry, as a URI
    /// subjectAltName, besides being valid for `--discount-server-name`: a
    /// certificate from the same CA for another workload is refused. Keys
    /// made with `scripts/gen-keys.sh --trust-domain TD` need
    /// `spiffe://TD/discount`. An empty value (`--discount-identity ''`)
    /// turns the check off, for a discount whose certificate carries no URI
    /// (one made before identities, or by another PKI).
    #[arg(long, env = "CATALOG_DISCOUNT_IDENTITY", default_value = "spiffe://ecommerce.local/discount", value_parser = crate::tls::expected_identity)]
    pub discount_identity: ExpectedIdentity,

    /// How often the names of `--discount-host` are resolved again, to
    /// find replicas added and removed (also soon after a replica could not
    /// be reached).
    #[arg(long, env = "CATALOG_DISCOUNT_RESOLVE_INTERVAL", default_value = "5s", value_parser = common::flags::positive_duration)]
    pub discount_resolve_interval: Duration,

    /// How often each discount replica's health is checked (and the
    /// HTTP/2 keepalive ping period). A replica that is not serving, or
    /// does not answer within this, leaves the rotation.
    #[arg(long, env = "CATALOG_DISCOUNT_HEALTH_INTERVAL", default_value = "1s", value_parser = common::flags::positive_duration)]
    pub discount_health_interval: Duration,

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

    /// How often `--discount-ca`, `--client-cert` and `--client-key` are
    /// looked at: when they change (rewritten, replaced, a Kubernetes
    /// Secret's `..data` swapped) they are reloaded as on SIGHUP. `0s`
    /// turns it off; else at least 100ms.
    #[arg(long, env = "CATALOG_TLS_WATCH_INTERVAL", default_value = "5s", value_parser = common::flags::watch_interval)]
    pub tls_watch_interval: Duration,

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
    /// `catalog_traces_dropped_total`. Only matters with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set.
    #[arg(long, env = "MAX_TRACES_PER_SECOND", default_value = "100", value_parser = common::flags::traces_per_second)]
    pub max_traces_per_second: std::num::NonZeroU32,

    /// Serve Prometheus metrics at `GET /metrics`, and the liveness probe
    /// `GET /healthz`, on this address (`HOST:PORT`), in plaintext HTTP and
    /// apart from the API port, so a scraper needs no certificate and takes
    /// no API connection slot, and a probe is answered whatever crowds the
    /// API. Keep it off public networks. Unset: no metrics listener.
    #[arg(long, env = "CATALOG_METRICS_ADDR", value_parser = common::flags::listen_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Check the TLS material (files, dates, key pair, purpose), print what
    /// is wrong and how to fix it, and exit: 0 when it can be used, 1
    /// otherwise. Nothing is served.
    #[arg(long)]
    pub check_certs: bool,

    /// Ask the catalog already running with these same settings whether
    /// it is up, and exit: 0 when `GET /healthz` on its port (loopback
    /// when it listens on `::` or `0.0.0.0`) answers 200, 1 otherwise, with
    /// the cause. For Docker's `HEALTHCHECK` and exec probes, in images with
    /// no shell or curl. `/healthz`, not `/readyz`: the catalog serves
    /// listings (undiscounted) while discount is down.
    #[arg(long, conflicts_with = "check_certs")]
    pub healthcheck: bool,

    /// Talk to discount in plaintext, with no TLS at all. Only for running
    /// behind a service mesh (Linkerd, Istio) whose sidecar does mutual TLS.
    #[arg(long, env = "CATALOG_DISCOUNT_PLAINTEXT")]
    pub discount_plaintext: bool,

    /// The longest one call to discount may take, connecting included (a
    /// listing is one ApplyDiscounts call). Past it the products are listed
    /// without their discount.
    #[arg(long, env = "CATALOG_DISCOUNT_DEADLINE", default_value = "300ms", value_parser = common::flags::positive_duration)]
    pub discount_deadline: Duration,

    /// The longest a TCP connect to discount, and then the TLS handshake,
    /// may each take.
    #[arg(long, env = "CATALOG_DISCOUNT_CONNECT_TIMEOUT", default_value = "1s", value_parser = common::flags::positive_duration)]
    pub discount_connect_timeout: Duration,

    /// After a discount replica could not be reached (connection refused,
    /// TLS handshake failed, health check unanswered), how long it is left
    /// out of rotation before it is tried again; the wait doubles while
    /// failures go on, up to `--discount-backoff-max`. With no replica in
    /// rotation, listings are answered at once without discounts.
    #[arg(long, env = "CATALOG_DISCOUNT_BACKOFF_MIN", default_value = "1s", value_parser = common::flags::positive_duration)]
    pub discount_backoff_min: Duration,

    /// The longest wait between attempts to reach a replica: also the
    /// longest the catalog may take to notice that it is back.
    #[arg(long, env = "CATALOG_DISCOUNT_BACKOFF_MAX", default_value = "10s", value_parser = common::flags::positive_duration)]
    pub discount_backoff_max: Duration,

    /// Open a new TLS connection to discount for every HTTP request, as the
    /// seed did, instead of sharing one. Slower; for comparison only.
    #[arg(long, env = "CATALOG_DIAL_PER_REQUEST")]
    pub dial_per_request: bool,

    /// The longest an HTTP request may take; past it the answer is 503.
    #[arg(long, env = "CATALOG_REQUEST_TIMEOUT", default_value = "5s", value_parser = common::flags::positive_duration)]
    pub request_timeout: Duration,

    /// The longest a client may take to send a request's headers, and the
    /// longest a connection (HTTP/1 or HTTP/2) may sit with no request in
    /// flight.
    #[arg(long, env = "CATALOG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = common::flags::positive_duration)]
    pub header_read_timeout: Duration,

    /// The most HTTP connections served at once. At the limit a newcomer
    /// makes the oldest idle connection close; only when every connection
    /// has a request in flight does it wait in the kernel's queue.
    #[arg(long, env = "CATALOG_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// The most requests one HTTP/2 connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS). An answer its client does not
    /// read stays in memory (1 to 3 KiB each), so this and
    /// `--max-connections` bound what clients can pin: 300 connections
    /// that never read took the catalog to 55 MiB at 32, 78 MiB at the
    /// former 64 (debug build). hyper's own default is 200; a client
    /// wanting more in parallel opens more connections.
    #[arg(long, env = "CATALOG_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_concurrent_streams: u32,

    /// The most memory, in MiB, that answers of 4 KiB and more may hold
    /// while waiting for their clients to read them, over all connections.
    /// When a new answer does not fit, those that have gone longest without
    /// their client reading any of them are dropped and their streams reset
    /// (`catalog_unsent_answers_dropped_total`).
    /// 16 MiB is some 95 unread pages of 1,000 products.
    #[arg(long, env = "CATALOG_MAX_UNSENT_MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_unsent_mib: u32,

    /// On SIGTERM or Ctrl-C, how long to keep serving with `/readyz`
    /// answering 503 before closing the listener. Behind a load balancer
    /// or an orchestrator's readiness probe, set it a little above their
    /// check interval, so that no request is sent to a closing catalog.
    #[arg(long, env = "CATALOG_SHUTDOWN_DELAY", default_value = "0s", value_parser = common::flags::duration)]
    pub shutdown_delay: Duration,

    /// Then, how long requests in flight get to finish before their
    /// connections are closed and the process exits.
    #[arg(long, env = "CATALOG_DRAIN_TIMEOUT", default_value = "5s", value_parser = common::flags::duration)]
    pub drain_timeout: Duration,
}

impl Config {
    /// Where the data is: `--database-url-file`'s URL when given, else
    /// `--database-url`'s.
    pub fn database_url(&self) -> &DatabaseUrl {
        self.database_url_file
            .as_ref()
            .unwrap_or(&self.database_url)
    }

    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_addr, self.port)
    }

    /// How to reach discount.
    pub fn discount(&self) -> DiscountSettings {
        let targets = self
            .discount_host
            .clone()
            .port_or(self.discount_port.unwrap_or(DEFAULT_PORT));
        DiscountSettings {
            server_name: self
                .discount_server_name
                .clone()
                .unwrap_or_else(|| targets.first().host().to_owned()),
            targets,
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
                    identity: self.discount_identity.clone(),
                }
            },
            deadline: self.discount_deadline,
            connect_timeout: self.discount_connect_timeout,
            dial_per_request: self.dial_per_request,
            backoff_min: self.discount_backoff_min,
            backoff_max: self.discount_backoff_max,
            resolve_interval: self.discount_resolve_interval,
            health_interval: self.discount_health_interval,
        }
    }

    /// The files whose change reloads the TLS material: none in plaintext.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        if self.discount_plaintext {
            Vec::new()
        } else {
            vec![
                self.discount_ca.clone(),
                self.client_cert.clone(),
                self.client_key.clone(),
            ]
        }
    }

    /// `--max-unsent-mib` in bytes.
    pub fn max_unsent_bytes(&self) -> usize {
        usize::try_from(self.max_unsent_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024)
    }

    /// How the HTTP server treats requests and shutdown.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn absurd_limits_and_durations_are_refused_at_start_not_when_serving() {
        for args in [
            ["--max-connections", "18446744073709551615"],
            ["--max-connections", "0"],
            ["--discount-deadline", "500000000years"],
            ["--request-timeout", "2days"],
            ["--discount-port", "0"],
            ["--discount-server-name", ""],
            ["--tls-watch-interval", "1ms"],
            ["--max-unsent-mib", "0"],
        ] {
            let parsed = Config::try_parse_from(["catalog"].into_iter().chain(args));
            let error = parsed.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(args[0]), "{args:?} accepted: {error}");
        }
        let fine = Config::try_parse_from(["catalog", "--max-connections", "1"]).unwrap();
        assert_eq!(fine.serve_options().max_connections, 1);
        for interval in ["0s", "100ms", "5s"] {
            let watch = Config::try_parse_from(["catalog", "--tls-watch-interval", interval]);
            assert!(watch.is_ok(), "--tls-watch-interval {interval} refused");
        }
    }

    #[test]
    fn defaults_find_a_discount_started_with_its_defaults() {
        let config = Config::try_parse_from(["catalog"]).ok();
        let discount = config.as_ref().map(Config::discount);
        assert_eq!(
            discount.as_ref().map(|d| d.targets.to_string()).as_deref(),
            Some("localhost:11443")
        );
        assert_eq!(
            discount.map(|d| d.server_name).as_deref(),
            Some("localhost")
        );
        assert_eq!(config.map(|c| c.port), Some(11080));
    }

    #[test]
    fn a_target_without_a_port_takes_the_kubernetes_port_variable_or_443() {
        let targets = |args: &[&str]| {
            Config::try_parse_from(["catalog"].iter().chain(args))
                .map(|c| c.discount().targets.to_string())
                .unwrap_or_default()
        };
        assert_eq!(targets(&["--discount-host", "10.96.0.7"]), "10.96.0.7:443");
        assert_eq!(
            targets(&[
                "--discount-host",
                "10.96.0.7,b:1",
                "--discount-port",
                "11443"
            ]),
            "10.96.0.7:11443,b:1"
        );
    }

    #[test]
    fn help_never_shows_the_database_url_set_in_the_environment() {
        use clap::CommandFactory;
        let command = Config::command();
        let url = command
            .get_arguments()
            .find(|a| a.get_id() == "database_url");
        assert!(url.is_some_and(|a| a.is_hide_env_values_set()));
    }

    #[test]
    fn a_url_clap_refuses_is_not_repeated_in_the_error() {
        for bad in [
            "postgres://u:s3cret@host:notaport/db",
            "postgres://u:s3cret@[::1/db",
            "mysql://u:s3cret@db/x",
        ] {
            let error = Config::try_parse_from(["catalog", "--database-url", bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("invalid --database-url"), "{bad}: {error}");
            assert!(!error.contains("s3cret"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_database_url_can_come_from_a_file_whose_errors_name_it_not_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("database_url");
        std::fs::write(&secret, "postgres://shop:s3cret@db:5432/catalog\n").unwrap();
        let file = secret.to_str().unwrap();
        let config = Config::try_parse_from(["catalog", "--database-url-file", file]).unwrap();
        assert_eq!(
            config.database_url().to_string(),
            "postgres://shop@db:5432/catalog"
        );
        let both = [
            "catalog",
            "--database-url-file",
            file,
            "--database-url",
            "sqlite://x.db",
        ];
        let both = Config::try_parse_from(both).unwrap();
        assert_eq!(both.database_url().sqlite_path(), None, "the file wins");

        let error = |contents: Option<&str>| {
            let path = dir.path().join("other");
            let _ = std::fs::remove_file(&path);
            if let Some(contents) = contents {
                std::fs::write(&path, contents).unwrap();
            }
            let args = ["catalog", "--database-url-file", path.to_str().unwrap()];
            let error = Config::try_parse_from(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(path.to_str().unwrap()), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
            error
        };
        assert!(error(None).contains("cannot read it"));
        let directory = [
            "catalog",
            "--database-url-file",
            dir.path().to_str().unwrap(),
        ];
        let refused = Config::try_parse_from(directory)
            .err()
            .map(|e| e.to_string());
        assert!(refused.unwrap_or_default().contains("not a regular file"));
        let huge = format!("postgres://shop:s3cret@db/{}", "x".repeat(70_000));
        assert!(error(Some(&huge)).contains("too large"));
        assert!(error(Some("\n")).contains("empty"));
        assert!(error(Some("postgres://shop:s3cret@db/a\nb\n")).contains("more than one line"));
        assert!(error(Some("mysql://shop:s3cret@db/x\n")).contains("not a valid URL"));
    }
}
