//! Where the catalog's products and customers are kept: a database behind
//! [`Store`], SQLite embedded by default ([`sqlite`]), PostgreSQL for
//! several catalog replicas on one source of truth ([`postgres`]).
//!
//! The request path never reads the store: the catalog keeps what it
//! holds in memory and asks only for rows newer than the revision it has.
//! Every import takes the next revision, stamps the rows it writes with it,
//! and commits as one transaction; it updates the one-row `revision` table
//! first, whose row lock makes imports take their revisions in the order
//! they commit, so "the rows after revision R" never skips one.

mod database_url;
pub mod import;
mod postgres;
pub mod seed;
mod sql;
mod sqlite;

use std::fmt;
use std::sync::Arc;

use ecommerce_proto::pb::{Customer, Product};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

pub use database_url::{DatabaseUrl, DatabaseUrlFileParser, DatabaseUrlParser};

/// The migrations, embedded in the binary. One set for both backends: the
/// SQL is what SQLite and PostgreSQL both accept.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One row the store hands back while loading.
#[derive(Debug)]
pub enum Row {
    /// A product, added or changed.
    Product(Product),
    /// A customer, added or changed.
    Customer(Customer),
}

/// The products and customers of the catalog, in a database.
///
/// Methods return boxed futures so the catalog can hold any backend as
/// `Arc<dyn Store>`, and unit tests a fake one.
pub trait Store: Send + Sync + fmt::Debug {
    /// The revision of the data: it changes when an import commits.
    /// Cheap, so it can be asked often.
    fn revision(&self) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Hands `sink` every product and customer written after revision
    /// `since` (0: all of them), as of one consistent view, and returns the
    /// revision that view is at.
    fn load<'a>(
        &'a self,
        since: i64,
        sink: &'a mut (dyn FnMut(Row) + Send),
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Writes `products` (inserted, or updated by id) in one transaction,
    /// under a new revision, which it returns.
    fn import_products(&self, products: Vec<Product>) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Writes `customers` (inserted, or updated by id) in one
    /// transaction, under a new revision, which it returns.
    fn import_customers(&self, customers: Vec<Customer>) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Applies the migrations this binary has and the database lacks.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The versions of the migrations applied to the database; none when
    /// it has no schema yet.
    fn applied_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>, StoreError>>;

    /// Closes the connections, having written everything to the database
    /// itself: a SQLite file is whole without its `-wal` file after this.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Notified when the data may have changed, sooner than a poll would
    /// tell (PostgreSQL's `LISTEN`); `None` when the backend only polls.
    fn changes(&self) -> Option<Arc<Notify>>;
}

/// What went wrong with the store, said so that an operator can act.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("{url}: {source}")]
    Database {
        /// Where, without the password.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The file is not a SQLite database, or is damaged.
    #[error(
        "{path} is not a SQLite database or is damaged ({source}); move it away to start afresh with the seed's data, or point --database-url at another file"
    )]
    NotADatabase {
        /// The file.
        path: String,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite file cannot be opened where it is.
    #[error(
        "cannot open {path} ({source}): its directory must exist and be writable by the catalog, which keeps the -wal and -shm files beside it"
    )]
    CannotOpen {
        /// The file.
        path: String,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite file was replaced or removed while open.
    #[error(
        "{path} was replaced or removed while the catalog had it open; the catalog serves what it loaded from the old file: restart it to serve the file now at that path"
    )]
    Replaced {
        /// The file.
        path: String,
    },
    /// The database was migrated by a newer catalog.
    #[error(
        "{url} has schema version {found}, newer than this catalog knows (up to {known}): run the newer catalog, or restore a database of this version"
    )]
    SchemaTooNew {
        /// Where, without the password.
        url: String,
        /// The newest migration applied to the database.
        found: i64,
        /// The newest migration this binary has.
        known: i64,
    },
    /// `--no-migrate`, and the database lacks a migration.
    #[error(
        "{url} lacks migration {missing} of this catalog: run `catalog migrate` with the same --database-url, or start the catalog without --no-migrate"
    )]
    NotMigrated {
        /// Where, without the password.
        url: String,
        /// The first migration the database lacks.
        missing: i64,
    },
    /// An import broke a rule the database keeps (a slug already used by
    /// another product).
    #[error("the database refused the import, so nothing was written: {0}")]
    Refused(String),
}

impl StoreError {
    /// An error of the driver, for the database at `url`: a broken rule
    /// (a slug another product has) becomes [`StoreError::Refused`].
    pub(crate) fn from_sqlx(url: &DatabaseUrl, source: sqlx::Error) -> Self {
        match &source {
            sqlx::Error::Database(error) if error.is_unique_violation() => Self::Refused(format!(
                "{} (a slug in the file is another product's already; every slug names one product)",
                error.message()
            )),
            sqlx::Error::Database(error) if error.is_check_violation() => {
                Self::Refused(error.message().to_owned())
            }
            _ => Self::Database {
                url: url.to_string(),
                source,
            },
        }
    }

    /// Whether retrying later may help: the database is down or busy, not
    /// wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Database {
                source: sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_),
                ..
            }
        )
    }
}

/// Opens the store `url` names: SQLite is created when missing (and then
/// holds the seed's data), PostgreSQL connected lazily. Migrates unless
/// `migrate` is false, in which case the schema is checked instead.
///
/// # Errors
/// A [`StoreError`] that names the database and the fix. PostgreSQL that
/// cannot be reached is not an error here: its pool connects when first
/// used, so the catalog can start and keep trying.
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Sqlite(options) => Arc::new(sqlite::SqliteStore::open(url, options).await?),
        DatabaseUrl::Postgres(options) => Arc::new(postgres::PgStore::open(url, options)),
    })
}

/// What a SQLite database that had no schema is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewFile {
    /// The seed's products and customers: the service's own file, so that
    /// the seed's two terminals answer as they did with no set-up.
    Seeded,
    /// Nothing: a file that `catalog import` or `catalog migrate` makes
    /// holds only what the operator brings.
    Empty,
}

/// Makes the store ready to be read: applies the migrations (or, with
/// `migrate` false, checks that they were applied), and fills a SQLite
/// database that had no schema as `new_file` says.
///
/// # Errors
/// [`StoreError::SchemaTooNew`], [`StoreError::NotMigrated`], or the
/// database's own error.
pub async fn prepare(
    store: &dyn Store,
    url: &DatabaseUrl,
    migrate: bool,
    new_file: NewFile,
) -> Result<(), StoreError> {
    let applied = store.applied_migrations().await?;
    if !migrate {
        return check_applied(url, &applied);
    }
    store.migrate().await?;
    if applied.is_empty() && url.sqlite_path().is_some() && new_file == NewFile::Seeded {
        store.import_products(seed::products()).await?;
        store.import_customers(seed::customers()).await?;
        tracing::info!(database = %url, "created the database, with the seed's products and customers");
    }
    Ok(())
}

/// Checks the migrations applied to a database (as `_sqlx_migrations`
/// lists them) against [`MIGRATOR`]'s.
pub(crate) fn check_applied(url: &DatabaseUrl, applied: &[i64]) -> Result<(), StoreError> {
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(&found) = applied.iter().find(|v| !MIGRATOR.version_exists(**v)) {
        return Err(StoreError::SchemaTooNew {
            url: url.to_string(),
            found: applied.iter().copied().max().unwrap_or(found),
            known,
        });
    }
    match MIGRATOR.iter().find(|m| !applied.contains(&m.version)) {
        Some(missing) => Err(StoreError::NotMigrated {
            url: url.to_string(),
            missing: missing.version,
        }),
        None => Ok(()),
    }
}

/// A migration error, turned into what the operator can do about it.
fn migrate_error(url: &DatabaseUrl, error: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match error {
        MigrateError::VersionMissing(found) => StoreError::SchemaTooNew {
            url: url.to_string(),
            found,
            known,
        },
        MigrateError::Execute(source) => StoreError::Database {
            url: url.to_string(),
            source,
        },
        other => StoreError::Refused(format!("migrating {url}: {other}")),
    }
}
