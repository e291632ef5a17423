//! The shared store: PostgreSQL, for several catalog replicas on one
//! source of truth. Not seeded: operators bring their data with
//! `catalog import`. Every import sends `NOTIFY catalog_data` as it
//! commits, and each replica `LISTEN`s, so an import is served everywhere
//! at once rather than at the next poll.

use std::sync::Arc;
use std::time::Duration;

use ecommerce_proto::pb::{Customer, Product};
use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::sql::{self, SQL};
use super::{DatabaseUrl, Row, Store, StoreError};

/// The channel imports notify and replicas listen on.
const CHANNEL: &str = "catalog_data";

/// Rows per INSERT: each is one array per column, so the count is not
/// bounded by PostgreSQL's 65,535 parameters; this bounds the memory.
const ROWS_PER_INSERT: usize = 50_000;

/// How long to wait before listening again after the connection was lost.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How long the pool keeps trying to connect before it gives up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The store in PostgreSQL.
#[derive(Debug)]
pub(super) struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    url: DatabaseUrl,
    changed: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl PgStore {
    /// A pool that connects when first used, so a database that is down
    /// does not stop the catalog from starting; and the listener, which
    /// keeps trying.
    pub(super) fn open(url: &DatabaseUrl, options: &PgConnectOptions) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let changed = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), Arc::clone(&changed)));
        Self {
            pool,
            options: options.clone(),
            url: url.clone(),
            changed,
            listener,
        }
    }

    fn error(&self, source: sqlx::Error) -> StoreError {
        StoreError::from_sqlx(&self.url, source)
    }

    /// A connection from the pool. When the pool cannot connect, sqlx
    /// answers only "pool timed out" and drops the reason
    /// (launchbadge/sqlx#744); one connection attempt of our own finds it
    /// (refused, no such host, a wrong password), for the log and
    /// `/readyz`.
    async fn connection(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        match self.pool.acquire().await {
            Ok(connection) => Ok(connection),
            Err(sqlx::Error::PoolTimedOut) => {
                let attempt = PgConnection::connect_with(&self.options);
                Err(match tokio::time::timeout(ACQUIRE_TIMEOUT, attempt).await {
                    Ok(Err(cause)) => self.error(cause),
                    Ok(Ok(connection)) => {
                        // It connects: the pool was only busy, or the
                        // database is back for the next call.
                        let _ = connection.close().await;
                        self.error(sqlx::Error::PoolTimedOut)
                    }
                    Err(_) => self.error(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {ACQUIRE_TIMEOUT:?}"),
                    ))),
                })
            }
            Err(error) => Err(self.error(error)),
        }
    }

    /// One import: the next revision, `write` writing the rows under it,
    /// the notification, one commit.
    async fn import(
        &self,
        write: impl AsyncFnOnce(&mut PgConnection, i64) -> Result<(), sqlx::Error>,
    ) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        let mut tx = connection.begin().await.map_err(|e| self.error(e))?;
        let revision: i64 = sqlx::query_scalar(SQL.next_revision)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        write(&mut tx, revision).await.map_err(|e| self.error(e))?;
        // Delivered to the listening replicas when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(revision)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Wakes `changed` on every notification, and once after each
/// (re)connection, since notifications sent while it was away are lost.
/// Failures are not logged here: the refresh that follows reports the
/// database's state.
async fn listen(pool: PgPool, changed: Arc<Notify>) {
    loop {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await
            && listener.listen(CHANNEL).await.is_ok()
        {
            changed.notify_one();
            while listener.try_recv().await.is_ok_and(|n| n.is_some()) {
                changed.notify_one();
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

impl Store for PgStore {
    fn revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            sqlx::query_scalar(SQL.revision)
                .fetch_one(&mut *self.connection().await?)
                .await
                .map_err(|e| self.error(e))
        })
    }

    fn load<'a>(
        &'a self,
        since: i64,
        sink: &'a mut (dyn FnMut(Row) + Send),
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let mut tx = connection.begin().await.map_err(|e| self.error(e))?;
            // One snapshot for the revision and the rows read after it.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            let revision = sql::load_in::<Postgres>(&mut tx, since, sink)
                .await
                .map_err(|e| self.error(e))?;
            tx.commit().await.map_err(|e| self.error(e))?;
            Ok(revision)
        })
    }

    fn import_products(&self, products: Vec<Product>) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.import(async move |tx, revision| {
            let statement = format!(
                "{}SELECT t.*, $5 FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::int4[]) \
                 AS t(id, slug, description, price_in_cents){}",
                SQL.insert_products, SQL.upsert_products
            );
            for chunk in products.chunks(ROWS_PER_INSERT) {
                sqlx::query(&statement)
                    .bind(chunk.iter().map(|p| p.id).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|p| p.slug.as_str()).collect::<Vec<_>>())
                    .bind(
                        chunk
                            .iter()
                            .map(|p| p.description.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(chunk.iter().map(|p| p.price_in_cents).collect::<Vec<_>>())
                    .bind(revision)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }))
    }

    fn import_customers(&self, customers: Vec<Customer>) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.import(async move |tx, revision| {
            let statement = format!(
                "{}SELECT t.*, $4 FROM UNNEST($1::int4[], $2::text[], $3::text[]) \
                 AS t(id, first_name, last_name){}",
                SQL.insert_customers, SQL.upsert_customers
            );
            for chunk in customers.chunks(ROWS_PER_INSERT) {
                sqlx::query(&statement)
                    .bind(chunk.iter().map(|c| c.id).collect::<Vec<_>>())
                    .bind(
                        chunk
                            .iter()
                            .map(|c| c.first_name.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        chunk
                            .iter()
                            .map(|c| c.last_name.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(revision)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }))
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // sqlx holds an advisory lock while it migrates: replicas
            // starting together apply each migration once.
            // A connection first, for the cause when there is none.
            drop(self.connection().await?);
            super::MIGRATOR
                .run(&self.pool)
                .await
                .map_err(|e| super::migrate_error(&self.url, e))
        })
    }

    fn applied_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            sql::applied(
                &self.url,
                sqlx::query_scalar(SQL.applied_migrations)
                    .fetch_all(&mut *self.connection().await?)
                    .await,
            )
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }

    fn changes(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.changed))
    }
}
