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
//!
//! - [`target`]: where discount is (`--discount-host`).
//! - [`outcome`]: judging the answers, the listing's status, call errors.
//! - The TLS of the connection is [`crate::tls`].

mod backoff;
mod outcome;
mod target;

pub use backoff::Waiting;
pub use outcome::{CallError, DiscountStatus, Priced};
pub use target::DiscountAddr;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::reload::Reloadable;
use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, DiscountsRequest, Product};
use futures_util::future::join_all;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::StartupError;
use crate::tls::Security;
use backoff::Backoff;
use common::quiet::Quiet;
use outcome::check_answer;

/// How to reach discount.
#[derive(Debug, Clone)]
pub struct DiscountSettings {
    /// `host:port` to dial.
    pub addr: DiscountAddr,
    /// The name discount's certificate must carry; usually `addr`'s host.
    pub server_name: String,
    /// How the connection is secured.
    pub security: Security,
    /// The longest one call may take, connecting included.
    pub deadline: Duration,
    /// The longest a TCP connect, and separately a TLS handshake, may take.
    pub connect_timeout: Duration,
    /// Open a new connection for every HTTP request, as the seed did,
    /// instead of sharing one.
    pub dial_per_request: bool,
    /// After discount could not be reached, the first wait before trying
    /// again; it doubles while failures go on...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
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
    backoff: Arc<Backoff>,
    quiet: Arc<Quiet>,
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
    /// One generation of the connection: the endpoint secured with the TLS
    /// material as it is now ([`Security::secure`] reads and checks it).
    /// Runs at start and on every reload.
    fn new(settings: &DiscountSettings) -> Result<Self, StartupError> {
        let uri = format!("{}://{}", settings.security.scheme(), settings.addr);
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|error| StartupError::Endpoint {
                addr: settings.addr.to_string(),
                error,
            })?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            // A call past its deadline is cancelled (RST_STREAM) while
            // discount's answer may already be on the wire. h2 remembers
            // only the last 50 streams it cancelled, answers a frame for
            // an older one with a reset of its own and counts it, and at
            // 1,024 such resets in the connection's life tears the
            // connection down itself (GOAWAY ENHANCE_YOUR_CALM), failing
            // every call on it: a `/products` flood with expiring
            // deadlines did that. So remember more, and drop the lifetime
            // cap, which never counts down and guards against a peer we
            // authenticated.
            .http2_max_concurrent_reset_streams(CANCELLED_STREAMS_REMEMBERED)
            .http2_max_local_error_reset_streams(None);
        let endpoint =
            settings
                .security
                .secure(endpoint, &settings.server_name, settings.connect_timeout)?;
        Ok(Self {
            shared: (!settings.dial_per_request).then(|| endpoint.connect_lazy()),
            endpoint,
            batch: Arc::new(AtomicBool::new(true)),
        })
    }
}

/// How many cancelled calls the connection remembers (for a second), so
/// that answers crossing the cancel are dropped quietly: four times
/// discount's default stream limit a connection.
const CANCELLED_STREAMS_REMEMBERED: usize = 1024;

/// The service name discount reports its health under.
const HEALTH_SERVICE: &str = "ecommerce.Discount";

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
            backoff: Arc::new(Backoff::new(settings.backoff_min, settings.backoff_max)),
            quiet: Arc::new(Quiet::default()),
        })
    }

    /// Re-reads the TLS files; new requests use them, requests in flight
    /// finish on the old ones. If the files are broken, nothing changes.
    ///
    /// # Errors
    /// Why the new files could not be used.
    pub fn reload(&self) -> Result<(), String> {
        self.connection.reload()?;
        // New material may be what fixes it: try at once.
        self.backoff.succeeded();
        Ok(())
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
        if let Some(waiting) = self.backoff.waiting(Instant::now()) {
            return Err(CallError::BackingOff(waiting));
        }
        let message = HealthCheckRequest {
            service: HEALTH_SERVICE.to_owned(),
        };
        let health = HealthClient::new(self.channel());
        let answer = self
            .within_deadline(message, |request| {
                let mut health = health.clone();
                async move { health.check(request).await }
            })
            .await;
        outcome::note_reachability(&self.backoff, answer.as_ref().err());
        let answer = answer?;
        match ServingStatus::try_from(answer.status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(CallError::NotServing(other.as_str_name())),
            Err(_) => Err(CallError::NotServing("an unknown status")),
        }
    }

    /// Sends `message` through `call` under the call deadline. The deadline
    /// travels to discount as `grpc-timeout`, and is enforced here as well,
    /// so a discount that accepts the connection and then says nothing costs
    /// at most the deadline.
    ///
    /// A call that discount never processed (sent after its GOAWAY, or
    /// refused with REFUSED_STREAM) is sent once more, on a new connection,
    /// within what is left of the deadline: that is what a discount
    /// retiring a connection (`--max-connection-age`, graceful shutdown)
    /// looks like to the calls racing it. Both methods are pure reads, so a
    /// second attempt is harmless even where the first was in fact served.
    async fn within_deadline<M, T, F>(
        &self,
        message: M,
        mut call: impl FnMut(tonic::Request<M>) -> F,
    ) -> Result<T, CallError>
    where
        M: Clone,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.deadline;
        let mut attempt = |message: M| {
            let mut request = tonic::Request::new(message);
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            call(request)
        };
        let attempts = async {
            match attempt(message.clone()).await {
                Err(status) if CallError::never_processed(&status) => {
                    tracing::debug!(%status, "discount did not process the call; sending it again");
                    attempt(message).await
                }
                answer => answer,
            }
        };
        tokio::time::timeout_at(deadline.into(), attempts)
            .await
            .map_err(|_| CallError::Deadline(self.deadline))?
            .map(tonic::Response::into_inner)
            .map_err(|status| CallError::from_status(status, self.deadline))
    }

    /// One `ApplyDiscount` call for `customer`'s discount on `product`.
    async fn call(
        &self,
        channel: Channel,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        let message = DiscountRequest {
            customer: Some(customer.clone()),
            product: Some(product.clone()),
        };
        let grpc = GrpcClient::new(channel);
        let response = self
            .within_deadline(message, |request| {
                let mut grpc = grpc.clone();
                async move { grpc.apply_discount(request).await }
            })
            .await?;
        check_answer(product, response.product)
    }

    /// Asks discount for `customer`'s discounts on all of `products` in one
    /// `ApplyDiscounts` call, under one deadline. Each product gets its own
    /// answer, checked as [`DiscountClient::call`] checks one.
    async fn call_batch(
        &self,
        channel: Channel,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Vec<Result<Option<DiscountValue>, CallError>>, CallError> {
        let message = DiscountsRequest {
            customer: Some(customer.clone()),
            products: products.to_vec(),
        };
        let grpc = GrpcClient::new(channel);
        let priced = self
            .within_deadline(message, |request| {
                let mut grpc = grpc.clone();
                async move { grpc.apply_discounts(request).await }
            })
            .await?
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
        if let Some(waiting) = self.backoff.waiting(Instant::now()) {
            tracing::debug!(
                customer_id = customer.id,
                ?waiting,
                "discount unreachable; not asking it yet"
            );
            return Priced {
                products,
                status: DiscountStatus::Unavailable,
            };
        }
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
        outcome::merge(customer.id, products, answers, &self.backoff, &self.quiet)
    }
}
