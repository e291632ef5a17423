//! `catalog migrate`, `catalog import`, `catalog export`: the data managed
//! from the command line, against the same `--database-url` the service
//! reads.

use std::io::Write;
use std::process::ExitCode;

use ecommerce_proto::pb::{Customer, Product};

use crate::config::{Command, Config, Table};
use crate::store::{self, DatabaseUrl, Row, import};

/// Runs `command`, prints what happened (errors on stderr), and says how
/// the process should exit.
pub async fn run(config: &Config, command: &Command) -> ExitCode {
    match execute(config, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("catalog: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(config: &Config, command: &Command) -> Result<(), String> {
    // Read and check the file before touching the database: a bad file
    // writes nothing and needs no database to be told so.
    let file = match command {
        Command::Import { what, file } => Some(
            match what {
                Table::Products => import::read_products(file).map(Rows::Products),
                Table::Customers => import::read_customers(file).map(Rows::Customers),
            }
            .map_err(|e| e.to_string())?,
        ),
        Command::Migrate | Command::Export { .. } => None,
    };
    let url = config.database_url();
    let store = store::open(url).await.map_err(|e| e.to_string())?;
    // `catalog migrate` is the command --no-migrate points to: it migrates
    // whatever the flag says.
    let migrate = match command {
        Command::Migrate => true,
        Command::Export { .. } => false,
        Command::Import { .. } => !config.no_migrate,
    };
    let result = work(&*store, url, migrate, command, file).await;
    store.close().await;
    result
}

async fn work(
    store: &dyn store::Store,
    url: &DatabaseUrl,
    migrate: bool,
    command: &Command,
    file: Option<Rows>,
) -> Result<(), String> {
    // A new file holds only what is imported into it, not the demo data.
    store::prepare(store, url, migrate, store::NewFile::Empty)
        .await
        .map_err(|e| e.to_string())?;
    match (command, file) {
        (Command::Migrate, _) => eprintln!("catalog: {url} is migrated"),
        (Command::Import { file, .. }, Some(rows)) => {
            let (count, revision) = match rows {
                Rows::Products(rows) => (rows.len(), store.import_products(rows).await),
                Rows::Customers(rows) => (rows.len(), store.import_customers(rows).await),
            };
            let revision = revision.map_err(|e| e.to_string())?;
            eprintln!(
                "catalog: imported {count} rows from {} into {url} (revision {revision})",
                file.display()
            );
        }
        (Command::Export { what }, _) => {
            let (mut products, mut customers) = (Vec::new(), Vec::new());
            store
                .load(0, &mut |row| match row {
                    Row::Product(p) => products.push(p),
                    Row::Customer(c) => customers.push(c),
                })
                .await
                .map_err(|e| e.to_string())?;
            let body = match what {
                Table::Products => crate::json::products(&sorted(products, |p: &Product| p.id)),
                Table::Customers => import::customers_json(&sorted(customers, |c: &Customer| c.id)),
            };
            std::io::stdout()
                .lock()
                .write_all(&body)
                .map_err(|e| format!("writing to standard output: {e}"))?;
        }
        (Command::Import { .. }, None) => {}
    }
    Ok(())
}

enum Rows {
    Products(Vec<Product>),
    Customers(Vec<Customer>),
}

fn sorted<T>(mut rows: Vec<T>, key: impl Fn(&T) -> i32) -> Vec<T> {
    rows.sort_by_key(key);
    rows
}
