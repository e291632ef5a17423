//! The SQL both backends run, and what reads its rows: one text for
//! SQLite and PostgreSQL, so the two stores differ only where the
//! databases do (transactions, bulk inserts, notifications).

use ecommerce_proto::pb::{Customer, Product};
use futures_util::TryStreamExt;

use super::{DatabaseUrl, Row, StoreError};

/// The SQL both backends run: what SQLite and PostgreSQL both accept
/// (`$N` parameters included). Integers are read as `BIGINT`, which both
/// hand back as `i64`.
pub(super) struct Statements {
    pub(super) revision: &'static str,
    pub(super) next_revision: &'static str,
    pub(super) products_since: &'static str,
    pub(super) customers_since: &'static str,
    pub(super) insert_products: &'static str,
    pub(super) upsert_products: &'static str,
    pub(super) insert_customers: &'static str,
    pub(super) upsert_customers: &'static str,
    pub(super) applied_migrations: &'static str,
}

pub(super) const SQL: Statements = Statements {
    revision: "SELECT revision FROM revision WHERE only_row = 1",
    // The row lock this takes is held to the commit: imports queue here.
    next_revision: "UPDATE revision SET revision = revision + 1 WHERE only_row = 1 RETURNING revision",
    products_since: "SELECT CAST(id AS BIGINT), slug, description, CAST(price_in_cents AS BIGINT) \
         FROM products WHERE revision > $1 AND revision <= $2 ORDER BY id",
    customers_since: "SELECT CAST(id AS BIGINT), first_name, last_name \
         FROM customers WHERE revision > $1 AND revision <= $2 ORDER BY id",
    insert_products: "INSERT INTO products (id, slug, description, price_in_cents, revision) ",
    upsert_products: " ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, \
         description = excluded.description, price_in_cents = excluded.price_in_cents, \
         revision = excluded.revision",
    insert_customers: "INSERT INTO customers (id, first_name, last_name, revision) ",
    upsert_customers: " ON CONFLICT (id) DO UPDATE SET first_name = excluded.first_name, \
         last_name = excluded.last_name, revision = excluded.revision",
    applied_migrations: "SELECT version FROM _sqlx_migrations WHERE success",
};

/// Reads, inside the transaction `conn` is in, the store's revision and
/// the rows written after `since` up to it, the same way on both backends.
pub(super) async fn load_in<DB>(
    conn: &mut DB::Connection,
    since: i64,
    sink: &mut (dyn FnMut(Row) + Send),
) -> Result<i64, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let revision: i64 = sqlx::query_scalar(SQL.revision)
        .fetch_one(&mut *conn)
        .await?;
    let mut products = sqlx::query_as::<DB, (i64, String, String, i64)>(SQL.products_since)
        .bind(since)
        .bind(revision)
        .fetch(&mut *conn);
    while let Some(row) = products.try_next().await? {
        sink(Row::Product(product(row)));
    }
    drop(products);
    let mut customers = sqlx::query_as::<DB, (i64, String, String)>(SQL.customers_since)
        .bind(since)
        .bind(revision)
        .fetch(&mut *conn);
    while let Some(row) = customers.try_next().await? {
        sink(Row::Customer(customer(row)));
    }
    Ok(revision)
}

/// A product row as the store reads it. The schema keeps every integer
/// within `i32`, so the conversions cannot fail on data it accepted.
fn product((id, slug, description, price): (i64, String, String, i64)) -> Product {
    Product {
        id: i32::try_from(id).unwrap_or_default(),
        slug,
        description,
        price_in_cents: i32::try_from(price).unwrap_or_default(),
        discount_value: None,
    }
}

/// A customer row as the store reads it.
fn customer((id, first_name, last_name): (i64, String, String)) -> Customer {
    Customer {
        id: i32::try_from(id).unwrap_or_default(),
        first_name,
        last_name,
    }
}

/// The migrations applied to a database; none when it has no table of
/// them yet.
pub(super) fn applied(
    url: &DatabaseUrl,
    result: Result<Vec<i64>, sqlx::Error>,
) -> Result<Vec<i64>, StoreError> {
    match result {
        Ok(versions) => Ok(versions),
        // SQLite's "no such table" is its generic error 1; PostgreSQL's
        // undefined_table is 42P01.
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("1" | "42P01")) =>
        {
            Ok(Vec::new())
        }
        Err(source) => Err(StoreError::from_sqlx(url, source)),
    }
}
