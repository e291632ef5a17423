//! JSON files: an array of objects in the shape `GET /products` answers;
//! each element's line found from where it starts in the file.

use std::path::Path;

use serde_json::Value;

use super::{Fields, ImportError, Lines, Problems, RowReader, Shape};

/// What a key Go left out stands for.
pub(super) static NULL: Value = Value::Null;

pub(super) fn read<T>(
    path: &Path,
    bytes: &[u8],
    shape: &Shape,
    row: &mut RowReader<'_, T>,
) -> Result<Vec<T>, ImportError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = Lines::new(bytes).at(e.valid_up_to());
        ImportError::Rows {
            path: path.to_owned(),
            problems: vec![(line, "not UTF-8".to_owned())],
            more: 0,
        }
    })?;
    let elements: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| ImportError::Rows {
            path: path.to_owned(),
            problems: vec![(e.line() as u64, format!("not a JSON array of objects: {e}"))],
            more: 0,
        })?;
    let mut problems = Problems::default();
    let mut rows = Vec::new();
    let mut lines = Lines::new(bytes);
    for (index, element) in elements.into_iter().enumerate() {
        let offset = element.get().as_ptr() as usize - text.as_ptr() as usize;
        let line = lines.at(offset);
        problems.context = Some(format!("element {}", index + 1));
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(element.get()) else {
            problems.add(line, "not a JSON object");
            continue;
        };
        let mut known = true;
        for key in object.keys() {
            if !shape.required.contains(&key.as_str()) {
                let why = if key == "discount_value" {
                    "discount_value: products are imported at their price; discount computes discounts".to_owned()
                } else {
                    format!(
                        "unknown key {key:?}: the keys are {}",
                        shape.required.join(", ")
                    )
                };
                problems.add(line, why);
                known = false;
            }
        }
        if !known {
            continue;
        }
        if let Some(value) = row(line, &Fields::Json(&object, shape), &mut problems) {
            rows.push(value);
        }
    }
    problems.into_result(path, rows)
}
