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
//! when calls to it keep failing ([`ejection::EJECT_AFTER`] of its last
//! [`ejection::RECENT_CALLS`], in a row or not: past their deadline, with any status
//! but OK, UNIMPLEMENTED included, with the stream refused, or with an
//! unusable answer) while another replica is in rotation. Only a call caught by the replica retiring its connection
//! (GOAWAY) is not held against it.
//!
//! Before that, every failure costs it in the pick: its *failure score*
//! (an average over its last calls, 1 when all failed) multiplies its load
//! by up to [`score::FAILURE_PENALTY`] + 1, so a replica that fails at once, and
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

mod ejection;
mod health;
mod score;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};

use super::backoff::Backoff;
use super::dial::Dialer;
use crate::error::StartupError;
use crate::metrics::{ClientMetrics, ReplicaSeries};
use health::{Health, check_health};
use score::{cost, next_score};

/// One replica of discount.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    /// Replaced on a reload; what is known about the replica is kept.
    connection: RwLock<Connection>,
    dial_per_request: bool,
    /// Listings in flight: the load that the power of two choices compares.
    pending: AtomicUsize,
    /// How its recent calls went, 0 (all answered) to [`score::SCORE_ONE`] (all
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
    /// Its last [`ejection::RECENT_CALLS`] calls, the newest in the lowest bit: 1
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
    /// by the failure score (by [`score::FAILURE_PENALTY`] + 1 when every recent
    /// call failed). In [`score::SCORE_ONE`]ths.
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
