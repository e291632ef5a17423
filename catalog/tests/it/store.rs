//! The store's contract, the same tests against both backends: a real
//! SQLite file and a real PostgreSQL server (a throw-away cluster, see
//! `testkit::postgres`).

use std::sync::Arc;

use catalog::store::{self, DatabaseUrl, Row, Store, StoreError};
use ecommerce_proto::pb::{Customer, Product};
use testkit::{Postgres, SetupResult};

/// A backend under test, and what keeps it alive.
struct Backend {
    url: DatabaseUrl,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<Postgres>,
}

/// A new SQLite file, and a new PostgreSQL cluster when installed.
fn backends() -> SetupResult<Vec<Backend>> {
    let dir = tempfile::tempdir()?;
    let sqlite = DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("c.db").display()))?;
    let mut all = vec![Backend {
        url: sqlite,
        _sqlite: Some(dir),
        _postgres: None,
    }];
    if let Some(postgres) = Postgres::start()? {
        all.push(Backend {
            url: DatabaseUrl::parse(&postgres.url(None))?,
            _sqlite: None,
            _postgres: Some(postgres),
        });
    }
    Ok(all)
}

pub(crate) fn product(id: i32, slug: &str, price_in_cents: i32) -> Product {
    Product {
        id,
        slug: slug.to_owned(),
        description: format!("about {slug}"),
        price_in_cents,
        discount_value: None,
    }
}

async fn everything(
    store: &dyn Store,
    since: i64,
) -> SetupResult<(i64, Vec<Product>, Vec<Customer>)> {
    let (mut products, mut customers) = (Vec::new(), Vec::new());
    let revision = store
        .load(since, &mut |row| match row {
            Row::Product(p) => products.push(p),
            Row::Customer(c) => customers.push(c),
        })
        .await?;
    Ok((revision, products, customers))
}

#[tokio::test]
async fn a_new_database_is_migrated_and_only_sqlite_is_seeded() -> SetupResult<()> {
    for backend in backends()? {
        let store = store::open(&backend.url).await?;
        store::prepare(&*store, &backend.url, true, store::NewFile::Seeded).await?;
        // Twice: nothing more to do, nothing seeded again.
        store::prepare(&*store, &backend.url, true, store::NewFile::Seeded).await?;
        assert_eq!(
            store.applied_migrations().await?,
            vec![1],
            "{}",
            backend.url
        );
        let (_, products, customers) = everything(&*store, 0).await?;
        let seeded = backend.url.sqlite_path().is_some();
        let expected = if seeded {
            catalog::store::seed::products()
        } else {
            Vec::new()
        };
        assert_eq!(products, expected, "{}", backend.url);
        assert_eq!(
            customers.len(),
            if seeded { 2 } else { 0 },
            "{}",
            backend.url
        );
    }
    Ok(())
}

#[tokio::test]
async fn imports_upsert_by_id_and_a_load_since_a_revision_has_only_what_changed() -> SetupResult<()>
{
    for backend in backends()? {
        let store = store::open(&backend.url).await?;
        store::prepare(&*store, &backend.url, true, store::NewFile::Seeded).await?;
        let before = store.revision().await?;
        let first = store
            .import_products(vec![product(10, "ten", 1000), product(11, "eleven", 1100)])
            .await?;
        assert!(first > before, "{}", backend.url);
        let second = store
            .import_products(vec![
                product(11, "eleven-b", 1111),
                product(12, "twelve", 0),
            ])
            .await?;
        assert_eq!(store.revision().await?, second);
        let (revision, changed, _) = everything(&*store, first).await?;
        assert_eq!(revision, second);
        assert_eq!(
            changed,
            vec![product(11, "eleven-b", 1111), product(12, "twelve", 0)]
        );
        let (_, all, _) = everything(&*store, 0).await?;
        let ours: Vec<_> = all.into_iter().filter(|p| p.id >= 10).collect();
        assert_eq!(
            ours,
            vec![
                product(10, "ten", 1000),
                product(11, "eleven-b", 1111),
                product(12, "twelve", 0)
            ]
        );
        store
            .import_customers(vec![Customer {
                id: 7,
                first_name: "Arya".to_owned(),
                last_name: "Stark".to_owned(),
            }])
            .await?;
        let (_, _, customers) = everything(&*store, second).await?;
        assert_eq!(customers.iter().map(|c| c.id).collect::<Vec<_>>(), vec![7]);
    }
    Ok(())
}

#[tokio::test]
async fn an_import_the_database_refuses_writes_nothing() -> SetupResult<()> {
    for backend in backends()? {
        let store = store::open(&backend.url).await?;
        store::prepare(&*store, &backend.url, true, store::NewFile::Seeded).await?;
        store.import_products(vec![product(20, "taken", 1)]).await?;
        let before = everything(&*store, 0).await?;
        // 21 is fine; 22 takes product 20's slug: the whole import fails.
        let refused = store
            .import_products(vec![product(21, "fine", 1), product(22, "taken", 1)])
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Refused(why)) if why.contains("slug")),
            "{}: {refused:?}",
            backend.url
        );
        assert_eq!(everything(&*store, 0).await?, before, "{}", backend.url);
    }
    Ok(())
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_or_not_migrated_is_refused_with_the_fix() -> SetupResult<()>
{
    for backend in backends()? {
        let store = store::open(&backend.url).await?;
        let unmigrated = store::prepare(&*store, &backend.url, false, store::NewFile::Seeded).await;
        let message = unmigrated
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            message.contains("catalog migrate"),
            "{}: {message}",
            backend.url
        );

        store::prepare(&*store, &backend.url, true, store::NewFile::Seeded).await?;
        let url = backend.url.to_string();
        let raw: Arc<str> = Arc::from(url.as_str());
        newer_migration(&backend).await?;
        for migrate in [true, false] {
            let refused =
                store::prepare(&*store, &backend.url, migrate, store::NewFile::Seeded).await;
            let message = refused.map_err(|e| e.to_string()).err().unwrap_or_default();
            assert!(
                message.contains("newer than this catalog") && message.contains(&*raw),
                "{url} (migrate: {migrate}): {message}"
            );
        }
    }
    Ok(())
}

/// Records a migration this binary does not have, as a newer catalog would.
async fn newer_migration(backend: &Backend) -> SetupResult<()> {
    let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                  VALUES (9999, 'from the future', TRUE, X'00', 0)";
    match &backend.url {
        DatabaseUrl::Sqlite(options) => {
            let pool = sqlx::SqlitePool::connect_with(options.clone()).await?;
            sqlx::query(insert).execute(&pool).await?;
        }
        DatabaseUrl::Postgres(options) => {
            let pool = sqlx::PgPool::connect_with(options.clone()).await?;
            sqlx::query(&insert.replace("X'00'", "'\\x00'::bytea"))
                .execute(&pool)
                .await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn replicas_starting_together_migrate_the_database_once() -> SetupResult<()> {
    for backend in backends()? {
        let stores = [
            store::open(&backend.url).await?,
            store::open(&backend.url).await?,
        ];
        let (a, b) = tokio::join!(
            store::prepare(&*stores[0], &backend.url, true, store::NewFile::Seeded),
            store::prepare(&*stores[1], &backend.url, true, store::NewFile::Seeded)
        );
        assert!(a.is_ok() && b.is_ok(), "{}: {a:?} {b:?}", backend.url);
        assert_eq!(stores[0].applied_migrations().await?, vec![1]);
    }
    Ok(())
}
