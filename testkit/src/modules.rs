//! The shape of the source tree, checked: which top-level modules of a
//! crate use which, and how long each file is. `docs/architecture.md`
//! promises that no module imports back up, so a cycle between two
//! top-level modules (`a` uses `crate::b`, `b` uses `crate::a`) is a design
//! error that the tests name. Read from the source text: a path `crate::x`
//! (or a `use crate::{x, y::z}` group) outside comments, in any file under
//! `src/a.rs` or `src/a/`, is a use of `x` by `a`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files use.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The use graph of the crate whose `src` directory is `src`. A name the
/// crate root re-exports (`crate::Config`) is a use of its module.
///
/// # Errors
/// A file could not be read.
fn graph(src: &Path) -> std::io::Result<Graph> {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .find_map(|root| std::fs::read_to_string(src.join(root)).ok())
        .unwrap_or_default();
    let reexported = reexports(&root);
    let mut graph = Graph::new();
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        if matches!(name, "lib" | "main") {
            continue;
        }
        let mut files = Vec::new();
        collect_rust_files(&path, &mut files)?;
        let uses = graph.entry(name.to_owned()).or_default();
        for file in files {
            let paths = crate_paths(&std::fs::read_to_string(file)?);
            uses.extend(
                paths
                    .into_iter()
                    .map(|head| reexported.get(&head).cloned().unwrap_or(head)),
            );
        }
        uses.remove(name);
    }
    Ok(graph)
}

/// Name -> module, for each `pub use module::{Name, ...};` of a crate root.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in root.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split(['{', '}', ',']) {
            let name = item.rsplit(" as ").next().unwrap_or(item);
            if let Some(name) = ident(name.rsplit("::").next().unwrap_or(name).trim()) {
                names.insert(name, module.trim().to_owned());
            }
        }
    }
    names
}

/// Every `.rs` file at `path` (a file, or a directory walked down).
fn collect_rust_files(path: &Path, files: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect_rust_files(&entry?.path(), files)?;
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        files.push(path.to_owned());
    }
    Ok(())
}

/// The first segment after each `crate::` in `source`, in code and in doc
/// comments (a doc link back up couples the modules as much as a `use`),
/// plain comments left out.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[at..].starts_with("///") && !line[at..].starts_with("//!") => {
                &line[..at]
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.extend(ident(rest));
        }
    }
    found
}

/// The first identifier of each item of a `{a, b::c, d::{e}}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && !c.is_whitespace() => {
                heads.extend(ident(&group[at..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The identifier `text` starts with, if any.
fn ident(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0 && !text.starts_with(|c: char| c.is_ascii_digit())).then(|| text[..end].to_owned())
}

/// Each pair of top-level modules that use each other, directly or through
/// others, as `a -> b -> ... -> a`.
fn cycles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for start in graph.keys() {
        // Shortest way back to `start`, breadth first.
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut frontier = vec![start.as_str()];
        'search: while !frontier.is_empty() {
            let mut next = Vec::new();
            for module in frontier {
                for used in graph.get(module).into_iter().flatten() {
                    if used == start {
                        // Back from `module` to `start`, which came from
                        // nothing.
                        let mut path = vec![module];
                        while let Some(&before) = path.last().and_then(|m| came_from.get(m)) {
                            path.push(before);
                        }
                        path.reverse();
                        found.push(path.join(" -> ") + " -> " + start);
                        break 'search;
                    }
                    if graph.contains_key(used.as_str())
                        && used != start
                        && !came_from.contains_key(used.as_str())
                    {
                        came_from.insert(used, module);
                        next.push(used.as_str());
                    }
                }
            }
            frontier = next;
        }
    }
    found
}

/// The longest a source file may be, in production lines: past that a
/// file holds more than one concern, and a reader more than one sitting.
const MOST_PRODUCTION_LINES: usize = 350;

/// `source`'s lines, less its `#[cfg(test)]` items (a `mod tests { ... }`,
/// or a `use` or function kept for the tests).
fn production_lines(source: &str) -> usize {
    let mut lines = source.lines();
    let mut count = 0;
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with("#[cfg(test)]") {
            count += 1;
            continue;
        }
        // Skip the item: to the brace that closes it, or its `;`.
        let mut depth = 0_i64;
        let mut opened = false;
        for line in lines.by_ref() {
            let opens = line.matches('{').count();
            depth += i64::try_from(opens).unwrap_or(i64::MAX);
            depth -= i64::try_from(line.matches('}').count()).unwrap_or(i64::MAX);
            opened |= opens > 0;
            if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_groups_and_comments() {
        let source = "use crate::a::X;\nuse crate::{b, c::{D, E}, d};\n// crate::z\nfn f() { crate::e::f() }\n/// [`crate::f`]\n";
        let found: Vec<String> = crate_paths(source).into_iter().collect();
        assert_eq!(found, ["a", "b", "c", "d", "e", "f"]);
    }

    #[test]
    fn names_the_root_reexports_are_their_modules() {
        let root = "pub mod a;\npub use a::App;\npub use error::{Error, Startup as Start};\n";
        let names = reexports(root);
        assert_eq!(names.get("App").map(String::as_str), Some("a"));
        assert_eq!(names.get("Error").map(String::as_str), Some("error"));
        assert_eq!(names.get("Start").map(String::as_str), Some("error"));
        assert_eq!(names.get("a"), None);
    }

    #[test]
    fn a_cycle_is_named_with_its_path() {
        let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
            .into_iter()
            .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
            .collect();
        assert_eq!(
            cycles(&graph),
            ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
        );
    }

    #[test]
    fn test_items_are_not_production_lines() {
        let source = "use a;\n#[cfg(test)]\nuse b;\nfn f() {\n}\n#[cfg(test)]\nmod tests {\n    fn g() {}\n}\nfn h() {}\n";
        assert_eq!(production_lines(source), 4);
    }

    /// Every source file of the workspace is short enough to read whole.
    #[test]
    fn no_source_file_is_over_350_production_lines() -> std::io::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut long = Vec::new();
        for krate in ["bench", "catalog", "common", "discount", "proto", "testkit"] {
            let mut files = Vec::new();
            collect_rust_files(&root.join(krate).join("src"), &mut files)?;
            let mut total = 0;
            for file in files {
                let lines = production_lines(&std::fs::read_to_string(&file)?);
                total += lines;
                if lines > MOST_PRODUCTION_LINES {
                    long.push(format!("{}: {lines}", file.display()));
                }
            }
            // The crate's size, for `-- --nocapture`.
            eprintln!("{krate}: {total} production lines");
        }
        assert!(
            long.is_empty(),
            "files over {MOST_PRODUCTION_LINES} production lines (split them by concern):\n  {}",
            long.join("\n  ")
        );
        Ok(())
    }

    /// Every crate of the workspace: no two top-level modules use each other.
    #[test]
    fn no_crate_of_the_workspace_has_an_import_cycle() -> std::io::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        for krate in ["bench", "catalog", "common", "discount", "proto", "testkit"] {
            let graph = graph(&root.join(krate).join("src"))?;
            found.extend(cycles(&graph).into_iter().map(|c| format!("{krate}: {c}")));
        }
        assert!(
            found.is_empty(),
            "import cycles between top-level modules:\n  {}",
            found.join("\n  ")
        );
        Ok(())
    }
}
