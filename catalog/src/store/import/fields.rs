//! One field of a row turned into a value, or into a problem on its
//! line: ids, prices, text, and values that must not repeat.

use std::collections::HashMap;

use serde_json::Value;

use super::{Field, Problems};

/// Values seen in earlier rows, to name the first row of a duplicate.
#[derive(Default)]
pub(super) struct Unique(HashMap<String, u64>);

impl Unique {
    pub(super) fn check(
        &mut self,
        line: u64,
        name: &str,
        value: String,
        problems: &mut Problems,
    ) -> Option<()> {
        match self.0.get(&value) {
            Some(first) => {
                problems.add(
                    line,
                    format!("duplicate {name} {value:?} (also on line {first})"),
                );
                None
            }
            None => {
                self.0.insert(value, line);
                Some(())
            }
        }
    }
}

pub(super) fn id(line: u64, field: Option<Field<'_>>, problems: &mut Problems) -> Option<i32> {
    let value = integer(line, "id", field, problems)?;
    match i32::try_from(value) {
        Ok(id) if id >= 1 => Some(id),
        _ => {
            problems.add(
                line,
                format!("id {value} is out of range: from 1 to {}", i32::MAX),
            );
            None
        }
    }
}

pub(super) fn price(line: u64, field: Option<Field<'_>>, problems: &mut Problems) -> Option<i32> {
    let value = integer(line, "price_in_cents", field, problems)?;
    if value < 0 {
        problems.add(line, format!("negative price_in_cents {value}"));
        return None;
    }
    match i32::try_from(value) {
        Ok(price) => Some(price),
        Err(_) => {
            problems.add(
                line,
                format!(
                    "price_in_cents {value} is beyond {} (int32, the wire's type)",
                    i32::MAX
                ),
            );
            None
        }
    }
}

fn integer(
    line: u64,
    name: &str,
    field: Option<Field<'_>>,
    problems: &mut Problems,
) -> Option<i64> {
    let parsed = match field {
        None | Some(Field::Text("")) => {
            problems.add(line, format!("missing {name}"));
            return None;
        }
        Some(Field::Json(Value::Null)) => Some(0),
        Some(Field::Text(text)) => text.trim().parse::<i64>().ok(),
        Some(Field::Json(value)) => value.as_i64(),
    };
    if parsed.is_none() {
        let shown = match field {
            Some(Field::Text(text)) => format!("{text:?}"),
            Some(Field::Json(value)) => value.to_string(),
            None => String::new(),
        };
        problems.add(line, format!("{name} {shown} is not a whole number"));
    }
    parsed
}

pub(super) fn text(
    line: u64,
    name: &str,
    field: Option<Field<'_>>,
    problems: &mut Problems,
) -> Option<String> {
    let text = plain_text(line, name, field, problems)?;
    if text.contains('\0') {
        problems.add(
            line,
            format!("{name} holds a NUL character, which PostgreSQL cannot store"),
        );
        return None;
    }
    Some(text)
}

fn plain_text(
    line: u64,
    name: &str,
    field: Option<Field<'_>>,
    problems: &mut Problems,
) -> Option<String> {
    match field {
        None => {
            problems.add(line, format!("missing {name}"));
            None
        }
        Some(Field::Text(text)) => Some(text.to_owned()),
        Some(Field::Json(Value::Null)) => Some(String::new()),
        Some(Field::Json(Value::String(text))) => Some(text.clone()),
        Some(Field::Json(other)) => {
            problems.add(line, format!("{name} {other} is not a string"));
            None
        }
    }
}
