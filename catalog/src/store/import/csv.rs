//! CSV files: a header naming the columns, in any order; each record's
//! line found from the byte where it starts (the csv crate's own line
//! count is off by one in CRLF files and skips blank lines).

use std::collections::HashMap;
use std::path::Path;

use super::{Fields, ImportError, Lines, Problems, RowReader, Shape};

pub(super) fn read<T>(
    path: &Path,
    bytes: &[u8],
    shape: &Shape,
    row: &mut RowReader<'_, T>,
) -> Result<Vec<T>, ImportError> {
    let mut problems = Problems::default();
    let mut reader = ::csv::ReaderBuilder::new().from_reader(bytes);
    let header = reader.byte_headers().map_err(|e| ImportError::File {
        path: path.to_owned(),
        why: format!("cannot read the header: {e}"),
    })?;
    let mut columns = HashMap::new();
    for (index, name) in header.iter().enumerate() {
        match std::str::from_utf8(name) {
            Ok(name) if shape.required.contains(&name) => {
                if columns.insert(name.to_owned(), index).is_some() {
                    problems.add(1, format!("column {name:?} appears twice"));
                }
            }
            Ok(name) => problems.add(
                1,
                format!(
                    "unknown column {name:?}: the header is {}",
                    shape.required.join(",")
                ),
            ),
            Err(_) => problems.add(1, "the header is not UTF-8"),
        }
    }
    for name in shape.required {
        if !columns.contains_key(*name) {
            problems.add(
                1,
                format!(
                    "missing column {name:?}: the header is {}",
                    shape.required.join(",")
                ),
            );
        }
    }
    if !problems.shown.is_empty() {
        return problems.into_result(path, Vec::new());
    }
    let mut rows = Vec::new();
    let mut lines = Lines::new(bytes);
    for record in reader.byte_records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error.position().map_or(0, |at| lines.at(start(bytes, at)));
                problems.add(line, csv_problem(&error));
                continue;
            }
        };
        let line = record.position().map_or(0, |at| lines.at(start(bytes, at)));
        let mut texts: HashMap<&str, &str> = HashMap::new();
        let mut utf8 = true;
        for (name, index) in &columns {
            match std::str::from_utf8(record.get(*index).unwrap_or_default()) {
                Ok(text) => {
                    texts.insert(name.as_str(), text);
                }
                Err(_) => {
                    problems.add(line, format!("{name} is not UTF-8"));
                    utf8 = false;
                }
            }
        }
        if !utf8 {
            continue;
        }
        if let Some(value) = row(line, &Fields::Csv(texts), &mut problems) {
            rows.push(value);
        }
    }
    problems.into_result(path, rows)
}

fn csv_problem(error: &::csv::Error) -> String {
    match error.kind() {
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields, where the header has {expected_len}")
        }
        _ => error.to_string(),
    }
}

/// Where a record's first field starts: the csv crate's position can be
/// at the line ending before it (the `\n` of a CRLF) or at blank lines
/// it skipped.
fn start(bytes: &[u8], position: &::csv::Position) -> usize {
    let at = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    let skipped = bytes.get(at..).map_or(0, |rest| {
        rest.iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count()
    });
    at.saturating_add(skipped)
}
