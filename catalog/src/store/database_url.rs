//! `--database-url`: which database, parsed once, shown without its
//! password wherever it is logged or reported.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

/// A database the catalog can keep its data in.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// `sqlite://PATH`: a file, created when missing.
    Sqlite(SqliteConnectOptions),
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    Postgres(PgConnectOptions),
}

impl DatabaseUrl {
    /// Parses `--database-url`.
    ///
    /// # Errors
    /// What is accepted, when `text` is neither; never the text itself,
    /// which may hold a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let accepted = "expected sqlite://PATH (a file, created when missing) or postgres://USER:PASSWORD@HOST:PORT/DATABASE";
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(format!("no file named: {accepted}"));
            }
            if path.starts_with('~') {
                return Err("~ is not expanded here: write the file's full path, as sqlite:///home/me/catalog.db".to_owned());
            }
            return SqliteConnectOptions::from_str(text)
                .map(Self::Sqlite)
                .map_err(|e| format!("{e}: {accepted}"));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return PgConnectOptions::from_str(text)
                .map(Self::Postgres)
                // sqlx's parse errors do not repeat the URL.
                .map_err(|e| format!("{e}: {accepted}"));
        }
        // The scheme is no secret: naming it shows the typo.
        match text.split_once("://") {
            Some((scheme, _)) if !scheme.contains(['@', ':', '/']) => {
                Err(format!("unknown scheme {scheme:?}: {accepted}"))
            }
            _ => Err(format!(
                "no scheme (for a file, write sqlite://PATH): {accepted}"
            )),
        }
    }

    /// The SQLite file, when this is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite(options) => Some(options.get_filename()),
            Self::Postgres(_) => None,
        }
    }
}

/// `--database-url`'s parser for clap: its errors say what is wrong and
/// what is accepted but, unlike clap's own, never repeat the value, which
/// may hold a password.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let refused = |why: String| {
            invalid(
                command,
                format!("invalid --database-url (not shown: it may hold a password): {why}"),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refused("not UTF-8".to_owned()))?;
        DatabaseUrl::parse(text).map_err(refused)
    }
}

/// `--database-url-file`'s parser: reads the file when the command line is
/// parsed, so a missing or unreadable secret stops the start with its path,
/// and parses what it holds (trailing white space and newline removed) as
/// [`DatabaseUrlParser`] does, never showing it. Only a regular file (a
/// FIFO would block the start) of at most [`MOST_URL_FILE`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUrlFileParser;

/// Far more than any URL; a larger file is not one.
const MOST_URL_FILE: u64 = 64 * 1024;

impl clap::builder::TypedValueParser for DatabaseUrlFileParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let path = std::path::Path::new(value);
        let refused = |why: String| {
            invalid(
                command,
                format!("--database-url-file {}: {why}", path.display()),
            )
        };
        let metadata =
            std::fs::metadata(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
        if !metadata.is_file() {
            return Err(refused("not a regular file".to_owned()));
        }
        if metadata.len() > MOST_URL_FILE {
            return Err(refused(format!(
                "{} bytes, too large to be a database URL",
                metadata.len()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
        let text = text.trim_end();
        if text.contains(['\n', '\r']) {
            return Err(refused(
                "more than one line; it must hold the database URL alone".to_owned(),
            ));
        }
        if text.is_empty() {
            return Err(refused(
                "the file is empty; it must hold the database URL".to_owned(),
            ));
        }
        DatabaseUrl::parse(text).map_err(|why| {
            refused(format!(
                "not a valid URL (not shown: it may hold a password): {why}"
            ))
        })
    }
}

/// A value clap refuses, with `message` alone: clap's own error would
/// repeat the value.
fn invalid(command: &clap::Command, message: String) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        format!("{message}\n"),
    )
    .with_cmd(command)
}

/// `sqlite://PATH`, or `postgres://USER@HOST:PORT/DATABASE`: never the
/// password.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The full path: a relative one depends on the directory the
            // command ran in, which a log reader cannot see.
            Self::Sqlite(options) => {
                let path = options.get_filename();
                let full = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
                write!(f, "sqlite://{}", full.display())
            }
            Self::Postgres(options) => write!(
                f,
                "postgres://{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username()),
            ),
        }
    }
}

/// As [`fmt::Display`]: `Config` is `Debug`, and a password must not reach
/// a log through it.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        let url = DatabaseUrl::parse("postgres://shop:s3cret@db.internal:6543/catalog").unwrap();
        for shown in [url.to_string(), format!("{url:?}")] {
            assert_eq!(shown, "postgres://shop@db.internal:6543/catalog");
        }
        for typo in [
            "mysql://shop:s3cret@db/catalog",
            "postgress://shop:s3cret@db/catalog",
        ] {
            let error = DatabaseUrl::parse(typo).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.contains("sqlite://PATH"), "{error}");
            assert!(error.starts_with("unknown scheme"), "{error}");
        }
        // No scheme: what precedes the password must not pass for one.
        let error = DatabaseUrl::parse("shop:s3cret@db/catalog").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.starts_with("no scheme"), "{error}");
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        let url = DatabaseUrl::parse("sqlite://catalog.db").unwrap();
        let here = std::env::current_dir().unwrap().join("catalog.db");
        assert_eq!(url.to_string(), format!("sqlite://{}", here.display()));
        assert!(
            DatabaseUrl::parse("sqlite://~/catalog.db")
                .unwrap_err()
                .contains("full path")
        );
        let absolute = DatabaseUrl::parse("sqlite:///data/catalog.db").unwrap();
        assert_eq!(
            absolute.sqlite_path(),
            Some(std::path::Path::new("/data/catalog.db"))
        );
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert!(DatabaseUrl::parse("catalog.db").is_err());
    }
}
