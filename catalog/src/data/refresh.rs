//! The task that loads the data at start and keeps it fresh: the schema
//! and the seed first ([`crate::store::prepare`]), then a check of the
//! store's revision every `--data-refresh-interval` or at its
//! notification, and everything again every [`LOAD_WHOLE_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::Data;
use crate::store::{DatabaseUrl, Store, StoreError};

/// How often everything is loaded again, not only what changed: rows
/// deleted or restored by hand in the database, which no revision tells
/// of, are served for at most this long.
const LOAD_WHOLE_EVERY: Duration = Duration::from_secs(300);

/// Opens the data: prepares the store ([`crate::store::prepare`]: the
/// schema, and the seed in a new SQLite file), loads it, and keeps it
/// fresh every `interval` until the returned task is aborted.
///
/// # Errors
/// When the store cannot be used and waiting will not help (a damaged
/// file, a schema newer than this catalog), or when `retry` is false and
/// the first load fails. With `retry`, a store that cannot be reached
/// yet leaves the data not loaded while the task keeps trying.
pub async fn start(
    store: Arc<dyn Store>,
    url: DatabaseUrl,
    migrate: bool,
    interval: Duration,
    retry: bool,
) -> Result<(Data, JoinHandle<()>), StoreError> {
    let data = Data::empty();
    let first = prepare(&*store, &url, &data, migrate).await;
    let pending = match first {
        Ok(()) => false,
        Err(error) if retry && error.is_transient() => {
            data.failed(&error);
            true
        }
        Err(error) => return Err(error),
    };
    let task = tokio::spawn(keep_fresh(
        store,
        url,
        data.clone(),
        migrate,
        interval,
        pending,
    ));
    Ok((data, task))
}

/// The schema, the seed, the first load.
async fn prepare(
    store: &dyn Store,
    url: &DatabaseUrl,
    data: &Data,
    migrate: bool,
) -> Result<(), StoreError> {
    crate::store::prepare(store, url, migrate, crate::store::NewFile::Seeded).await?;
    data.refresh(store, true).await?;
    if data.product_count() == 0 {
        // Ready, and answering `[]`: say why, once, at start.
        tracing::warn!(
            database = %url,
            "the database holds no products, so /products lists none: load them with `catalog import products FILE` and the same --database-url (docs/data.md)"
        );
    }
    Ok(())
}

async fn keep_fresh(
    store: Arc<dyn Store>,
    url: DatabaseUrl,
    data: Data,
    migrate: bool,
    interval: Duration,
    mut pending: bool,
) {
    let changes = store.changes();
    let mut loaded_whole = Instant::now();
    loop {
        match &changes {
            Some(changed) => {
                let _ = tokio::time::timeout(interval, changed.notified()).await;
            }
            None => tokio::time::sleep(interval).await,
        }
        let everything = loaded_whole.elapsed() >= LOAD_WHOLE_EVERY;
        let result = if pending {
            prepare(&*store, &url, &data, migrate).await
        } else {
            data.refresh(&*store, everything).await
        };
        match result {
            Ok(()) => {
                pending = false;
                if everything {
                    loaded_whole = Instant::now();
                }
            }
            Err(error) => data.failed(&error),
        }
    }
}
