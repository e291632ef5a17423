//! Values rebuilt from files on demand (SIGHUP), without a restart.
//!
//! TLS material rotates: certificates expire, CAs are replaced. A
//! [`Reloadable`] holds the current value in a `watch` channel; readers take
//! the latest one each time they need it (for each new connection), so a
//! reload affects new connections only and connections already open finish
//! on what they started with. A reload that fails keeps the old value and
//! says why.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

type Loader<T> = dyn Fn() -> Result<T, String> + Send + Sync;

/// A value and the function that builds it again.
pub struct Reloadable<T> {
    current: watch::Sender<T>,
    load: Arc<Loader<T>>,
    what: &'static str,
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Builds the first value with `load`, which is kept for reloads.
    /// `what` names the value in log lines ("TLS identity").
    ///
    /// # Errors
    /// Whatever the first `load` returned: at start-up a broken file is fatal.
    pub fn new<E: Display>(
        what: &'static str,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let first = load()?;
        let load: Arc<Loader<T>> = Arc::new(move || load().map_err(|e| e.to_string()));
        Ok(Self {
            current: watch::Sender::new(first),
            load,
            what,
        })
    }

    /// A handle that always sees the latest value.
    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.current.subscribe()
    }

    /// The current value.
    pub fn current(&self) -> T
    where
        T: Clone,
    {
        self.current.borrow().clone()
    }

    /// Builds the value again. On success it replaces the current one; on
    /// failure the current one stays, and the reason is logged and returned.
    ///
    /// # Errors
    /// The loader's message, when the new value could not be built.
    pub fn reload(&self) -> Result<(), String> {
        match (self.load)() {
            Ok(value) => {
                self.current.send_replace(value);
                tracing::info!(what = self.what, "reloaded; new connections use it");
                Ok(())
            }
            Err(error) => {
                let error = one_line(&error);
                tracing::error!(what = self.what, %error, "reload failed; keeping the current one");
                Err(error)
            }
        }
    }
}

/// `text` on one line, its lines joined by `; `: a log record stays one
/// line for whatever reads the log line by line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A future that calls `reload` each time the process receives SIGHUP,
/// forever. The handler is installed when this is called (see
/// [`crate::shutdown_signal`] for why: SIGHUP's default action ends the
/// process). On platforms without SIGHUP it does nothing.
pub fn on_sighup(reload: impl Fn() + Send + 'static) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installed = signal(SignalKind::hangup());
        async move {
            let mut hangups = match installed {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGHUP; certificates will not be reloaded");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                tracing::info!("received SIGHUP, reloading TLS material");
                reload();
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        std::future::pending::<()>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_reload_replaces_the_value_and_a_failed_one_keeps_it() {
        let next = Arc::new(AtomicU32::new(1));
        let source = Arc::clone(&next);
        let value = Reloadable::new("number", move || match source.load(Ordering::SeqCst) {
            0 => Err("broken file"),
            n => Ok(n),
        })
        .unwrap();
        let seen = value.subscribe();
        assert_eq!(*seen.borrow(), 1);

        next.store(2, Ordering::SeqCst);
        assert_eq!(value.reload(), Ok(()));
        assert_eq!(*seen.borrow(), 2);

        next.store(0, Ordering::SeqCst);
        assert_eq!(value.reload(), Err("broken file".to_owned()));
        assert_eq!(*seen.borrow(), 2, "a failed reload must keep the old value");
    }

    #[test]
    fn a_multi_line_reason_is_logged_on_one_line() {
        let reason =
            "the TLS material cannot be used:\n  error: a.pem: expired\n  error: b.key: mismatch\n";
        assert_eq!(
            one_line(reason),
            "the TLS material cannot be used:; error: a.pem: expired; error: b.key: mismatch"
        );
    }

    #[test]
    fn a_broken_first_load_is_an_error() {
        let value = Reloadable::<u32>::new("number", || Err::<u32, _>("missing file"));
        assert_eq!(value.err(), Some("missing file"));
    }
}
