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
//! Where each part is:
//! - [`target`], [`resolve`]: what `--discount-host` names, found again and
//!   again; [`pool`]: the replicas known now, the pick, and what an outcome
//!   does to a replica (record, eject, resolve again), in one place.
//! - [`replica`]: one replica's connection, health checks and standing;
//!   [`dial`]: how it is dialled (endpoint settings, the TLS of
//!   [`crate::tls`]); [`backoff`]: how long an ejection lasts.
//! - [`call`]: one gRPC call to one replica; [`failover`]: which replicas
//!   price a listing (first pick, retry, hedge).
//! - [`outcome`]: judging the answers, call errors, the merged listing.

mod backoff;
mod call;
mod dial;
mod failover;
mod outcome;
mod pool;
mod replica;
mod resolve;
mod target;

pub use outcome::{CallError, Priced};
pub use replica::ReplicaState;
pub use resolve::{Resolve, Resolving, SystemResolver};
pub use target::{DEFAULT_PORT, DiscountAddr, Targets};

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reload::Reloadable;
use ecommerce_proto::pb::{Customer, DiscountValue, Product};
use tower::retry::budget::TpsBudget;

use crate::error::StartupError;
use crate::metrics::ClientMetrics;
use crate::tls::Security;
use common::quiet::Quiet;
use dial::Dialer;
use pool::Pool;
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
    quiet: Arc<Quiet>,
    /// Behind an `Arc`: the client is cloned with the state of every
    /// request.
    metrics: Arc<ClientMetrics>,
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
        // Boxed: the attempts' state is some 7 KB, and inline it made
        // every request's future that large, copied whole when the router
        // boxed it, on the plain path too (callgrind: +7,700 instructions
        // a plain listing).
        let answers = Box::pin(self.price(deadline, customer, &products)).await;
        outcome::merge(customer.id, products, answers, &self.quiet)
    }
}

/// One answer per product, in order.
type Answers = Vec<Result<Option<DiscountValue>, CallError>>;
