//! Stopping a service: the signal, and a time limit on draining.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

/// A future that completes when the process receives SIGINT (Ctrl-C) or
/// SIGTERM (what `kill`, systemd and Kubernetes send).
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a service logs that it is running before it polls this, and
/// a SIGTERM sent right after that line (as an orchestrator or a test does)
/// would otherwise meet the default action and kill the process with no
/// drain and no exit code 0. Call it before announcing the service.
///
/// If a handler cannot be installed the error is logged and that signal is
/// simply not waited for: the other one still works, and failing to start
/// over it would be worse.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = interrupt => tracing::info!("received Ctrl-C, shutting down"),
                () = terminate => tracing::info!("received SIGTERM, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("received Ctrl-C, shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Installs a handler for `kind` now; the future completes at the next such
/// signal, or never if the handler could not be installed (which is logged).
#[cfg(unix)]
pub(crate) fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &'static str,
) -> impl Future<Output = ()> + Send + 'static {
    let installed = tokio::signal::unix::signal(kind);
    async move {
        match installed {
            Ok(mut signals) => {
                // None only when the runtime is shutting down.
                let _ = signals.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs `server` (a graceful-shutdown server future, built around the
/// signal it is handed) and gives it at most `limit` to finish once
/// `shutdown` has completed.
///
/// Graceful shutdown in hyper, axum and tonic stops accepting and then
/// waits for every open request, however long; a stuck client would keep
/// the process alive forever, and the orchestrator would kill it without
/// logs. Returns `Some` with the server's result, or `None` when the limit
/// ran out and the remaining connections were dropped.
pub async fn with_drain_limit<S, T>(
    shutdown: impl Future<Output = ()> + Send + 'static,
    limit: Duration,
    server: impl FnOnce(Box<dyn Future<Output = ()> + Send + Unpin>) -> S,
) -> Option<T>
where
    S: Future<Output = T>,
{
    let (started, drain) = oneshot::channel::<()>();
    let signal = Box::pin(async move {
        shutdown.await;
        let _ = started.send(());
    });
    let server = server(Box::new(signal));
    let limit_reached = async {
        // Err means the signal future was dropped unfired, which only
        // happens once the server has returned: never time it out then.
        if drain.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(limit).await;
    };
    tokio::select! {
        biased;
        result = server => Some(result),
        () = limit_reached => {
            tracing::warn!(?limit, "requests still in flight at the end of the drain time; closing them");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_that_finishes_draining_in_time_returns_its_result() {
        let result = with_drain_limit(async {}, Duration::from_secs(5), |signal| async move {
            signal.await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            "drained"
        })
        .await;
        assert_eq!(result, Some("drained"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_still_busy_at_the_limit_is_abandoned() {
        let started = tokio::time::Instant::now();
        let result = with_drain_limit(async {}, Duration::from_secs(5), |signal| async move {
            signal.await;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(result, None);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn there_is_no_limit_before_the_shutdown_signal() {
        let result = with_drain_limit(
            std::future::pending(),
            Duration::from_secs(1),
            |_signal| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "ran as long as it liked"
            },
        )
        .await;
        assert_eq!(result, Some("ran as long as it liked"));
    }
}
