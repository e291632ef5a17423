//! The gRPC client of the discount service.
//!
//! Discount may run as several replicas: `--discount-host` names them, as
//! a list, as a name that resolves to several addresses, or both
//! ([`target`], [`resolve`]). The client keeps one HTTP/2 connection per
//! replica, a health check on each, and sends each call to the less busy of
//! two replicas in rotation ([`pool`], [`replica`]). What a replica
//! failed, or has not answered within a third of the deadline, is sent to
//! another replica, within the same deadline and a retry budget. It connects
//! lazily, so the catalog starts (and serves undiscounted lists) while
//! discount is down. The seed's model, a new connection per HTTP request,
//! is kept behind `--dial-per-request` for benchmarks.
//!
//! Every failure degrades to "no discount for this product": the catalog
//! never drops a product or fails a listing because discount misbehaved. The
//! cause is logged with its whole `source()` chain, because tonic's own
//! message for a refused connection or a TLS failure is a bare
//! "transport error".
//!
//! - [`outcome`]: judging the answers, the listing's status, call errors.
//! - The TLS of the connections is [`crate::tls`].

mod backoff;
mod outcome;
mod pool;
mod replica;
mod resolve;
mod target;

pub use outcome::{CallError, DiscountStatus, Priced};
pub use replica::ReplicaState;
pub use resolve::{Resolve, Resolving, SystemResolver};
pub use target::{DEFAULT_PORT, DiscountAddr, Targets};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::reload::Reloadable;
use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, DiscountsRequest, Product};
use futures_util::future::join_all;
use tonic::transport::Channel;
use tower::retry::budget::{Budget, TpsBudget};
use tracing::Instrument;

use crate::error::StartupError;
use crate::metrics::ClientMetrics;
use crate::tls::Security;
use common::quiet::Quiet;
use outcome::check_answer;
use pool::Pool;
use replica::{Dialer, Replica};
use resolve::Discovery;

/// How to reach discount.
#[derive(Debug, Clone)]
pub struct DiscountSettings {
    /// The replicas, or names that resolve to them.
    pub targets: Targets,
    /// The name discount's certificate must carry, whatever address is
    /// dialled; usually the first target's host.
    pub server_name: String,
    /// How the connections are secured.
    pub security: Security,
    /// The longest one call may take, connecting and a failover included.
    pub deadline: Duration,
    /// The longest a TCP connect, and separately a TLS handshake, may take.
    pub connect_timeout: Duration,
    /// Open a new connection for every HTTP request, as the seed did,
    /// instead of one per replica.
    pub dial_per_request: bool,
    /// A replica that could not be reached is ejected for this long the
    /// first time; it doubles while the replica keeps failing...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// How often names are resolved again.
    pub resolve_interval: Duration,
    /// How often each replica's health is checked; also the HTTP/2
    /// keepalive period.
    pub health_interval: Duration,
}

/// The share of calls that may be sent a second time, on top of
/// [`RETRY_RESERVE`] a second: a failover, never a doubling of the load in
/// an outage.
const RETRY_SHARE: f32 = 0.2;
/// Retries a second allowed whatever the traffic, so that a quiet catalog
/// fails over too.
const RETRY_RESERVE: u32 = 10;
/// The largest answer decoded: a listing's is a few hundred bytes, and
/// tonic's default (4 MiB) let three hostile replicas pin 4 MiB per
/// listing in flight.
const MAX_ANSWER_SIZE: usize = 64 * 1024;
/// A listing not answered within this share of the deadline (a third) is
/// sent to a second replica as well ([`DiscountClient::hedge`]).
const HEDGE_AFTER: u32 = 3;
/// How long a call counts towards the retry budget.
const RETRY_WINDOW: Duration = Duration::from_secs(10);

/// A cheap-to-clone handle on the connections to discount.
///
/// The TLS material can be re-read with [`DiscountClient::reload`]: new
/// calls then use new connections built from it, while calls in flight
/// finish on the old ones, which close when the last of them is done.
#[derive(Debug, Clone)]
pub struct DiscountClient {
    pool: Arc<Pool>,
    deadline: Duration,
    budget: Arc<TpsBudget>,
    counts: Arc<Counts>,
    quiet: Arc<Quiet>,
    /// Behind an `Arc`: the client is cloned with the state of every
    /// request.
    metrics: Arc<ClientMetrics>,
}

/// What the client sent, for tests and, later, metrics.
#[derive(Debug, Default)]
struct Counts {
    attempts: AtomicU64,
    retries: AtomicU64,
}

/// The calls a client has sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls sent, first attempts and retries.
    pub attempts: u64,
    /// Of those, calls sent again on another replica.
    pub retries: u64,
}

impl Dialer {
    /// One generation of the connection set-up: the TLS material as it is
    /// now ([`Security::client_tls`] reads and checks it). Runs at start
    /// and on every reload.
    fn new(settings: &DiscountSettings, metrics: &ClientMetrics) -> Result<Self, StartupError> {
        Ok(Self {
            scheme: settings.security.scheme(),
            tls: settings.security.client_tls(
                &settings.server_name,
                settings.connect_timeout,
                &metrics.certificates,
            )?,
            metrics: metrics.clone(),
            connect_timeout: settings.connect_timeout,
            health_interval: settings.health_interval,
            backoff: (settings.backoff_min, settings.backoff_max),
            dial_per_request: settings.dial_per_request,
        })
    }
}

impl DiscountClient {
    /// Prepares the client and starts finding replicas through `resolver`;
    /// connects to each lazily. Its calls are counted in `metrics`.
    ///
    /// # Errors
    /// A TLS file is unusable.
    pub fn start(
        settings: &DiscountSettings,
        resolver: Arc<dyn Resolve>,
        metrics: ClientMetrics,
    ) -> Result<Self, StartupError> {
        let (reload_settings, reload_metrics) = (settings.clone(), metrics.clone());
        let dialer = Reloadable::new("catalog TLS identity and discount CA", move || {
            Dialer::new(&reload_settings, &reload_metrics)
        })?;
        let discovery = Discovery::new(settings.targets.clone(), resolver);
        Ok(Self {
            pool: Pool::start(dialer, discovery, settings.resolve_interval),
            deadline: settings.deadline,
            budget: Arc::new(TpsBudget::new(RETRY_WINDOW, RETRY_RESERVE, RETRY_SHARE)),
            counts: Arc::new(Counts::default()),
            quiet: Arc::new(Quiet::default()),
            metrics: Arc::new(metrics),
        })
    }

    /// Re-reads the TLS files; new calls use them, calls in flight finish
    /// on the old ones. If the files are broken, nothing changes.
    ///
    /// # Errors
    /// Why the new files could not be used.
    pub fn reload(&self) -> Result<(), String> {
        self.pool.reload()
    }

    /// Whether a replica is serving, and a short text listing each one
    /// with its state: the answer of `/readyz`.
    pub fn readiness(&self) -> (bool, String) {
        self.pool.readiness()
    }

    /// Each replica known now and its state.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        self.pool.reports()
    }

    /// The calls sent so far.
    pub fn counts(&self) -> CallCounts {
        CallCounts {
            attempts: self.counts.attempts.load(Ordering::Relaxed),
            retries: self.counts.retries.load(Ordering::Relaxed),
        }
    }

    /// Sends `message` through `call` (the gRPC method `method`) to
    /// `replica`, with what is left until `deadline`. The deadline travels
    /// to discount as `grpc-timeout`, and is enforced here as well, so a
    /// replica that accepts the connection and then says nothing costs at
    /// most the deadline. Counted and timed in the metrics.
    async fn within_deadline<M, T, F>(
        &self,
        method: &'static str,
        replica: &Arc<Replica>,
        deadline: Instant,
        message: M,
        call: impl FnOnce(GrpcClient<Channel>, tonic::Request<M>) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.counts.attempts.fetch_add(1, Ordering::Relaxed);
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let client = GrpcClient::new(replica.channel()).max_decoding_message_size(MAX_ANSWER_SIZE);
        // The call's client span; discount's server span becomes its child
        // through the trace context sent in the metadata.
        let span = tracing::info_span!(
            "discount call",
            otel.name = %format_args!("ecommerce.Discount/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "ecommerce.Discount",
            rpc.method = method,
            server.address = %replica.addr,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = tokio::time::timeout_at(deadline.into(), async move {
            // Without traces (no OTLP endpoint) the span is disabled:
            // nothing to send or to enter.
            if span.is_disabled() {
                call(client, request).await
            } else {
                common::telemetry::propagate(&span, request.metadata_mut());
                let answer = call(client, request).instrument(span.clone()).await;
                let code = answer
                    .as_ref()
                    .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
                span.record("rpc.grpc.status_code", code as i32);
                answer
            }
        });
        let answer = call
            .await
            .map_err(|_| CallError::Deadline(self.deadline))
            .and_then(|answer| {
                answer.map_err(|status| CallError::from_status(status, self.deadline))
            })
            .map(tonic::Response::into_inner);
        let code = match &answer {
            Ok(_) => tonic::Code::Ok,
            Err(error) => error.code(),
        };
        self.metrics
            .call(&replica.series, method, code, started.elapsed());
        answer
    }

    /// [`check_answer`], with each refused answer counted.
    fn checked(
        &self,
        sent: &Product,
        priced: Option<Product>,
    ) -> Result<Option<DiscountValue>, CallError> {
        let answer = check_answer(sent, priced);
        if answer.is_err() {
            self.metrics.refused_answer();
        }
        answer
    }

    /// One `ApplyDiscount` call to `replica` for `customer`'s discount on
    /// `product`.
    async fn call(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        let message = DiscountRequest {
            customer: Some(customer.clone()),
            product: Some(product.clone()),
        };
        let response = self
            .within_deadline(
                "ApplyDiscount",
                replica,
                deadline,
                message,
                |mut grpc, request| async move { grpc.apply_discount(request).await },
            )
            .await?;
        self.checked(product, response.product)
    }

    /// Asks `replica` for `customer`'s discounts on all of `products` in
    /// one `ApplyDiscounts` call. Each product gets its own answer, checked
    /// as [`DiscountClient::call`] checks one.
    async fn call_batch(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        let message = DiscountsRequest {
            customer: Some(customer.clone()),
            products: products.to_vec(),
        };
        let priced = self
            .within_deadline(
                "ApplyDiscounts",
                replica,
                deadline,
                message,
                |mut grpc, request| async move { grpc.apply_discounts(request).await },
            )
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
            .map(|(sent, priced)| self.checked(sent, Some(priced)))
            .collect())
    }

    /// One `ApplyDiscount` per product to `replica`, concurrently: for peers
    /// without `ApplyDiscounts`. When every call failed the same way
    /// before reaching discount, that is the whole listing's error, so
    /// that it can be sent elsewhere.
    async fn call_each(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        let answers = join_all(
            products
                .iter()
                .map(|product| self.call(replica, deadline, customer, product)),
        )
        .await;
        match answers.first() {
            Some(Err(error)) if error.retryable() && answers.iter().all(Result::is_err) => {
                Err(error.clone())
            }
            _ => Ok(answers),
        }
    }

    /// `products` priced by `replica`, one answer per product (a failed
    /// call is every product's error), the outcome noted on the replica
    /// once for the listing, as its load is counted once: a seed-built
    /// replica is not three times as busy, nor three times as failing, when
    /// one listing is slow.
    async fn price_on(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Answers {
        let pending = replica.begin();
        let answers = match self.ask(replica, deadline, customer, products).await {
            Ok(answers) => answers,
            Err(error) => products.iter().map(|_| Err(error.clone())).collect(),
        };
        drop(pending);
        let error = answers.iter().find_map(|answer| answer.as_ref().err());
        let may_eject = || self.pool.others_in_rotation(replica);
        if replica.record_call(error, may_eject) {
            self.pool.resolve_soon();
        }
        answers
    }

    /// One `ApplyDiscounts` call, or one `ApplyDiscount` per product for a
    /// replica built from the seed's proto. Such a replica answers
    /// UNIMPLEMENTED to the batch; from then on (until its health check
    /// finds it serving again after a restart) it is sent one call per
    /// product.
    async fn ask(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        if !replica.batch.load(Ordering::Relaxed) {
            return self.call_each(replica, deadline, customer, products).await;
        }
        match self.call_batch(replica, deadline, customer, products).await {
            Err(CallError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                replica.batch.store(false, Ordering::Relaxed);
                tracing::info!(replica = %replica.addr,
                    "discount replica has no ApplyDiscounts (a peer built from the seed's proto); calling ApplyDiscount per product from now on"
                );
                self.call_each(replica, deadline, customer, products).await
            }
            answer => answer,
        }
    }

    /// Returns every product of `products`, in order, each with the discount
    /// `customer` gets on it; where discount failed, the product as it was.
    ///
    /// The listing goes to one replica. The products it failed (all of
    /// them when the call failed: refused, reset, an error status; or some,
    /// whose answers were unusable) are sent once more, to another replica
    /// in rotation, within what is left of the same deadline, when the
    /// retry budget allows: both methods are pure reads, so a second
    /// attempt is harmless even where the first was in fact served. A call
    /// the replica never processed (the connection retired, the stream
    /// refused) may go to the same replica when it is the only one, on a
    /// new connection; a call that ran out of time is not sent again, but
    /// a listing not answered within a [`HEDGE_AFTER`]th of the deadline
    /// is sent to another replica as well ([`DiscountClient::hedge`]).
    /// Failures are logged once per distinct cause, with the products they
    /// hit, so an outage is one line per request rather than one per
    /// product.
    pub async fn apply_to_all(&self, customer: &Customer, products: Vec<Product>) -> Priced {
        let deadline = Instant::now() + self.deadline;
        let answers = self.price(deadline, customer, &products).await;
        outcome::merge(customer.id, products, answers, &self.quiet)
    }

    /// [`DiscountClient::apply_to_all`]'s attempts.
    async fn price(&self, deadline: Instant, customer: &Customer, products: &[Product]) -> Answers {
        self.pool.resolved(deadline).await;
        let Some(first) = self.pool.pick(None) else {
            return products.iter().map(|_| Err(CallError::NoReplica)).collect();
        };
        self.budget.deposit();
        let hedge_after = deadline.saturating_duration_since(Instant::now()) / HEDGE_AFTER;
        let first_call = self.price_on(&first, deadline, customer, products);
        tokio::pin!(first_call);
        // No timer when there is no other replica to hedge to.
        let hedged = if self.pool.others_in_rotation(&first) {
            tokio::time::timeout(hedge_after, first_call.as_mut()).await
        } else {
            Ok(first_call.as_mut().await)
        };
        let mut answers = match hedged {
            Ok(answers) => answers,
            Err(_) => {
                let hedge = (&first, hedge_after);
                return self
                    .hedge(hedge, first_call, deadline, customer, products)
                    .await;
            }
        };
        let failed: Vec<usize> = (0..answers.len())
            .filter(|&i| answers[i].is_err())
            .collect();
        let Some(error) = failed.first().and_then(|&i| answers[i].as_ref().err()) else {
            return answers;
        };
        let unprocessed = failed
            .iter()
            .all(|&i| answers[i].as_ref().is_err_and(CallError::retryable));
        // Another replica, or the same one when it is the only one and
        // never processed the call (at a GOAWAY, a new connection will).
        let second = self
            .pool
            .pick(Some(first.addr))
            .or_else(|| (unprocessed && first.takes_calls()).then(|| first.clone()));
        let Some(second) = second else {
            return answers;
        };
        if Instant::now() >= deadline || !self.budget.withdraw() {
            return answers;
        }
        if unprocessed {
            tracing::debug!(%error, replica = %second.addr, "discount did not process the call; sending it again");
        } else {
            let cause = format!("{} from {}", error, first.addr);
            if let Some(unlogged) = self.quiet.should_log(&cause, Instant::now()) {
                tracing::warn!(replica = %first.addr, ?cause, failed = failed.len(), of = products.len(), to = %second.addr, unlogged,
                    "discount replica failed; sending the products it failed to another replica");
            }
        }
        self.counts.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.retried();
        let again: Vec<Product> = failed.iter().map(|&i| products[i].clone()).collect();
        let retried = self.price_on(&second, deadline, customer, &again).await;
        for (i, answer) in failed.into_iter().zip(retried) {
            answers[i] = answer;
        }
        answers
    }

    /// Counts the call to `replica` that a hedge abandoned, cancelled after
    /// `took`: dropped unfinished, it would be in no per-replica series,
    /// and the slowest calls are the ones those are for.
    fn abandoned(&self, replica: &Replica, took: Duration) {
        let method = if replica.batch.load(Ordering::Relaxed) {
            "ApplyDiscounts"
        } else {
            "ApplyDiscount"
        };
        self.metrics
            .call(&replica.series, method, tonic::Code::Cancelled, took);
    }

    /// `first` has not answered the listing within `hedge_after` (a
    /// [`HEDGE_AFTER`]th of the deadline, far beyond a healthy answer):
    /// sends it to another replica too, when there is one and the retry
    /// budget allows, and takes the first whole answer. A call that waits
    /// out the deadline has no time left to be sent again, so a replica
    /// that hangs one call in three cost a listing each time until it was
    /// ejected: four of them beside a good one left 3% of listings
    /// undiscounted. The abandoned call is cancelled and counted as
    /// CANCELLED in its replica's metrics; when it is `first`'s, it is held
    /// against `first` as a slow answer.
    async fn hedge<F>(
        &self,
        (first, hedge_after): (&Arc<Replica>, Duration),
        mut first_call: std::pin::Pin<&mut F>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Answers
    where
        F: Future<Output = Answers>,
    {
        let second = self
            .pool
            .pick(Some(first.addr))
            .filter(|_| self.budget.withdraw());
        let Some(second) = second else {
            return first_call.await;
        };
        tracing::debug!(replica = %first.addr, to = %second.addr, ?hedge_after, "no answer from discount yet; asking another replica too");
        self.counts.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.retried();
        let started = Instant::now();
        let second_call = self.price_on(&second, deadline, customer, products);
        tokio::pin!(second_call);
        let whole = |answers: &Answers| answers.iter().all(Result::is_ok);
        tokio::select! {
            answers = first_call.as_mut() => {
                if whole(&answers) {
                    self.abandoned(&second, started.elapsed());
                    answers
                } else {
                    second_call.await
                }
            }
            answers = second_call.as_mut() => {
                if whole(&answers) {
                    let slow = CallError::Deadline(hedge_after);
                    first.record_call(Some(&slow), || self.pool.others_in_rotation(first));
                    self.abandoned(first, hedge_after + started.elapsed());
                    answers
                } else {
                    first_call.await
                }
            }
        }
    }
}

/// One answer per product, in order.
type Answers = Vec<Result<Option<DiscountValue>, CallError>>;
