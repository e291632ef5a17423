//! `catalog migrate`, `import` and `export`: the subcommands' arguments,
//! part of the command line that `Config` parses (commands.rs runs them).

use std::path::PathBuf;

/// What the catalog can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply the database migrations this catalog has, and exit.
    Migrate,
    /// Load products or customers from a file into the database: inserted,
    /// or updated by id, all in one transaction or nothing.
    Import {
        /// What the file holds.
        what: Table,
        /// A `.csv` file with a header (`id,slug,description,price_in_cents`
        /// or `id,first_name,last_name`), or a `.json` array in the shape
        /// `GET /products` answers.
        file: PathBuf,
    },
    /// Print the products (in the shape `GET /products` answers) or the
    /// customers as a JSON array, by id.
    Export {
        /// What to print.
        what: Table,
    },
}

/// The two kinds of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// Products.
    Products,
    /// Customers.
    Customers,
}
