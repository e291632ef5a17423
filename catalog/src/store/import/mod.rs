//! Reading `catalog import`'s files: CSV with a header, or a JSON array in
//! the shape `GET /products` answers, chosen by the extension. Every row
//! is checked before anything is written, and every bad one is named with
//! its line and what is wrong with it.

mod csv;
mod fields;
mod json;

use std::collections::HashMap;

use fields::{Unique, id, price, text};
use std::fmt;
use std::path::{Path, PathBuf};

use ecommerce_proto::pb::{Customer, Product};
use serde_json::Value;

/// The most problems listed; the rest are counted.
const SHOWN_PROBLEMS: usize = 100;

/// Why a file cannot be imported. Nothing was written.
#[derive(Debug)]
pub enum ImportError {
    /// The file could not be read, or its kind is unknown.
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Rows that break the rules, by line.
    Rows {
        /// The file.
        path: PathBuf,
        /// `(line, what is wrong)`, the first [`SHOWN_PROBLEMS`].
        problems: Vec<(u64, String)>,
        /// How many more there are.
        more: usize,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, why } => {
                write!(f, "{}: {why}; nothing was imported", path.display())
            }
            Self::Rows {
                path,
                problems,
                more,
            } => {
                let count = problems.len() + more;
                write!(
                    f,
                    "{}: {count} problem{} found, so nothing was imported:",
                    path.display(),
                    if count == 1 { "" } else { "s" }
                )?;
                for (line, what) in problems {
                    write!(f, "\n  line {line}: {what}")?;
                }
                if *more > 0 {
                    write!(f, "\n  ... and {more} more")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ImportError {}

/// Problems found so far, the first [`SHOWN_PROBLEMS`] kept.
#[derive(Debug, Default)]
struct Problems {
    shown: Vec<(u64, String)>,
    more: usize,
    /// Said before each problem of the row read now (a JSON element's
    /// place in the array, since an export is all on one line).
    context: Option<String>,
}

impl Problems {
    fn add(&mut self, line: u64, what: impl Into<String>) {
        if self.shown.len() < SHOWN_PROBLEMS {
            let what = what.into();
            let what = match &self.context {
                Some(context) => format!("{context}: {what}"),
                None => what,
            };
            self.shown.push((line, what));
        } else {
            self.more += 1;
        }
    }

    fn into_result<T>(self, path: &Path, rows: T) -> Result<T, ImportError> {
        if self.shown.is_empty() {
            return Ok(rows);
        }
        Err(ImportError::Rows {
            path: path.to_owned(),
            problems: self.shown,
            more: self.more,
        })
    }
}

/// The line of each byte offset, for offsets met in increasing order:
/// the newlines are counted once, not from the start for every row.
/// Counting `\n` makes CRLF files and blank lines come out right.
struct Lines<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    fn at(&mut self, offset: usize) -> u64 {
        let newlines = |range: &[u8]| range.iter().filter(|b| **b == b'\n').count() as u64;
        match self.bytes.get(self.offset..offset) {
            Some(range) => {
                self.line += newlines(range);
                self.offset = offset;
                self.line
            }
            // Earlier than the last offset asked: count from the start.
            None => 1 + newlines(self.bytes.get(..offset).unwrap_or(self.bytes)),
        }
    }
}

/// The longest slug taken: PostgreSQL indexes slugs, and an index entry
/// holds at most about 2.7 KB.
const MAX_SLUG_BYTES: usize = 256;

/// The columns (CSV) or keys (JSON) of one kind of row.
struct Shape {
    required: &'static [&'static str],
    /// Keys JSON may leave out, as Go's `omitempty` leaves out zero values.
    omissible: &'static [&'static str],
}

const PRODUCT: Shape = Shape {
    required: &["id", "slug", "description", "price_in_cents"],
    omissible: &["description", "price_in_cents"],
};

const CUSTOMER: Shape = Shape {
    required: &["id", "first_name", "last_name"],
    omissible: &["first_name", "last_name"],
};

/// One field of a row: text from CSV, a value from JSON.
enum Field<'a> {
    Text(&'a str),
    Json(&'a Value),
}

/// One row's fields, by column or key.
enum Fields<'a> {
    Csv(HashMap<&'a str, &'a str>),
    Json(&'a serde_json::Map<String, Value>, &'a Shape),
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<Field<'_>> {
        match self {
            Self::Csv(texts) => texts.get(name).map(|text| Field::Text(text)),
            Self::Json(object, shape) => match object.get(name) {
                Some(value) => Some(Field::Json(value)),
                // Go leaves zero values out; these come back as zero.
                None if shape.omissible.contains(&name) => Some(Field::Json(&json::NULL)),
                None => None,
            },
        }
    }
}

/// The products in `path`.
///
/// # Errors
/// [`ImportError`] naming every bad row.
pub fn read_products(path: &Path) -> Result<Vec<Product>, ImportError> {
    let mut ids = Unique::default();
    let mut slugs = Unique::default();
    read(path, &PRODUCT, |line, fields, problems| {
        let field = |name| fields.get(name);
        let id = id(line, field("id"), problems)?;
        let slug = text(line, "slug", field("slug"), problems)?;
        if slug.is_empty() {
            problems.add(line, "slug is empty");
            return None;
        }
        if slug.len() > MAX_SLUG_BYTES {
            problems.add(
                line,
                format!("slug is {} bytes long, over {MAX_SLUG_BYTES}", slug.len()),
            );
            return None;
        }
        let description = text(line, "description", field("description"), problems)?;
        let price_in_cents = price(line, field("price_in_cents"), problems)?;
        ids.check(line, "id", id.to_string(), problems)?;
        slugs.check(line, "slug", slug.clone(), problems)?;
        Some(Product {
            id,
            slug,
            description,
            price_in_cents,
            discount_value: None,
        })
    })
}

/// The customers in `path`.
///
/// # Errors
/// [`ImportError`] naming every bad row.
pub fn read_customers(path: &Path) -> Result<Vec<Customer>, ImportError> {
    let mut ids = Unique::default();
    read(path, &CUSTOMER, |line, fields, problems| {
        let field = |name| fields.get(name);
        let id = id(line, field("id"), problems)?;
        let first_name = text(line, "first_name", field("first_name"), problems)?;
        let last_name = text(line, "last_name", field("last_name"), problems)?;
        ids.check(line, "id", id.to_string(), problems)?;
        Some(Customer {
            id,
            first_name,
            last_name,
        })
    })
}

/// One customer as `catalog export customers` writes it: the fields in
/// the order the CSV header and the docs give them (`json!` would sort
/// them).
#[derive(serde::Serialize)]
struct CustomerJson<'a> {
    id: i32,
    first_name: &'a str,
    last_name: &'a str,
}

/// `customers` as a JSON array, the shape `catalog import` reads back.
pub fn customers_json(customers: &[Customer]) -> Vec<u8> {
    let rows: Vec<CustomerJson<'_>> = customers
        .iter()
        .map(|c| CustomerJson {
            id: c.id,
            first_name: &c.first_name,
            last_name: &c.last_name,
        })
        .collect();
    let mut body = serde_json::to_vec(&rows).unwrap_or_else(|_| b"[]".to_vec());
    body.push(b'\n');
    body
}

/// What turns one row's fields into a product or a customer, or adds
/// the row's problems.
type RowReader<'f, T> = dyn FnMut(u64, &Fields<'_>, &mut Problems) -> Option<T> + 'f;

fn read<T>(
    path: &Path,
    shape: &Shape,
    mut row: impl FnMut(u64, &Fields<'_>, &mut Problems) -> Option<T>,
) -> Result<Vec<T>, ImportError> {
    let bytes = std::fs::read(path).map_err(|e| ImportError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => csv::read(path, &bytes, shape, &mut row),
        Some("json") => json::read(path, &bytes, shape, &mut row),
        _ => Err(ImportError::File {
            path: path.to_owned(),
            why: "the kind of file is told by its extension: .csv (with a header) or .json (an array)".to_owned(),
        }),
    }
}
