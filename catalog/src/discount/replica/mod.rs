//! One discount replica: its connection, its load, and whether it takes
//! calls.
//!
//! Each replica has one HTTP/2 connection (a tonic [`Channel`], which
//! reconnects by itself) and a task that asks its standard health service
//! every `--discount-health-interval`. It is *in rotation*, and gets calls,
//! while that check says SERVING (or the replica has no health service, as
//! a peer built from the seed's proto, and answers) and it is not ejected.
//!
//! It is *ejected* when it cannot be reached (connection refused or lost,
//! TLS refused, the health check unanswered or refused twice in a row) or
//! when calls to it keep failing ([`EJECT_AFTER`] of its last
//! [`RECENT_CALLS`], in a row or not: past their deadline, with any status
//! but OK, UNIMPLEMENTED included, with the stream refused, or with an
//! unusable answer) while another replica is in rotation. Only a call caught by the replica retiring its connection
//! (GOAWAY) is not held against it.
//!
//! Before that, every failure costs it in the pick: its *failure score*
//! (an average over its last calls, 1 when all failed) multiplies its load
//! by up to [`FAILURE_PENALTY`] + 1, so a replica that fails at once, and
//! so has fewer calls in flight than the others, draws fewer calls rather
//! than more. The score shrinks with each call it answers and halves with
//! each health check it passes, so a replica that recovers, or that no
//! pick has tried for a while, gets its share back within a few checks.
//! An ejection lasts `--discount-backoff-min` the first time and doubles
//! while the replica keeps failing, up to `--discount-backoff-max`. When it
//! ends, one health check probes the replica: an answer ends the
//! ejection, a failure ejects it for longer, and the schedule starts again
//! only when a call succeeds. So a dead replica costs one connection
//! attempt per backoff, not one per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::backoff::Backoff;
use super::outcome::CallError;
use crate::error::StartupError;
use crate::metrics::{ClientMetrics, ReplicaSeries};
use crate::tls::ClientTls;

/// Calls that fail (past the deadline, an error status, an unusable
/// answer) among a replica's last [`RECENT_CALLS`] before it is ejected
/// although it still answers its health check: three in a row, or three
/// spread among answers, as a replica that hangs one call in three does
/// (it never failed three in a row, and cost a listing each time).
pub(crate) const EJECT_AFTER: u32 = 3;

/// How many of its last calls a replica's ejection looks at.
const RECENT_CALLS: u32 = u8::BITS;

/// How much more loaded a replica whose calls all fail looks to the pick
/// than one whose calls succeed: the power of two choices prefers the good
/// one unless it has this many times the calls in flight. Large enough
/// that a failing replica draws a few calls in a hundred, not half; finite
/// so that it still draws some under load, fails them, and is ejected.
pub(crate) const FAILURE_PENALTY: u64 = 16;

/// The failure score's 1.0 (fixed point, so it lives in an atomic).
const SCORE_ONE: u32 = 1 << 16;

/// The share of the failure score a new outcome replaces: the score
/// follows about the last four calls.
const SCORE_WEIGHT: u32 = 4;

/// Health checks refused (REFUSED_STREAM) in a row before the replica is
/// taken for unreachable: one may be a race at a connection's start.
const REFUSED_CHECKS: u8 = 2;

/// The service name discount reports its health under.
const HEALTH_SERVICE: &str = "ecommerce.Discount";

/// How many cancelled calls a connection remembers (for a second), so
/// that answers crossing the cancel are dropped quietly: four times
/// discount's default stream limit a connection.
const CANCELLED_STREAMS_REMEMBERED: usize = 1024;

/// What every replica's endpoint is made from: one generation of the TLS
/// material and the connection settings.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    pub(crate) scheme: &'static str,
    pub(crate) tls: Option<ClientTls>,
    pub(crate) connect_timeout: Duration,
    /// The health check period, also the HTTP/2 keepalive ping period and
    /// its timeout.
    pub(crate) health_interval: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) dial_per_request: bool,
    /// Where the replicas' calls and ejections are counted.
    pub(crate) metrics: ClientMetrics,
}

impl Dialer {
    /// The endpoint of the replica at `addr`.
    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, StartupError> {
        let uri = format!("{}://{addr}", self.scheme);
        let failed = |error| StartupError::Endpoint {
            addr: addr.to_string(),
            error,
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(failed)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A replica that stops answering (frozen, cut off by the
            // network) is noticed within two periods even with calls in
            // flight, whose connection is then closed and retried
            // elsewhere. No pings on an idle connection: peers such as
            // grpcio count those as abuse and close the connection.
            .http2_keep_alive_interval(self.health_interval)
            .keep_alive_timeout(self.health_interval)
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
        match &self.tls {
            Some(tls) => tls.apply(endpoint).map_err(failed),
            None => Ok(endpoint),
        }
    }
}

/// One replica of discount.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    /// Replaced on a reload; what is known about the replica is kept.
    connection: RwLock<Connection>,
    dial_per_request: bool,
    /// Listings in flight: the load that the power of two choices compares.
    pending: AtomicUsize,
    /// How its recent calls went, 0 (all answered) to [`SCORE_ONE`] (all
    /// failed): what a failure costs it in the pick ([`Replica::cost`]).
    failure_score: AtomicU32,
    /// Its [`Tier`], read on every pick, so kept apart from [`State`].
    tier: AtomicU8,
    /// Whether it has `ApplyDiscounts` (assumed until it answers
    /// UNIMPLEMENTED).
    pub(crate) batch: AtomicBool,
    state: Mutex<State>,
    ejection: Backoff,
    checker: OnceLock<AbortHandle>,
    /// Wakes the health check early: the connection was replaced.
    check_now: Arc<Notify>,
    metrics: ClientMetrics,
    /// Its series in the metrics, looked up once.
    pub(crate) series: ReplicaSeries,
}

/// How a replica is dialled: one generation of the TLS material.
#[derive(Debug)]
struct Connection {
    /// For `--dial-per-request`.
    endpoint: Endpoint,
    /// The replica's HTTP/2 connection, (re)connected by tonic.
    channel: Channel,
}

#[derive(Debug)]
struct State {
    health: Health,
    /// Its last [`RECENT_CALLS`] calls, the newest in the lowest bit: 1
    /// for a failure.
    recent: u8,
    /// Health checks in a row whose stream the replica refused.
    refused_checks: u8,
    /// Ejected until then...
    ejected_until: Option<Instant>,
    /// ...because of this, in a few words for `/readyz`.
    ejected_for: &'static str,
    /// Whether this run of failures has been logged at WARN: only its first
    /// ejection is, the next ones (failed probes) at DEBUG.
    down_logged: bool,
    /// Back from an ejection but no call has succeeded yet: the ejection
    /// schedule starts again only with a successful call, so a replica
    /// whose health check passes while its calls fail is ejected for
    /// longer and longer, not for a second again and again.
    probation: bool,
    /// It refused this catalog (PERMISSION_DENIED: not on its allow-list).
    /// Its health check cannot tell (health is open to every client), so
    /// it stays out until something that could change that happens: its
    /// health check finds it back after being unreachable or not serving
    /// (a restart, with new flags maybe), or the catalog reloads its
    /// certificate.
    refused: bool,
}

/// Which calls a replica gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tier {
    /// Unreachable or ejected: none.
    Out = 0,
    /// Not serving but answering (discount during its `--shutdown-delay`):
    /// only while no replica is in rotation, which beats listing without
    /// discounts.
    Fallback = 1,
    /// Healthy, or not checked yet, and not ejected: its share.
    Rotation = 2,
}

/// What the last health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not checked yet: in rotation meanwhile, so the first listings after
    /// start do not wait for it.
    Unknown,
    Serving,
    /// The peer has no health service (UNIMPLEMENTED): healthy while it
    /// answers.
    NoHealthService,
    /// It answered with this status instead of SERVING.
    NotServing(&'static str),
    /// It could not be reached or did not answer in time.
    Unreachable,
}

impl Health {
    fn takes_calls(&self) -> bool {
        matches!(self, Self::Unknown | Self::Serving | Self::NoHealthService)
    }
}

/// One replica's state, as `/readyz` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// Where it is.
    pub addr: SocketAddr,
    /// Serving and not ejected: what makes the catalog ready.
    pub serving: bool,
    /// In words.
    pub state: String,
}

/// Holds a listing's place in its replica's count until dropped.
#[derive(Debug)]
pub(crate) struct Pending<'a>(&'a Replica);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Replica {
    /// A replica at `addr`, with its health checks started (one at once).
    pub(crate) fn start(addr: SocketAddr, dialer: &Dialer) -> Result<Arc<Self>, StartupError> {
        let endpoint = dialer.endpoint(addr)?;
        let replica = Arc::new(Self {
            addr,
            connection: RwLock::new(Connection {
                channel: endpoint.connect_lazy(),
                endpoint,
            }),
            dial_per_request: dialer.dial_per_request,
            pending: AtomicUsize::new(0),
            failure_score: AtomicU32::new(0),
            tier: AtomicU8::new(Tier::Rotation as u8),
            batch: AtomicBool::new(true),
            state: Mutex::new(State {
                health: Health::Unknown,
                recent: 0,
                refused_checks: 0,
                ejected_until: None,
                ejected_for: "",
                down_logged: false,
                probation: false,
                refused: false,
            }),
            ejection: Backoff::new(dialer.backoff.0, dialer.backoff.1),
            checker: OnceLock::new(),
            check_now: Arc::new(Notify::new()),
            metrics: dialer.metrics.clone(),
            series: dialer.metrics.series(addr),
        });
        let checks = tokio::spawn(check_health(
            Arc::downgrade(&replica),
            replica.check_now.clone(),
            dialer.health_interval,
        ));
        let _ = replica.checker.set(checks.abort_handle());
        Ok(replica)
    }

    /// Whether it may be called at all (in rotation or a fallback).
    pub(crate) fn takes_calls(&self) -> bool {
        self.tier() != Tier::Out
    }

    /// Whether it is in rotation.
    pub(crate) fn in_rotation(&self) -> bool {
        self.tier() == Tier::Rotation
    }

    pub(crate) fn tier(&self) -> Tier {
        match self.tier.load(Ordering::Relaxed) {
            2 => Tier::Rotation,
            1 => Tier::Fallback,
            _ => Tier::Out,
        }
    }

    /// What the pick compares: the listings in flight, plus one, scaled up
    /// by the failure score (by [`FAILURE_PENALTY`] + 1 when every recent
    /// call failed). In [`SCORE_ONE`]ths.
    pub(crate) fn cost(&self) -> u64 {
        cost(
            self.pending.load(Ordering::Relaxed),
            self.failure_score.load(Ordering::Relaxed),
        )
    }

    /// Notes one more outcome in the failure score.
    fn score(&self, failed: bool) {
        let _ = self
            .failure_score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |score| {
                Some(next_score(score, failed))
            });
    }

    /// Counts a listing in flight until the returned guard is dropped.
    pub(crate) fn begin(&self) -> Pending<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        Pending(self)
    }

    /// The channel for one HTTP request: the replica's connection, or with
    /// `--dial-per-request` a new one, closed when the request is done.
    pub(crate) fn channel(&self) -> Channel {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if self.dial_per_request {
            connection.endpoint.connect_lazy()
        } else {
            connection.channel.clone()
        }
    }

    /// Connects anew with `dialer`'s TLS material (a reload); calls in
    /// flight finish on the old connection. What is known about the
    /// replica stays: its health, its ejection schedule, whether it has
    /// `ApplyDiscounts`. Only a replica that was out (ejected, unreachable)
    /// gets a chance at once, as if its ejection had just ended: the new
    /// material may be what it was waiting for, and if not, its next
    /// failure ejects it for longer. Either way its health is checked now.
    ///
    /// # Errors
    /// The endpoint could not be built; nothing changed.
    pub(crate) fn redial(&self, dialer: &Dialer) -> Result<(), StartupError> {
        let endpoint = dialer.endpoint(self.addr)?;
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Connection {
            channel: endpoint.connect_lazy(),
            endpoint,
        };
        let mut state = self.lock();
        if state.ejected_until.is_some() || state.health == Health::Unreachable || state.refused {
            state.ejected_until = None;
            state.health = Health::Unknown;
            state.probation = true;
            state.refused = false;
            self.update_rotation(&state);
        }
        drop(state);
        self.check_now.notify_one();
        Ok(())
    }

    /// Notes how a listing sent to it ended: `None` for an answer. Returns
    /// whether the replica was unreachable (so names are worth resolving
    /// again). `may_eject` says whether ejecting it for failing calls would
    /// leave a replica in rotation (asked only then): a discount that is
    /// merely slow everywhere is still asked.
    pub(crate) fn record_call(
        &self,
        error: Option<&CallError>,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        let Some(error) = error else {
            self.score(false);
            let mut state = self.lock();
            state.recent <<= 1;
            if state.probation {
                state.probation = false;
                self.ejection.succeeded();
            }
            return false;
        };
        // The replica retired the connection (GOAWAY at its
        // --max-connection-age, or shutting down): nothing against it.
        if error.connection_retired() {
            return false;
        }
        self.score(true);
        let mut state = self.lock();
        match error {
            // Refused streams are held against it only as failing calls
            // (EJECT_AFTER of the last few), not at once as an unreachable replica,
            // whose code (UNAVAILABLE) they share: one may be a race at a
            // connection's start; a replica that refuses every stream
            // fails every call.
            error if error.is_unreachable() && !error.stream_refused() => {
                let why = if error.is_tls_failure() {
                    "TLS handshake failed"
                } else {
                    "unreachable"
                };
                self.eject(&mut state, why, &error.to_string());
                true
            }
            // It will not serve this catalog (its allow-list): out until
            // it restarts or the catalog reloads (see State::refused).
            error if error.is_refused() => {
                if !state.refused {
                    state.refused = true;
                    self.metrics.ejected("refused");
                    tracing::warn!(replica = %self.addr, cause = ?error.to_string(),
                        "discount replica refuses this catalog's identity; out of rotation until it restarts or the catalog reloads its certificate");
                    self.update_rotation(&state);
                }
                false
            }
            // Past the deadline, any other status (INTERNAL,
            // RESOURCE_EXHAUSTED, UNIMPLEMENTED from a replica that has
            // neither method...), the stream refused, or an unusable
            // answer.
            error => {
                state.recent = state.recent << 1 | 1;
                if state.recent.count_ones() >= EJECT_AFTER && may_eject() {
                    let cause = format!(
                        "{} of its last {RECENT_CALLS} calls failed, the last with: {error}",
                        state.recent.count_ones()
                    );
                    self.eject(&mut state, "calls failing", &cause);
                }
                false
            }
        }
    }

    /// Ejects the replica for the next wait of its schedule (a failure
    /// during a wait does not lengthen it), because of `why` (for
    /// `/readyz`) and `cause` (for the log). The first ejection of a run of
    /// failures is logged as a warning, the failed probes after it at
    /// debug level, so a replica that stays down is not a line a second.
    fn eject(&self, state: &mut State, why: &'static str, cause: &str) {
        let now = Instant::now();
        if state.ejected_until.is_some_and(|until| now < until) {
            return;
        }
        if let Some(wait) = self.ejection.failed(now) {
            state.ejected_until = Some(now + wait);
            state.ejected_for = why;
            self.metrics.ejected(why);
            // The calls that failed stay in `recent` until answers push
            // them out: a replica back from an ejection that fails again
            // among its next few calls is ejected again at once, for
            // longer, rather than after three more lost listings.
            if state.down_logged {
                tracing::debug!(replica = %self.addr, ?cause, ejected_for = ?wait,
                    "discount replica still failing; ejected again");
            } else {
                state.down_logged = true;
                // Debug format: the cause may carry a replica's own text
                // (grpc-message), which must not forge log lines.
                tracing::warn!(replica = %self.addr, ?cause, ejected_for = ?wait,
                    "discount replica ejected; probing it again when the wait ends (failed probes are logged at debug level)");
            }
            self.update_rotation(state);
        }
    }

    /// Takes the outcome of one health check.
    fn record_check(&self, outcome: Result<ServingStatus, CallError>) {
        let mut state = self.lock();
        let health = match outcome {
            Ok(ServingStatus::Serving) => Health::Serving,
            Ok(other) => Health::NotServing(other.as_str_name()),
            Err(CallError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                Health::NoHealthService
            }
            // Sent on a connection the replica was retiring (GOAWAY at its
            // --max-connection-age, or while it closed): the replica never
            // saw the check, which says nothing about it, as for a call
            // (record_call). The next check uses the new connection.
            // Counted as unreachable, this ejected a healthy replica under
            // load in catalog/tests/connection.rs.
            Err(error) if error.connection_retired() => {
                tracing::debug!(replica = %self.addr, %error, "health check not processed by discount (connection retired); checking again at the next interval");
                return;
            }
            // The replica refused the check's stream: once may be a race,
            // twice in a row it serves nobody.
            Err(error) if error.stream_refused() => {
                state.refused_checks = state.refused_checks.saturating_add(1);
                if state.refused_checks < REFUSED_CHECKS {
                    tracing::debug!(replica = %self.addr, %error, "discount refused the health check's stream; checking again at the next interval");
                    return;
                }
                self.score(true);
                state.health = Health::Unreachable;
                self.eject(
                    &mut state,
                    "health check refused",
                    &format!("health check: {error}"),
                );
                self.update_rotation(&state);
                return;
            }
            Err(error) => {
                state.refused_checks = 0;
                self.score(true);
                state.health = Health::Unreachable;
                let why = match error {
                    CallError::Deadline(_) => "health check unanswered",
                    _ if error.is_tls_failure() => "TLS handshake failed",
                    _ => "unreachable",
                };
                self.eject(&mut state, why, &format!("health check: {error}"));
                self.update_rotation(&state);
                return;
            }
        };
        state.refused_checks = 0;
        // A check passed: what failures cost the replica in the pick
        // halves, so one that recovered, or that no pick has tried since
        // it failed, gets its share back within a few checks.
        let _ = self
            .failure_score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |score| {
                Some(score / 2)
            });
        // It answered: an ejection whose wait is over ends (this was its
        // probe), whatever the status, or a replica that comes back NOT
        // SERVING would stay ejected with a probe due at once, forever.
        if state
            .ejected_until
            .is_some_and(|until| until <= Instant::now())
        {
            state.ejected_until = None;
            state.probation = true;
        }
        // A passing check does not clear the calls that failed: a replica
        // whose checks pass while its calls fail, and which the pick
        // therefore seldom tries, must still reach EJECT_AFTER.
        if health.takes_calls() {
            state.down_logged = false;
        }
        if state.health != health {
            // Serving again (restarted, maybe upgraded at the same
            // address): ask for ApplyDiscounts again, and whether it
            // still refuses this catalog.
            if health == Health::Serving {
                if !self.batch.swap(true, Ordering::Relaxed) {
                    tracing::debug!(replica = %self.addr, "discount replica serving again; trying ApplyDiscounts again");
                }
                // Back from unreachable or not serving: a restart. (Not
                // the first check, which a refusal may have beaten.)
                if state.health != Health::Unknown {
                    state.refused = false;
                }
            }
            match &health {
                Health::NotServing(status) => tracing::info!(replica = %self.addr, status,
                    "discount replica reports it is not serving (shutting down?); out of rotation"),
                Health::NoHealthService => tracing::info!(replica = %self.addr,
                    "discount replica has no health service (a seed-built peer?); in rotation while it answers"),
                _ => {}
            }
        }
        state.health = health;
        self.update_rotation(&state);
    }

    /// Sets the replica's [`Tier`] from `state`, logging a change of
    /// rotation.
    fn update_rotation(&self, state: &State) {
        let tier = match (&state.health, state.ejected_until) {
            _ if state.refused => Tier::Out,
            (_, Some(_)) | (Health::Unreachable, None) => Tier::Out,
            (Health::NotServing(_), None) => Tier::Fallback,
            _ => Tier::Rotation,
        };
        let was = self.tier.swap(tier as u8, Ordering::Relaxed);
        let (now_in, was_in) = (tier == Tier::Rotation, was == Tier::Rotation as u8);
        if now_in && !was_in {
            tracing::info!(replica = %self.addr, "discount replica back in rotation");
        }
    }

    /// When the next health check is due: at once after `interval` when
    /// in rotation or not serving, or when the ejection ends.
    fn next_check(&self, interval: Duration) -> Duration {
        let state = self.lock();
        match state.ejected_until {
            Some(until) if until > Instant::now() => until - Instant::now(),
            _ => interval,
        }
    }

    /// The replica's state in words.
    pub(crate) fn report(&self) -> ReplicaState {
        let state = self.lock();
        let now = Instant::now();
        let text = match (&state.health, state.ejected_until) {
            _ if state.refused => {
                "refuses this catalog's identity (not on its allow-list; the log says why)"
                    .to_owned()
            }
            (_, Some(until)) => format!(
                "ejected ({}; the log says why), next probe in {:.1}s",
                state.ejected_for,
                until.saturating_duration_since(now).as_secs_f64()
            ),
            (Health::Unknown, None) => "not checked yet".to_owned(),
            (Health::Serving, None) => "serving".to_owned(),
            (Health::NoHealthService, None) => "serving (no health service)".to_owned(),
            (Health::NotServing(status), None) => format!("not serving ({status})"),
            (Health::Unreachable, None) => "unreachable".to_owned(),
        };
        ReplicaState {
            addr: self.addr,
            serving: matches!(state.health, Health::Serving | Health::NoHealthService)
                && state.ejected_until.is_none()
                && !state.refused,
            state: text,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(checks) = self.checker.get() {
            checks.abort();
        }
    }
}

/// [`Replica::cost`] of `pending` listings in flight and a failure score
/// of `score`.
fn cost(pending: usize, score: u32) -> u64 {
    let pending = u64::try_from(pending).unwrap_or(u64::MAX);
    pending
        .saturating_add(1)
        .saturating_mul(u64::from(SCORE_ONE) + FAILURE_PENALTY * u64::from(score))
}

/// The failure score `score` moved a [`SCORE_WEIGHT`]th of the way towards
/// 1 (`failed`) or 0.
fn next_score(score: u32, failed: bool) -> u32 {
    if failed {
        score + (SCORE_ONE - score) / SCORE_WEIGHT
    } else {
        score - score / SCORE_WEIGHT
    }
}

/// Asks the replica's health service every `interval` (and when an
/// ejection ends, or at once when woken by `check_now`), each check
/// bounded by `interval`, until the replica is dropped.
async fn check_health(replica: Weak<Replica>, check_now: Arc<Notify>, interval: Duration) {
    let request = HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    };
    loop {
        let Some(current) = replica.upgrade() else {
            return;
        };
        // The replica's own connection, even with --dial-per-request.
        let channel = current
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .channel
            .clone();
        let mut health = HealthClient::new(channel);
        // The replica is not held while waiting, so dropping it ends this.
        drop(current);
        let outcome = match tokio::time::timeout(interval, health.check(request.clone())).await {
            Ok(Ok(answer)) => Ok(ServingStatus::try_from(answer.into_inner().status)
                .unwrap_or(ServingStatus::Unknown)),
            Ok(Err(status)) => Err(CallError::from_status(status, interval)),
            Err(_) => Err(CallError::Deadline(interval)),
        };
        let Some(current) = replica.upgrade() else {
            return;
        };
        current.record_check(outcome);
        let wait = current.next_check(interval);
        drop(current);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = check_now.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score after `outcomes` (true: failed), from a clean start.
    fn scored(outcomes: &[bool]) -> u32 {
        outcomes
            .iter()
            .fold(0, |score, failed| next_score(score, *failed))
    }

    #[test]
    fn a_replica_that_fails_at_once_loses_the_pick_to_a_busier_one_that_answers() {
        // Before: nothing in flight beats anything in flight.
        assert!(cost(0, 0) < cost(1, 0));
        // One failure: it now loses to a replica with two calls in flight.
        let once = scored(&[true]);
        assert!(cost(0, once) > cost(2, 0), "{}", cost(0, once));
        // Every recent call failed: it loses to up to 15 in flight, so a
        // busy good replica still lets it be tried (and ejected).
        let always = scored(&[true; 64]);
        assert!(cost(0, always) > cost(15, 0));
        assert!(cost(0, always) < cost(17, 0));
    }

    #[test]
    fn answers_and_passed_checks_win_a_failed_replica_its_share_back() {
        let failed = scored(&[true, true]);
        let recovered = scored(&[true, true, false, false, false, false, false, false]);
        assert!(recovered < failed / 4, "{recovered} after {failed}");
        // Two health checks passed (each halves it): near an even share.
        assert!(cost(0, failed / 4) <= cost(2, 0));
        // It never leaves 0..=1, however long a run.
        assert_eq!(scored(&[false; 8]), 0);
        assert!(scored(&[true; 1000]) <= SCORE_ONE);
    }
}
