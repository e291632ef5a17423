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

/// Displays a string escaped as Debug escapes it (`\n`, `\u{1b}`, and
/// what else is not printable: U+2028, the bidi controls), with no quotes
/// added and quotes left as they are.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c == '"' || c == '\'' {
                write!(f, "{c}")?;
            } else {
                write!(f, "{}", c.escape_debug())?;
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
        // Unicode line and paragraph separators and bidi overrides: a line
        // splitter that knows Unicode must not see a new line.
        assert_eq!(
            Untrusted("x\u{2028}y\u{2029}z\u{202e}").to_string(),
            "x\\u{2028}y\\u{2029}z\\u{202e}"
        );
    }
}
