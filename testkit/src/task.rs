//! A server running in a task of the test process, and the one way to stop
//! it and check that it stopped cleanly.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{HANG, SetupResult};

/// A server task with its shutdown signal. Dropping it sends the signal.
#[derive(Debug)]
pub struct ServerTask<E> {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Display + Send + 'static> ServerTask<E> {
    /// Spawns the future `serve` builds around its shutdown signal.
    pub fn spawn<F>(serve: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Shutdown(stopped);
        Self {
            stop: Some(stop),
            task: Some(tokio::spawn(serve(shutdown))),
        }
    }

    /// Sends the shutdown signal, as SIGTERM would, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to stop. `Ok` only if it returned `Ok` within
    /// `limit`: still running, panicked, or failed are each an `Err` that
    /// says which, so a crashed server never passes for a stopped one.
    ///
    /// # Errors
    /// What went wrong, in words.
    pub async fn stopped_within(mut self, limit: Duration) -> Result<(), String> {
        let Some(task) = self.task.take() else {
            return Err("the server was already waited for".to_owned());
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("the server failed: {error}")),
            Ok(Err(join)) => Err(format!("the server task did not finish: {join}")),
            Err(_) => {
                // Not left running into the next test.
                abort.abort();
                Err(format!("the server was still running after {limit:?}"))
            }
        }
    }

    /// Stops the server and waits until it has, so that its port is closed
    /// when this returns.
    ///
    /// # Errors
    /// As [`ServerTask::stopped_within`], with [`HANG`] as the limit.
    pub async fn stop(mut self) -> SetupResult<()> {
        self.begin_stop();
        Ok(self.stopped_within(HANG).await?)
    }
}

impl<E> Drop for ServerTask<E> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Completes when the test asks the server to stop (or drops its handle).
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Shutdown {
    /// Waits for the signal.
    pub async fn wait(self) {
        // Err: the handle was dropped, which also means stop.
        let _ = self.0.await;
    }
}
