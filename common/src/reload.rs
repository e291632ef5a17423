//! Values rebuilt from files when they change or on SIGHUP, without a
//! restart.
//!
//! TLS material rotates: certificates expire, CAs are replaced. A
//! [`Reloadable`] holds the current value in a `watch` channel; readers take
//! the latest one each time they need it (for each new connection), so a
//! reload affects new connections only and connections already open finish
//! on what they started with. A reload that fails keeps the old value and
//! says why.

mod files;

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

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
    let mut joined = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if !joined.is_empty() {
            // After a heading ("...cannot be used:"), a space, not "; ".
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(line);
    }
    joined
}

/// A future that calls `reload` each time the process receives SIGHUP,
/// and each time `files` change (looked at every `interval`, see
/// `reload/files.rs`; zero: never), forever. The SIGHUP handler is installed when
/// this is called (see [`crate::shutdown_signal`] for why: SIGHUP's
/// default action ends the process). On platforms without SIGHUP only the
/// files are watched.
///
/// `reload` runs on Tokio's blocking pool, never on a runtime worker: it
/// reads and parses files, and a 10,000-certificate CA bundle held a worker
/// for tens of milliseconds at each SIGHUP, which every request queued on
/// that worker waited out (issue 25: p99 of `GET /products` from 2.7 to
/// 98 ms under 10 SIGHUPs a second). Requests are coalesced as
/// [`reload_when_asked`] says, so a burst of them cannot queue reloads.
pub fn on_sighup_or_change(
    files: Vec<PathBuf>,
    interval: Duration,
    reload: impl Fn() + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hangups = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .map_err(|error| tracing::error!(%error, "cannot listen for SIGHUP; certificates are reloaded only when their files change"))
            .ok()
    };
    async move {
        let asked = Notify::new();
        let listen = async {
            #[cfg(unix)]
            if let Some(mut hangups) = hangups {
                // A storm of signals is one line every few seconds, with
                // the count, not a line each.
                let quiet = crate::quiet::Quiet::default();
                while hangups.recv().await.is_some() {
                    let now = std::time::Instant::now();
                    if let Some(unlogged) = quiet.should_log("SIGHUP", now) {
                        tracing::info!(unlogged, "received SIGHUP, reloading TLS material");
                    }
                    asked.notify_one();
                }
            }
            std::future::pending::<()>().await;
        };
        // None of these ends while the runtime runs.
        tokio::select! {
            () = listen => {}
            () = files::on_change(files, interval, &asked) => {}
            () = reload_when_asked(&asked, reload) => {}
        }
    }
}

/// Runs `reload` on Tokio's blocking pool each time `asked` is notified,
/// one run at a time, forever.
///
/// Requests made while a run is in progress are merged into one more run
/// after it (a [`Notify`] keeps at most one permit): the files may have
/// changed after the running reload read them, so one more is needed, but
/// never more than one, however many SIGHUPs a script sends. A reload that
/// panics is logged and the next request is served.
pub async fn reload_when_asked(asked: &Notify, reload: impl Fn() + Send + Sync + 'static) {
    let reload = Arc::new(reload);
    loop {
        asked.notified().await;
        let reload = Arc::clone(&reload);
        if let Err(error) = tokio::task::spawn_blocking(move || reload()).await {
            tracing::error!(%error, "the reload of TLS material panicked; keeping the current one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::PoisonError;
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
            "the TLS material cannot be used: error: a.pem: expired; error: b.key: mismatch"
        );
    }

    /// A reload the test holds: each run reports its number and waits
    /// until released.
    struct HeldReload {
        runs: AtomicU32,
        running: AtomicU32,
        most_at_once: AtomicU32,
        started: tokio::sync::mpsc::UnboundedSender<(u32, u32)>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl HeldReload {
        fn run(&self) {
            let number = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            let _ = self.started.send((number, now));
            // Bounded, so that a reload run on the test's own thread (the
            // bug) ends and the test fails instead of hanging.
            let _ = self
                .release
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv_timeout(std::time::Duration::from_secs(10));
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    // A current_thread runtime: one thread polls every task, so a reload
    // run on it would stop the test's own task until the reload ended.
    // Paused time advances only when no task can run and no blocking task
    // is running, which is how the end tells "no more reloads" from "not
    // yet".
    #[tokio::test(start_paused = true)]
    async fn reloads_run_off_the_runtime_one_at_a_time_and_a_burst_of_requests_is_one_more() {
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = std::sync::mpsc::channel();
        let held = Arc::new(HeldReload {
            runs: AtomicU32::new(0),
            running: AtomicU32::new(0),
            most_at_once: AtomicU32::new(0),
            started,
            release: std::sync::Mutex::new(released),
        });
        let asked = Arc::new(Notify::new());
        let reloader = tokio::spawn({
            let (asked, held) = (Arc::clone(&asked), Arc::clone(&held));
            async move { reload_when_asked(&asked, move || held.run()).await }
        });

        asked.notify_one();
        assert_eq!(starts.recv().await, Some((1, 1)));
        // This task runs while the reload is held: it is not on this thread.
        assert_eq!(
            held.running.load(Ordering::SeqCst),
            1,
            "the reload ran on the runtime's thread: nothing else ran until it ended"
        );

        // Ten more requests while it runs: one more reload, after it.
        for _ in 0..10 {
            asked.notify_one();
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(starts.recv().await, Some((2, 1)));
        release.send(()).unwrap();
        // Time moves on only once nothing runs or waits to run.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            held.runs.load(Ordering::SeqCst),
            2,
            "the burst was queued, not merged"
        );
        assert_eq!(held.most_at_once.load(Ordering::SeqCst), 1);
        assert_eq!(held.running.load(Ordering::SeqCst), 0);
        reloader.abort();
    }

    #[test]
    fn a_broken_first_load_is_an_error() {
        let value = Reloadable::<u32>::new("number", || Err::<u32, _>("missing file"));
        assert_eq!(value.err(), Some("missing file"));
    }
}
