//! docs/configuration.md's discount flag table says what `discount --help` says:
//! every flag, its environment variable and its default, and nothing else.

use clap::CommandFactory;

#[test]
fn the_readme_flag_table_matches_the_command_line() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .expect("docs/configuration.md in the repository");
    let mismatches =
        testkit::readme::flag_table_mismatches(&readme, "discount", &discount::Config::command());
    assert!(
        mismatches.is_empty(),
        "docs/configuration.md's discount flag table is out of date:\n  {}",
        mismatches.join("\n  ")
    );
}
