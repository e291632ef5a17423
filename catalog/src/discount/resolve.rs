//! Finding the replicas: every target of `--discount-host` turned into
//! socket addresses, again every `--discount-resolve-interval` and soon
//! after a replica could not be reached, so that replicas added behind a
//! name (a Compose service scaled up, a Kubernetes headless Service) are
//! found and removed ones are dropped.
//!
//! A name that fails to resolve keeps the addresses it last had: a DNS
//! server that hiccups must not empty the pool. The failure is logged once,
//! and its end once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::target::{DEFAULT_PORT, Targets};

/// The future of one resolution.
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name and port into socket addresses. The system's resolver
/// by default; tests hand in one whose answers they change.
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    /// Every address `host` has now, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver (`getaddrinfo`, through tokio): what
/// `/etc/hosts`, Docker's embedded DNS and Kubernetes' cluster DNS answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// The addresses of every target, and which names failed last time.
#[derive(Debug)]
pub(crate) struct Discovery {
    targets: Targets,
    resolver: Arc<dyn Resolve>,
    /// What each name resolved to when it last did.
    known: BTreeMap<String, Vec<SocketAddr>>,
    /// Names whose last resolution failed (logged once until they resolve).
    failing: BTreeSet<String>,
}

impl Discovery {
    pub(crate) fn new(targets: Targets, resolver: Arc<dyn Resolve>) -> Self {
        Self {
            targets,
            resolver,
            known: BTreeMap::new(),
            failing: BTreeSet::new(),
        }
    }

    /// Resolves every name once more (IP addresses need nothing) and
    /// returns the union of the addresses, sorted and without repeats; a
    /// name that fails keeps its last answer. Also returns why, for each
    /// target that has no address at all, for `/readyz`.
    pub(crate) async fn resolve(&mut self) -> (BTreeSet<SocketAddr>, Vec<String>) {
        let Self {
            targets,
            resolver,
            known,
            failing,
        } = self;
        let mut addrs = BTreeSet::new();
        let mut unresolved = Vec::new();
        for target in targets.iter() {
            if let Some(addr) = target.ip() {
                addrs.insert(addr);
                continue;
            }
            let name = target.to_string();
            let port = target.port().unwrap_or(DEFAULT_PORT);
            match resolver.resolve(target.host(), port).await {
                Ok(found) if !found.is_empty() => {
                    if failing.remove(&name) {
                        tracing::info!(target = %name, addresses = found.len(), "discount's name resolves again");
                    }
                    known.insert(name.clone(), found);
                }
                outcome => {
                    let error = match outcome {
                        Err(error) => error.to_string(),
                        Ok(_) => "no address".to_owned(),
                    };
                    let kept = known.get(&name).map_or(0, Vec::len);
                    if failing.insert(name.clone()) {
                        tracing::warn!(target = %name, %error, kept,
                            "cannot resolve discount's name; keeping the addresses it had (logged once until it resolves)");
                    }
                    if kept == 0 {
                        unresolved.push(format!("{name} does not resolve: {error}"));
                    }
                }
            }
            if let Some(found) = known.get(&name) {
                addrs.extend(found.iter().copied());
            }
        }
        (addrs, unresolved)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a table the test changes; a missing name is an error.
    #[derive(Debug, Default)]
    struct Table(Mutex<BTreeMap<String, Vec<SocketAddr>>>);

    impl Resolve for Table {
        fn resolve(&self, host: &str, _port: u16) -> Resolving {
            let answer = self.0.lock().unwrap().get(host).cloned();
            Box::pin(async move { answer.ok_or_else(|| io::Error::other("NXDOMAIN")) })
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn names_and_addresses_make_one_set_and_a_failing_name_keeps_its_last_answer() {
        let table = Arc::new(Table::default());
        table.0.lock().unwrap().insert(
            "discount".into(),
            vec![addr("10.0.0.2:1"), addr("10.0.0.1:1")],
        );
        let targets: Targets = "discount:1,10.0.0.9:2,10.0.0.1:1".parse().unwrap();
        let mut discovery = Discovery::new(targets, table.clone());
        let (addrs, unresolved) = discovery.resolve().await;
        let expected = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.9:2"].map(addr);
        assert_eq!(addrs.into_iter().collect::<Vec<_>>(), expected);
        assert!(unresolved.is_empty());

        // The DNS server fails: the last answer stays.
        table.0.lock().unwrap().clear();
        let (addrs, unresolved) = discovery.resolve().await;
        assert_eq!(addrs.len(), 3);
        assert!(unresolved.is_empty(), "{unresolved:?}");

        // It answers again, with a replica fewer.
        table
            .0
            .lock()
            .unwrap()
            .insert("discount".into(), vec![addr("10.0.0.2:1")]);
        let (addrs, _) = discovery.resolve().await;
        let expected = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.9:2"].map(addr);
        assert_eq!(
            addrs.into_iter().collect::<Vec<_>>(),
            expected,
            "10.0.0.1 stays: it is also listed by address"
        );
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_is_reported() {
        let targets: Targets = "nowhere:1".parse().unwrap();
        let mut discovery = Discovery::new(targets, Arc::new(Table::default()));
        let (addrs, unresolved) = discovery.resolve().await;
        assert!(addrs.is_empty());
        assert_eq!(unresolved, ["nowhere:1 does not resolve: NXDOMAIN"]);
    }
}
