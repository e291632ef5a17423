//! The README's discount flag table says what `discount --help` says: every
//! flag, its environment variable and its default, and nothing else.

use clap::CommandFactory;

#[test]
fn the_readme_flag_table_matches_the_command_line() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the repository root");
    let mismatches =
        testkit::readme::flag_table_mismatches(&readme, "discount", &discount::Config::command());
    assert!(
        mismatches.is_empty(),
        "README.md's discount flag table is out of date:\n  {}",
        mismatches.join("\n  ")
    );
}
