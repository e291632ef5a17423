//! The replicas of discount the catalog knows, kept up to date from the
//! resolver, and the choice of one for each call.
//!
//! The choice is the power of two choices over calls in flight: two
//! replicas in rotation drawn at random, the one with fewer calls in flight
//! wins. A replica that slows down piles up calls and so gets fewer new
//! ones, long before its health check or an ejection takes it out, and no
//! replica is ever chosen by all callers at once, as the least loaded one
//! would be. Failures count too ([`Replica::cost`]): a replica that fails at
//! once has fewer calls in flight than any other, and would otherwise win
//! most draws. (tower's `p2c::Balance` does the same but needs `&mut self`
//! for every call, so a shared client would put a lock or a queue in front
//! of it: the hop per call that tonic's own `Channel` already costs.)

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use common::reload::Reloadable;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use super::dial::Dialer;
use super::outcome::CallError;
use super::replica::{Replica, ReplicaState, Tier};
use super::resolve::Discovery;

/// The least time between two resolutions that a failure asked for.
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(500);

/// The most replicas `/readyz` lists one by one: its answer stays short
/// however many addresses a name resolves to.
const LISTED_REPLICAS: usize = 32;

/// The replicas, and what finds them.
#[derive(Debug)]
pub(crate) struct Pool {
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    dialer: Reloadable<Dialer>,
    /// Why targets have no address, for `/readyz`.
    unresolved: Mutex<Vec<String>>,
    /// Whether the targets have been resolved once.
    resolved: watch::Sender<bool>,
    /// Wakes the resolver early: a replica could not be reached.
    resolve_soon: Arc<Notify>,
    draws: AtomicU64,
    discovery: OnceLock<AbortHandle>,
}

impl Pool {
    /// A pool that resolves `discovery`'s targets at once and then every
    /// `interval`, dialling replicas with what `dialer` currently holds.
    pub(crate) fn start(
        dialer: Reloadable<Dialer>,
        discovery: Discovery,
        interval: Duration,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            replicas: RwLock::new(Arc::from(Vec::new())),
            dialer,
            unresolved: Mutex::new(Vec::new()),
            resolved: watch::Sender::new(false),
            resolve_soon: Arc::new(Notify::new()),
            draws: AtomicU64::new(0),
            discovery: OnceLock::new(),
        });
        let task = tokio::spawn(discover(
            Arc::downgrade(&pool),
            pool.resolve_soon.clone(),
            discovery,
            interval,
        ));
        let _ = pool.discovery.set(task.abort_handle());
        pool
    }

    fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        self.replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits, until `deadline` at most, for the first resolution.
    pub(crate) async fn resolved(&self, deadline: Instant) {
        if *self.resolved.borrow() {
            return;
        }
        let mut resolved = self.resolved.subscribe();
        let _ = tokio::time::timeout_at(deadline.into(), resolved.wait_for(|done| *done)).await;
    }

    /// A replica in rotation other than `except`, by the power of two
    /// choices; when none is, one that is not serving but answers (see
    /// [`Tier::Fallback`]); `None` when there is neither.
    pub(crate) fn pick(&self, except: Option<SocketAddr>) -> Option<Arc<Replica>> {
        let replicas = self.snapshot();
        let tier = |tier: Tier| {
            move |replica: &&Arc<Replica>| replica.tier() == tier && Some(replica.addr) != except
        };
        let mut eligible = tier(Tier::Rotation);
        let mut count = replicas.iter().filter(&mut eligible).count();
        if count == 0 {
            eligible = tier(Tier::Fallback);
            count = replicas.iter().filter(&mut eligible).count();
        }
        let nth = |n: usize| replicas.iter().filter(eligible).nth(n);
        match count {
            0 => None,
            1 => nth(0).cloned(),
            _ => {
                let draw = RandomState::new().hash_one(self.draws.fetch_add(1, Ordering::Relaxed));
                // Two different places among `count`.
                let first = usize::try_from(draw % count as u64).unwrap_or(0);
                let step = usize::try_from((draw >> 32) % (count as u64 - 1)).unwrap_or(0) + 1;
                let second = (first + step) % count;
                let (a, b) = (nth(first)?, nth(second)?);
                Some(if b.cost() < a.cost() { b } else { a }.clone())
            }
        }
    }

    /// Whether a replica other than `replica` is in rotation: ejecting
    /// `replica` for slowness is only worth it when one is.
    pub(crate) fn others_in_rotation(&self, replica: &Replica) -> bool {
        self.snapshot()
            .iter()
            .any(|other| other.addr != replica.addr && other.in_rotation())
    }

    /// Notes how a listing sent to `replica` ended (`None`: answered). A
    /// failing replica is ejected only while another is in rotation: a
    /// discount that is merely slow everywhere is still asked. One that
    /// could not be reached may have been replaced, so names are resolved
    /// again soon.
    pub(crate) fn record(&self, replica: &Replica, error: Option<&CallError>) {
        if replica.record_call(error, || self.others_in_rotation(replica)) {
            self.resolve_soon.notify_one();
        }
    }

    /// Replaces the replica set with one for `addrs`, keeping the replicas
    /// (connections and state) of addresses already known. Logs each
    /// replica that joins or leaves.
    fn update(&self, addrs: &BTreeSet<SocketAddr>, unresolved: Vec<String>) {
        *self
            .unresolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = unresolved;
        let current = self.snapshot();
        let known: BTreeSet<SocketAddr> = current.iter().map(|replica| replica.addr).collect();
        if &known != addrs {
            let dialer = self.dialer.current();
            let mut next = Vec::with_capacity(addrs.len());
            for &addr in addrs {
                if let Some(replica) = current.iter().find(|replica| replica.addr == addr) {
                    next.push(replica.clone());
                    continue;
                }
                match Replica::start(addr, &dialer) {
                    Ok(replica) => {
                        tracing::info!(replica = %addr, replicas = addrs.len(), "discount replica joined");
                        next.push(replica);
                    }
                    Err(error) => {
                        tracing::error!(replica = %addr, %error, "cannot use discount replica")
                    }
                }
            }
            for &gone in known.difference(addrs) {
                dialer.metrics.forget(gone);
                tracing::info!(replica = %gone, replicas = addrs.len(), "discount replica left");
            }
            *self
                .replicas
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Arc::from(next);
        }
        self.resolved.send_replace(true);
    }

    /// Re-reads the TLS material and, when it is usable, reconnects to
    /// every replica with it ([`Replica::redial`]: what is known about each
    /// replica stays); calls in flight finish on the old connections.
    ///
    /// # Errors
    /// Why the new material could not be used; nothing changed.
    pub(crate) fn reload(&self) -> Result<(), String> {
        self.dialer.reload()?;
        let dialer = self.dialer.current();
        for replica in self.snapshot().iter() {
            // The endpoint was built from the same settings at start, so
            // this fails only if the material did, which reload() checked.
            if let Err(error) = replica.redial(&dialer) {
                tracing::error!(replica = %replica.addr, %error, "cannot reconnect to discount replica with the new TLS material; keeping the old connection");
            }
        }
        Ok(())
    }

    /// Whether any replica is serving, and a short text listing each one
    /// and its state (no certificate details, no error chains: the
    /// log has those).
    pub(crate) fn readiness(&self) -> (bool, String) {
        let reports = self.reports();
        let serving = reports.iter().filter(|report| report.serving).count();
        let mut text = if reports.is_empty() {
            "no discount replica known\n".to_owned()
        } else {
            format!("{serving} of {} discount replicas serving\n", reports.len())
        };
        for report in reports.iter().take(LISTED_REPLICAS) {
            text.push_str(&format!("{} {}\n", report.addr, report.state));
        }
        if let Some(more) = reports
            .len()
            .checked_sub(LISTED_REPLICAS)
            .filter(|&n| n > 0)
        {
            text.push_str(&format!("and {more} more\n"));
        }
        for unresolved in self
            .unresolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            text.push_str(unresolved);
            text.push('\n');
        }
        (serving > 0, text)
    }

    /// What each replica is doing, for tests and the log.
    pub(crate) fn reports(&self) -> Vec<ReplicaState> {
        self.snapshot()
            .iter()
            .map(|replica| replica.report())
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(task) = self.discovery.get() {
            task.abort();
        }
    }
}

/// Resolves the targets now, then every `interval` or when woken (at most
/// every [`MIN_RESOLVE_GAP`]), and updates the pool, until it is dropped.
async fn discover(
    pool: Weak<Pool>,
    soon: Arc<Notify>,
    mut discovery: Discovery,
    interval: Duration,
) {
    loop {
        let started = Instant::now();
        let (addrs, unresolved) = discovery.resolve().await;
        match pool.upgrade() {
            Some(pool) => pool.update(&addrs, unresolved),
            None => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = soon.notified() => {
                tokio::time::sleep_until((started + MIN_RESOLVE_GAP).into()).await;
            }
        }
    }
}
