//! The gRPC client of the discount service.
//!
//! One [`Channel`] is made at start and shared by every request: HTTP/2
//! multiplexes the calls over one TLS connection, which tonic re-establishes
//! by itself after discount restarts. It connects lazily, so the catalog
//! starts (and serves undiscounted lists) while discount is down. The
//! seed's model, a new connection per HTTP request, is kept behind
//! `--dial-per-request` for benchmarks.
//!
//! Every failure degrades to "no discount for this product": the catalog
//! never drops a product or fails a listing because discount misbehaved. The
//! cause is logged with its whole `source()` chain, because tonic's own
//! message for a refused connection or a TLS failure is a bare
//! "transport error".

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::doctor::{self, Report, Role};
use common::reload::Reloadable;
use common::tls::{PemFile, PemSource};
use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, DiscountsRequest, Product};
use futures_util::future::join_all;
use rustls::client::WebPkiServerVerifier;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::DiscountAddr;
use crate::error::StartupError;

/// How to reach discount.
#[derive(Debug, Clone)]
pub struct DiscountSettings {
    /// `host:port` to dial.
    pub addr: DiscountAddr,
    /// The name discount's certificate must carry; usually `addr`'s host.
    pub server_name: String,
    /// How the connection is secured.
    pub security: Security,
    /// The longest a single ApplyDiscount call may take, connecting included.
    pub deadline: Duration,
    /// The longest a TCP connect, and separately a TLS handshake, may take.
    pub connect_timeout: Duration,
    /// Open a new connection for every HTTP request, as the seed did,
    /// instead of sharing one.
    pub dial_per_request: bool,
}

impl DiscountSettings {
    /// What the certificate doctor finds in the CA and the client identity
    /// (nothing to check in plaintext mode).
    pub fn check_certificates(&self) -> Report {
        match &self.security {
            Security::Plaintext => Report::default(),
            Security::MutualTls {
                ca,
                client_cert,
                client_key,
            } => {
                let now = SystemTime::now();
                let mut report = doctor::check_ca(ca, now);
                report.extend(doctor::check_identity(
                    client_cert,
                    client_key,
                    &Role::Client,
                    now,
                ));
                report
            }
        }
    }
}

/// How the connection to discount is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: discount's certificate is checked against `ca`, and the
    /// catalog presents `client_cert` with `client_key`.
    MutualTls {
        /// The CA certificates that may sign discount's certificate.
        ca: PemSource,
        /// The catalog's certificate chain.
        client_cert: PemSource,
        /// Its private key.
        client_key: PemSource,
    },
    /// No TLS. Only behind a service mesh that secures connections itself.
    Plaintext,
}

/// A cheap-to-clone handle on the connection to discount.
///
/// The TLS material can be re-read with [`DiscountClient::reload`]: new
/// requests then use a new channel built from it, while requests in flight
/// finish on the old one, which closes when the last of them is done.
#[derive(Debug, Clone)]
pub struct DiscountClient {
    connection: Arc<Reloadable<Connection>>,
    deadline: Duration,
}

/// One generation of the connection set-up: what to dial and how, the
/// shared channel (`None` when dialling per request), and whether the peer
/// has `ApplyDiscounts` (assumed until it answers UNIMPLEMENTED).
#[derive(Debug, Clone)]
struct Connection {
    endpoint: Endpoint,
    shared: Option<Channel>,
    batch: Arc<AtomicBool>,
}

impl Connection {
    /// The channel for one HTTP request: the shared one, or a new one that
    /// is closed when the request is done.
    fn channel(&self) -> Channel {
        self.shared
            .clone()
            .unwrap_or_else(|| self.endpoint.connect_lazy())
    }
}

impl Connection {
    /// Reads the TLS files once, checks them with the certificate doctor and
    /// builds the connection from the same bytes. Runs at start and on every
    /// reload, so broken replacement files are refused.
    fn new(settings: &DiscountSettings) -> Result<Self, StartupError> {
        let endpoint_error = |error| StartupError::Endpoint {
            addr: settings.addr.to_string(),
            error,
        };
        let endpoint = Endpoint::from_shared(settings.addr.uri(&settings.security))
            .map_err(endpoint_error)?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true);
        let endpoint = match &settings.security {
            Security::Plaintext => endpoint,
            Security::MutualTls {
                ca,
                client_cert,
                client_key,
            } => {
                let (ca, cert, key) = (
                    PemFile::read(ca)?,
                    PemFile::read(client_cert)?,
                    PemFile::read(client_key)?,
                );
                let now = SystemTime::now();
                let mut report = doctor::check_ca_file(&ca, now);
                report.extend(doctor::check_identity_files(
                    &cert,
                    &key,
                    &Role::Client,
                    now,
                ));
                report.enforce()?;
                let verifier = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(ca.root_store()?),
                    common::tls::provider(),
                )
                .build()
                .map_err(|error| StartupError::Trust {
                    ca: ca.source().path.display().to_string(),
                    error,
                })?;
                let tls = ClientTlsConfig::new()
                    .domain_name(settings.server_name.clone())
                    .identity(Identity::from_pem(cert.bytes(), key.bytes()))
                    .timeout(settings.connect_timeout);
                endpoint
                    .tls_config_with_verifier(tls, verifier)
                    .map_err(endpoint_error)?
            }
        };
        Ok(Self {
            shared: (!settings.dial_per_request).then(|| endpoint.connect_lazy()),
            endpoint,
            batch: Arc::new(AtomicBool::new(true)),
        })
    }
}

/// The service name discount reports its health under.
const HEALTH_SERVICE: &str = "ecommerce.Discount";

/// How a listing went, for the `X-Discount-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountStatus {
    /// Every product has discount's answer.
    Applied,
    /// Some products have it; the others are listed without a discount.
    Partial,
    /// No product has it: discount is down, untrusted, too slow or failing.
    Unavailable,
}

impl DiscountStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Partial => "partial",
            Self::Unavailable => "unavailable",
        }
    }

    fn of(failed: usize, total: usize) -> Self {
        match failed {
            0 => Self::Applied,
            n if n == total => Self::Unavailable,
            _ => Self::Partial,
        }
    }
}

/// Products priced for one customer, and how that went.
#[derive(Debug, Clone)]
pub struct Priced {
    /// Every product asked about, in order.
    pub products: Vec<Product>,
    /// Whether discount answered for all, some or none of them.
    pub status: DiscountStatus,
}

impl DiscountClient {
    /// Prepares the channel without connecting.
    ///
    /// # Errors
    /// A TLS file is unusable, or tonic refuses the address.
    pub fn connect_lazy(settings: &DiscountSettings) -> Result<Self, StartupError> {
        let reload_settings = settings.clone();
        let connection = Reloadable::new("catalog TLS identity and discount CA", move || {
            Connection::new(&reload_settings)
        })?;
        Ok(Self {
            connection: Arc::new(connection),
            deadline: settings.deadline,
        })
    }

    /// Re-reads the TLS files; new requests use them, requests in flight
    /// finish on the old ones. If the files are broken, nothing changes.
    ///
    /// # Errors
    /// Why the new files could not be used.
    pub fn reload(&self) -> Result<(), String> {
        self.connection.reload()
    }

    /// The channel for one HTTP request: the shared one, or a new one that
    /// is closed when the request is done.
    fn channel(&self) -> Channel {
        self.connection.current().channel()
    }

    /// Asks discount's standard health service whether `ecommerce.Discount`
    /// is SERVING, within the call deadline.
    ///
    /// # Errors
    /// A [`CallError`] when discount cannot be reached in time, or a
    /// [`CallError::NotServing`] with the status it reported.
    pub async fn check_health(&self) -> Result<(), CallError> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: HEALTH_SERVICE.to_owned(),
        });
        request.set_timeout(self.deadline);
        let mut health = HealthClient::new(self.channel());
        let answer = tokio::time::timeout(self.deadline, health.check(request))
            .await
            .map_err(|_| CallError::Deadline(self.deadline))?
            .map_err(CallError::Status)?
            .into_inner();
        match ServingStatus::try_from(answer.status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(CallError::NotServing(other.as_str_name())),
            Err(_) => Err(CallError::NotServing("an unknown status")),
        }
    }

    /// Asks discount for `customer`'s discount on `product`.
    ///
    /// The deadline travels to discount as `grpc-timeout`, and is enforced
    /// here as well, so a discount that accepts the connection and then says
    /// nothing costs at most the deadline.
    ///
    /// # Errors
    /// A [`CallError`] saying what went wrong.
    pub async fn discount(
        &self,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        self.call(self.channel(), customer, product).await
    }

    async fn call(
        &self,
        channel: Channel,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        let mut request = tonic::Request::new(DiscountRequest {
            customer: Some(customer.clone()),
            product: Some(product.clone()),
        });
        request.set_timeout(self.deadline);
        let mut grpc = GrpcClient::new(channel);
        let response = tokio::time::timeout(self.deadline, grpc.apply_discount(request))
            .await
            .map_err(|_| CallError::Deadline(self.deadline))?
            .map_err(CallError::Status)?
            .into_inner();
        check_answer(product, response.product)
    }

    /// Asks discount for `customer`'s discounts on all of `products` in one
    /// `ApplyDiscounts` call, under one deadline. Each product gets its own
    /// answer, checked as [`DiscountClient::discount`] checks one.
    async fn call_batch(
        &self,
        channel: Channel,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Vec<Result<Option<DiscountValue>, CallError>>, CallError> {
        let mut request = tonic::Request::new(DiscountsRequest {
            customer: Some(customer.clone()),
            products: products.to_vec(),
        });
        request.set_timeout(self.deadline);
        let mut grpc = GrpcClient::new(channel);
        let priced = tokio::time::timeout(self.deadline, grpc.apply_discounts(request))
            .await
            .map_err(|_| CallError::Deadline(self.deadline))?
            .map_err(CallError::Status)?
            .into_inner()
            .products;
        if priced.len() != products.len() {
            return Err(CallError::Invalid(
                "the response has a different number of products",
            ));
        }
        Ok(products
            .iter()
            .zip(priced)
            .map(|(sent, priced)| check_answer(sent, Some(priced)))
            .collect())
    }

    /// One `ApplyDiscount` per product, concurrently: for peers without
    /// `ApplyDiscounts`.
    async fn call_each(
        &self,
        channel: Channel,
        customer: &Customer,
        products: &[Product],
    ) -> Vec<Result<Option<DiscountValue>, CallError>> {
        join_all(
            products
                .iter()
                .map(|product| self.call(channel.clone(), customer, product)),
        )
        .await
    }

    /// Returns every product of `products`, in order, each with the discount
    /// `customer` gets on it; where discount failed, the product as it was.
    ///
    /// One `ApplyDiscounts` call prices them all. A discount built from the
    /// seed's proto does not have that method and answers UNIMPLEMENTED;
    /// from then on (until the next reload) this client sends one
    /// `ApplyDiscount` per product instead, concurrently. Failures are
    /// logged once per distinct cause, with the products it hit, so an
    /// outage is one line per request rather than one per product.
    pub async fn apply_to_all(&self, customer: &Customer, products: Vec<Product>) -> Priced {
        let connection = self.connection.current();
        let channel = connection.channel();
        let answers = if connection.batch.load(Ordering::Relaxed) {
            match self.call_batch(channel.clone(), customer, &products).await {
                Ok(answers) => answers,
                Err(CallError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                    connection.batch.store(false, Ordering::Relaxed);
                    tracing::info!(
                        "discount has no ApplyDiscounts (a peer built from the seed's proto); calling ApplyDiscount per product from now on"
                    );
                    self.call_each(channel, customer, &products).await
                }
                Err(error) => products.iter().map(|_| Err(error.clone())).collect(),
            }
        } else {
            self.call_each(channel, customer, &products).await
        };
        let total = products.len();
        let mut failures: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        let products: Vec<Product> = products
            .into_iter()
            .zip(answers)
            .map(|(product, answer)| match answer {
                Ok(discount_value) => Product {
                    discount_value,
                    ..product
                },
                Err(error) => {
                    failures
                        .entry(error.to_string())
                        .or_default()
                        .push(product.id);
                    product
                }
            })
            .collect();
        let failed = failures.values().map(Vec::len).sum();
        for (cause, product_ids) in &failures {
            tracing::warn!(
                customer_id = customer.id,
                ?product_ids,
                failed = product_ids.len(),
                of = total,
                %cause,
                "discount failed; listing these products without a discount"
            );
        }
        Priced {
            products,
            status: DiscountStatus::of(failed, total),
        }
    }
}

/// Why one ApplyDiscount call gave no usable answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No answer within the deadline.
    Deadline(Duration),
    /// The call failed: connection refused, TLS failure, or an error status
    /// from discount.
    Status(tonic::Status),
    /// Discount answered with something the catalog cannot use.
    Invalid(&'static str),
    /// Discount's health service reported this status instead of SERVING.
    NotServing(&'static str),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline(deadline) => write!(f, "no answer from discount within {deadline:?}"),
            Self::Status(status) => {
                write!(
                    f,
                    "discount call failed with {:?}: {}",
                    status.code(),
                    status.message()
                )?;
                // The useful part (refused, certificate unknown, ...) is
                // often only in the sources.
                let mut source = status.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            Self::Invalid(what) => write!(f, "discount sent an unusable response: {what}"),
            Self::NotServing(status) => write!(f, "discount reports its health as {status}"),
        }
    }
}

impl Error for CallError {}

/// Checks discount's answer for `sent`: it must be there, be for the same
/// product, and carry a finite `pct` (Go, and our JSON, cannot print NaN).
fn check_answer(
    sent: &Product,
    priced: Option<Product>,
) -> Result<Option<DiscountValue>, CallError> {
    let priced = priced.ok_or(CallError::Invalid("the response has no product"))?;
    if priced.id != sent.id {
        return Err(CallError::Invalid("the response is for another product"));
    }
    match priced.discount_value {
        Some(value) if !value.pct.is_finite() => {
            Err(CallError::Invalid("pct is not a finite number"))
        }
        other => Ok(other),
    }
}
