//! The flag tables of `docs/configuration.md`, checked against the clap
//! definitions (what `--help` prints), so that a default changed in the code
//! cannot leave the documentation stale, and a flag cannot be added or
//! removed without it.
//!
//! A table is the one under `### <section>` with the columns flag, env,
//! default, meaning. Each row's first cell names the flag in backticks
//! (`` `--cert` ``, or `` `[PORT]` `` for the positional port), the second
//! its environment variable in backticks (or nothing), the third its
//! default: the clap default in backticks, `off` for a switch, and words
//! (not a backticked value) for a flag without a clap default.

use clap::{Arg, ArgAction, Command};

/// One row of a flag table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    flag: String,
    env: Option<String>,
    default: String,
}

/// Every difference between the table under `### section` in `readme` and
/// the arguments of `command`; empty when they agree.
pub fn flag_table_mismatches(readme: &str, section: &str, command: &Command) -> Vec<String> {
    let rows = match table(readme, section) {
        Ok(rows) => rows,
        Err(problem) => return vec![problem],
    };
    let mut mismatches = Vec::new();
    let arguments: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .collect();
    for arg in &arguments {
        let flag = flag_name(arg);
        let Some(row) = rows.iter().find(|row| row.flag == flag) else {
            mismatches.push(format!("{flag}: no row in the table"));
            continue;
        };
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        if row.env != env {
            mismatches.push(format!(
                "{flag}: the table says env {:?}, the code {env:?}",
                row.env
            ));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let expected = if matches!(arg.get_action(), ArgAction::SetTrue) {
            Some("off".to_owned())
        } else if defaults.is_empty() {
            None
        } else {
            Some(format!("`{}`", defaults.join(",")))
        };
        match expected {
            Some(expected) if row.default != expected => mismatches.push(format!(
                "{flag}: the table says default {:?}, the code {expected:?}",
                row.default
            )),
            None if row.default.starts_with('`') => mismatches.push(format!(
                "{flag}: the table gives the default {:?}, the code has none; describe it in words",
                row.default
            )),
            _ => {}
        }
    }
    for row in &rows {
        if !arguments.iter().any(|arg| flag_name(arg) == row.flag) {
            mismatches.push(format!("{}: in the table, not in the code", row.flag));
        }
    }
    mismatches
}

/// `--long`, or `[NAME]` for a positional argument.
fn flag_name(arg: &Arg) -> String {
    match arg.get_long() {
        Some(long) => format!("--{long}"),
        None => {
            let name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
            format!("[{name}]")
        }
    }
}

/// The rows of the table under `### section`.
fn table(readme: &str, section: &str) -> Result<Vec<Row>, String> {
    let heading = format!("### {section}");
    let mut lines = readme.lines().skip_while(|line| line.trim() != heading);
    if lines.next().is_none() {
        return Err(format!("no {heading:?} heading in the document"));
    }
    let rows: Vec<Row> = lines
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header and the separator
        .filter_map(row)
        .collect();
    if rows.is_empty() {
        return Err(format!("no flag table under {heading:?}"));
    }
    Ok(rows)
}

fn row(line: &str) -> Option<Row> {
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    let [flag, env, default, ..] = cells.as_slice() else {
        return None;
    };
    Some(Row {
        flag: first_code(flag)?,
        env: first_code(env),
        default: (*default).to_owned(),
    })
}

/// The text of the first `code` span in `cell`.
fn first_code(cell: &str) -> Option<String> {
    let (_, rest) = cell.split_once('`')?;
    let (code, _) = rest.split_once('`')?;
    Some(code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `demo [PORT]`, with one of each kind of flag.
    #[derive(Debug, clap::Parser)]
    #[allow(dead_code)]
    struct Demo {
        #[arg(env = "DEMO_PORT", default_value_t = 80)]
        port: u16,
        #[arg(long, env = "DEMO_TIMEOUT", default_value = "5s")]
        timeout: String,
        #[arg(long, env = "DEMO_PLAIN")]
        plain: bool,
        #[arg(long)]
        name: Option<String>,
    }

    const GOOD: &str = "\
### demo

| flag | env | default | meaning |
|---|---|---|---|
| `[PORT]` (first argument) | `DEMO_PORT` | `80` | port |
| `--timeout` | `DEMO_TIMEOUT` | `5s` | how long |
| `--plain` | `DEMO_PLAIN` | off | no TLS |
| `--name` | | the host name | a name |

### next
";

    #[test]
    fn a_table_that_matches_the_code_has_no_mismatches() {
        assert_eq!(
            flag_table_mismatches(GOOD, "demo", &Demo::command()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_stale_default_env_missing_or_extra_row_is_each_reported() {
        let stale = GOOD
            .replace("`5s`", "`10s`")
            .replace("`DEMO_PLAIN`", "`DEMO_PLAINTEXT`")
            .replace("| `--name` | | the host name | a name |\n", "")
            .replace(
                "| `--plain` |",
                "| `--gone` | | off | removed |\n| `--plain` |",
            );
        let mismatches = flag_table_mismatches(&stale, "demo", &Demo::command());
        assert_eq!(mismatches.len(), 4, "{mismatches:#?}");
        for expected in [
            "--timeout: the table says default \"`10s`\"",
            "--plain: the table says env Some(\"DEMO_PLAINTEXT\")",
            "--name: no row in the table",
            "--gone: in the table, not in the code",
        ] {
            assert!(
                mismatches.iter().any(|m| m.starts_with(expected)),
                "{expected:?} not in {mismatches:#?}"
            );
        }
    }

    #[test]
    fn a_literal_default_for_a_flag_without_one_is_reported() {
        let invented = GOOD.replace("the host name", "`localhost`");
        let mismatches = flag_table_mismatches(&invented, "demo", &Demo::command());
        assert_eq!(mismatches.len(), 1, "{mismatches:#?}");
    }

    #[test]
    fn a_missing_section_is_reported() {
        let mismatches = flag_table_mismatches(GOOD, "other", &Demo::command());
        assert_eq!(mismatches, ["no \"### other\" heading in the document"]);
    }
}
