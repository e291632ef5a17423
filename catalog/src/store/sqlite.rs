//! The embedded store: one SQLite file, created with the seed's products
//! and customers when missing, in WAL mode so the catalog reads while an
//! import (another process: `catalog import`) writes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ecommerce_proto::pb::{Customer, Product};
use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use super::sql::{self, SQL};
use super::{DatabaseUrl, Row, Store, StoreError};

/// Rows per INSERT: 4 parameters each stays far below SQLite's 32,766.
const ROWS_PER_INSERT: usize = 1_000;

/// The store in a SQLite file.
#[derive(Debug)]
pub(super) struct SqliteStore {
    pool: SqlitePool,
    url: DatabaseUrl,
    /// The file, and its inode when opened: a file moved into its place
    /// (a restore) is another inode, which the open pool would never see.
    path: PathBuf,
    inode: Option<u64>,
}

impl SqliteStore {
    /// Opens (creating when missing) the file `options` names. A file that
    /// is not a SQLite database fails here, not at the first request.
    pub(super) async fn open(
        url: &DatabaseUrl,
        options: &SqliteConnectOptions,
    ) -> Result<Self, StoreError> {
        let file = options.get_filename().to_owned();
        let path = file.display().to_string();
        let options = options
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An import holds the write lock for its whole transaction.
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| not_a_database(&path, source))?;
        // Connecting reads nothing; this does, so a damaged file fails now.
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&pool)
            .await
            .map_err(|source| not_a_database(&path, source))?;
        Ok(Self {
            pool,
            url: url.clone(),
            inode: inode(&file),
            path: file,
        })
    }

    fn error(&self, source: sqlx::Error) -> StoreError {
        StoreError::from_sqlx(&self.url, source)
    }

    /// One import: the next revision, `write` writing the rows under it,
    /// one commit.
    async fn import(
        &self,
        write: impl AsyncFnOnce(&mut SqliteConnection, i64) -> Result<(), sqlx::Error>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let revision: i64 = sqlx::query_scalar(SQL.next_revision)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        write(&mut tx, revision).await.map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(revision)
    }
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// SQLite's "not a database" and "corrupt", and "cannot open" and "read
/// only", name the file and the fix; anything else is a database error.
fn not_a_database(path: &str, source: sqlx::Error) -> StoreError {
    let code = match &source {
        sqlx::Error::Database(error) => error.code().map(|c| c.into_owned()),
        _ => None,
    };
    // Extended result codes keep the primary code in their low byte.
    let primary = code
        .as_deref()
        .and_then(|c| c.parse::<u32>().ok())
        .map(|c| c & 0xff);
    match primary {
        Some(26 | 11) => StoreError::NotADatabase {
            path: path.to_owned(),
            source,
        },
        Some(14 | 8) => StoreError::CannotOpen {
            path: path.to_owned(),
            source,
        },
        _ => StoreError::Database {
            url: format!("sqlite://{path}"),
            source,
        },
    }
}

impl Store for SqliteStore {
    fn revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            if inode(&self.path) != self.inode {
                return Err(StoreError::Replaced {
                    path: self.path.display().to_string(),
                });
            }
            sqlx::query_scalar(SQL.revision)
                .fetch_one(&self.pool)
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
            // One read transaction: in WAL mode, one consistent view.
            let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
            let revision = sql::load_in::<Sqlite>(&mut tx, since, sink)
                .await
                .map_err(|e| self.error(e))?;
            tx.commit().await.map_err(|e| self.error(e))?;
            Ok(revision)
        })
    }

    fn import_products(&self, products: Vec<Product>) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.import(async move |tx, revision| {
            for chunk in products.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(SQL.insert_products);
                insert.push_values(chunk, |mut row, p| {
                    row.push_bind(p.id)
                        .push_bind(&p.slug)
                        .push_bind(&p.description)
                        .push_bind(p.price_in_cents)
                        .push_bind(revision);
                });
                insert
                    .push(SQL.upsert_products)
                    .build()
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }))
    }

    fn import_customers(&self, customers: Vec<Customer>) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.import(async move |tx, revision| {
            for chunk in customers.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Sqlite>::new(SQL.insert_customers);
                insert.push_values(chunk, |mut row, c| {
                    row.push_bind(c.id)
                        .push_bind(&c.first_name)
                        .push_bind(&c.last_name)
                        .push_bind(revision);
                });
                insert
                    .push(SQL.upsert_customers)
                    .build()
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }))
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Err(error) = super::MIGRATOR.run(&self.pool).await else {
                return Ok(());
            };
            // sqlx takes no lock on SQLite: another process starting on the
            // same new file may have migrated it first, which is as good.
            let applied = self.applied_migrations().await?;
            match super::check_applied(&self.url, &applied) {
                Ok(()) => Ok(()),
                Err(_) => Err(super::migrate_error(&self.url, error)),
            }
        })
    }

    fn applied_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            sql::applied(
                &self.url,
                sqlx::query_scalar(SQL.applied_migrations)
                    .fetch_all(&self.pool)
                    .await,
            )
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A failed checkpoint leaves the rows in the -wal file, where
            // SQLite still finds them: nothing is lost.
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
            self.pool.close().await;
        })
    }

    fn changes(&self) -> Option<Arc<Notify>> {
        None
    }
}
