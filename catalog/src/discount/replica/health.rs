//! A replica's health checks: the task that asks its standard health
//! service every `--discount-health-interval`, and what each answer does to
//! the replica's standing.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Replica;
use crate::discount::outcome::CallError;

/// Health checks refused (REFUSED_STREAM) in a row before the replica is
/// taken for unreachable: one may be a race at a connection's start.
const REFUSED_CHECKS: u8 = 2;

/// The service name discount reports its health under.
const HEALTH_SERVICE: &str = "ecommerce.Discount";

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

impl Replica {
    /// Takes the outcome of one health check.
    pub(super) fn record_check(&self, outcome: Result<ServingStatus, CallError>) {
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
            // load in catalog/tests/it/connection.rs.
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

    /// When the next health check is due: at once after `interval` when
    /// in rotation or not serving, or when the ejection ends.
    pub(super) fn next_check(&self, interval: Duration) -> Duration {
        let state = self.lock();
        match state.ejected_until {
            Some(until) if until > Instant::now() => until - Instant::now(),
            _ => interval,
        }
    }
}

/// Asks the replica's health service every `interval` (and when an
/// ejection ends, or at once when woken by `check_now`), each check
/// bounded by `interval`, until the replica is dropped.
pub(super) async fn check_health(
    replica: Weak<Replica>,
    check_now: Arc<Notify>,
    interval: Duration,
) {
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
