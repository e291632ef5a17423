//! The accept loop: a slot under `--max-connections` for each newcomer,
//! made by closing the oldest idle connection so a crowd of idle clients
//! cannot lock real ones out; each connection served in a task of its own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use common::quiet::Quiet;
use common::serve::activity::Activity;
use common::serve::connections::ConnectionTracker;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ServeOptions;
use super::connection::Connection;
use super::limits;

/// Accepts and serves connections until `signal`, then asks each to close
/// when its requests are done and waits for them. From `draining` (the
/// start of the shutdown delay) on, clients are asked to go: see
/// [`Connection::serve`].
pub(super) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    connections: ConnectionTracker,
    open: IntGauge,
    draining: watch::Receiver<bool>,
    signal: impl Future<Output = ()> + Unpin,
) {
    let http = Arc::new(limits::builder(options));
    let slots = Arc::new(Semaphore::new(options.max_connections));
    // Connections with no request in flight, oldest idle first.
    let idle = ConnectionTracker::new();
    let (stop, stopping) = watch::channel(false);
    let refusals = Arc::new(Quiet::default());
    let at_limit = Quiet::default();
    let mut tasks = JoinSet::new();
    let mut signal = signal;
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = common::serve::listener::accept(&listener) => accepted,
        };
        // At the limit, make room as nginx does: a client waiting for its
        // first answer counts for more than one idling between requests.
        // Logged once an interval: operators need to know the limit is
        // reached, not every connection it cost.
        let made_room = |closed: bool| {
            let what = if closed {
                "closed the oldest idle connection to make room"
            } else {
                "every connection has a request in flight; the newcomer waits"
            };
            if let Some(unlogged) = at_limit.should_log(what, Instant::now()) {
                tracing::warn!(%peer, max_connections = options.max_connections, since_last_line = unlogged + 1, "at the connection limit (--max-connections): {what}");
            }
        };
        let slot = tokio::select! {
            () = &mut signal => break,
            slot = idle.place_under(&slots, made_room) => slot,
        };
        let Some(slot) = slot else {
            break; // never closed
        };
        let registration = connections.register().holding(slot).counted(&open);
        let connection = Connection {
            http: Arc::clone(&http),
            app: app.clone(),
            activity: Activity::new(idle.clone(), CancellationToken::new()),
            http1: Arc::new(AtomicBool::new(true)),
            draining: draining.clone(),
            stopping: stopping.clone(),
            options,
            peer,
            refusals: Arc::clone(&refusals),
        };
        tasks.spawn(connection.serve(tcp, registration));
    }
    drop(listener);
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
}
