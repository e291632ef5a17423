//! Text that came from outside (a header, a peer's certificate, a
//! replica's `grpc-message`), written into a log field.
//!
//! Such text must not forge log lines, so its control characters are
//! escaped. `?value` did that by Debug-formatting the string, which also
//! wrapped it in quotes: in a JSON line the field then read
//! `"cause":"\"...\""`, a quoted string inside a string. Written with
//! `%Untrusted(&text)` the field is the text, escaped, once, in either
//! format.

use std::fmt;

/// Displays a string with its control characters (and backslashes)
/// escaped as Rust escapes them (`\n`, `\u{1b}`), and no quotes added.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_is_quoted() {
        let forged = "refused\n2026-12-07T00:00:00Z  INFO all is well\u{1b}[2J \\ \"ok\" é";
        assert_eq!(
            Untrusted(forged).to_string(),
            "refused\\n2026-12-07T00:00:00Z  INFO all is well\\u{1b}[2J \\\\ \"ok\" é"
        );
        assert_eq!(Untrusted("plain text").to_string(), "plain text");
    }
}
