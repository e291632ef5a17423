//! Reading PEM files: certificates, private keys and trust anchors.
//!
//! Both binaries read their TLS material from files named on the command
//! line. When a file is missing or holds the wrong thing, the error names the
//! file, the flag that points at it and the command that creates it, because
//! "No such file or directory" alone does not help anyone at 3 a.m.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The command that creates the development keys, quoted in every error.
pub const GEN_KEYS_HINT: &str =
    "run `scripts/gen-keys.sh` from the repository root to create the development keys";

/// Which file a [`PemFileError`] is about, for the message.
#[derive(Debug, Clone)]
pub struct PemSource {
    /// The file that was read.
    pub path: PathBuf,
    /// The command-line flag (and environment variable) that names it.
    pub flag: &'static str,
}

impl PemSource {
    /// Describes `path`, which was given by `flag`.
    pub fn new(path: impl Into<PathBuf>, flag: &'static str) -> Self {
        Self {
            path: path.into(),
            flag,
        }
    }
}

/// What was wrong with a PEM file.
#[derive(Debug)]
pub enum PemProblem {
    /// The file does not exist.
    Missing,
    /// The file exists but could not be read.
    Unreadable(io::Error),
    /// The file was read but is not valid PEM, or holds no block of the kind
    /// asked for.
    NoBlock {
        /// The PEM label that was looked for, e.g. `CERTIFICATE`.
        wanted: &'static str,
        /// What the parser said, if it said anything.
        detail: Option<String>,
    },
}

/// A PEM file could not be used. The message says which, why and how to fix it.
#[derive(Debug, thiserror::Error)]
pub struct PemFileError {
    /// The file and the flag that named it.
    pub file: PemSource,
    /// What was wrong.
    pub problem: PemProblem,
}

impl fmt::Display for PemFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, flag) = (self.file.path.display(), self.file.flag);
        write!(f, "{path}: {} (the file is set by {flag}); ", self.problem)?;
        match &self.problem {
            // The file is there: making new keys would not help.
            PemProblem::Unreadable(e) if e.kind() == io::ErrorKind::PermissionDenied => write!(
                f,
                "let the user this service runs as read it (in a container, the container's user: 65532 for this project's images), or point {flag} at a copy it can read"
            ),
            _ => write!(f, "{GEN_KEYS_HINT}, or point {flag} at the right file"),
        }
    }
}

impl fmt::Display for PemProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("file not found"),
            Self::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            Self::NoBlock {
                wanted,
                detail: None,
            } => write!(f, "no {wanted} PEM block in the file"),
            Self::NoBlock {
                wanted,
                detail: Some(detail),
            } => write!(f, "no usable {wanted} PEM block in the file ({detail})"),
        }
    }
}

impl PemFileError {
    fn new(source: &PemSource, problem: PemProblem) -> Self {
        Self {
            file: source.clone(),
            problem,
        }
    }

    fn from_pem(source: &PemSource, wanted: &'static str, error: pem::Error) -> Self {
        let problem = match error {
            pem::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => PemProblem::Missing,
            pem::Error::Io(e) => PemProblem::Unreadable(e),
            pem::Error::NoItemsFound => PemProblem::NoBlock {
                wanted,
                detail: None,
            },
            other => PemProblem::NoBlock {
                wanted,
                detail: Some(other.to_string()),
            },
        };
        Self::new(source, problem)
    }
}

/// A PEM file read into memory once, to be parsed as what it should hold.
#[derive(Debug, Clone)]
pub struct PemFile {
    source: PemSource,
    bytes: Vec<u8>,
}

impl PemFile {
    /// Reads the file.
    ///
    /// # Errors
    /// A [`PemFileError`] if the file is missing or unreadable.
    pub fn read(source: &PemSource) -> Result<Self, PemFileError> {
        let bytes = std::fs::read(&source.path).map_err(|e| {
            let problem = if e.kind() == io::ErrorKind::NotFound {
                PemProblem::Missing
            } else {
                PemProblem::Unreadable(e)
            };
            PemFileError::new(source, problem)
        })?;
        Ok(Self {
            source: source.clone(),
            bytes,
        })
    }

    /// Where it came from.
    pub fn source(&self) -> &PemSource {
        &self.source
    }

    /// The file as read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every certificate in the file, in order (leaf first for a chain).
    ///
    /// # Errors
    /// A [`PemFileError`] if there is no `CERTIFICATE` block.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
        const WANTED: &str = "CERTIFICATE";
        let certificates = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PemFileError::from_pem(&self.source, WANTED, e))?;
        if certificates.is_empty() {
            return Err(PemFileError::new(
                &self.source,
                PemProblem::NoBlock {
                    wanted: WANTED,
                    detail: None,
                },
            ));
        }
        Ok(certificates)
    }

    /// The first private key (PKCS#8, PKCS#1 or SEC1) in the file.
    ///
    /// # Errors
    /// A [`PemFileError`] if there is no private key block.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, PemFileError> {
        PrivateKeyDer::from_pem_slice(&self.bytes)
            .map_err(|e| PemFileError::from_pem(&self.source, "PRIVATE KEY", e))
    }

    /// Every certificate in the file as a trust anchor, for verifying peers.
    ///
    /// # Errors
    /// A [`PemFileError`] if there is no certificate, or one cannot serve as
    /// a trust anchor.
    pub fn root_store(&self) -> Result<rustls::RootCertStore, PemFileError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in self.certificates()? {
            roots.add(certificate).map_err(|e| {
                PemFileError::new(
                    &self.source,
                    PemProblem::NoBlock {
                        wanted: "CA CERTIFICATE",
                        detail: Some(e.to_string()),
                    },
                )
            })?;
        }
        Ok(roots)
    }
}

/// Where a path came from, for start-up log lines.
pub fn display_path(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_in(dir: &Path, name: &str, contents: Option<&str>) -> PemSource {
        let path = dir.join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        PemSource::new(path, "--cert")
    }

    /// A directory removed when the test ends (these left one in the
    /// system's temporary directory per run).
    fn scratch_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("common-tls-{name}-"))
            .tempdir()
            .expect("mkdir")
    }

    #[test]
    fn a_missing_file_names_the_file_the_flag_and_the_fix() {
        let dir = scratch_dir("missing");
        let source = source_in(dir.path(), "nope.pem", None);
        let error = PemFile::read(&source)
            .and_then(|f| f.certificates())
            .err()
            .map(|e| e.to_string());
        let message = error.unwrap_or_default();
        assert!(message.contains("nope.pem: file not found"), "{message}");
        assert!(message.contains("--cert"), "{message}");
        assert!(message.contains("scripts/gen-keys.sh"), "{message}");
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_key_says_to_fix_its_permissions_not_to_make_new_keys() {
        let error = PemFileError::new(
            &PemSource::new("/run/secrets/discount_key", "--key (DISCOUNT_KEY)"),
            PemProblem::Unreadable(io::Error::from(io::ErrorKind::PermissionDenied)),
        );
        let message = error.to_string();
        assert!(
            message.starts_with("/run/secrets/discount_key: cannot read the file"),
            "{message}"
        );
        assert!(message.contains("the container's user"), "{message}");
        assert!(!message.contains("gen-keys"), "{message}");
    }

    #[test]
    fn a_file_without_the_right_block_says_which_block_was_wanted() {
        let dir = scratch_dir("noblock");
        let source = source_in(dir.path(), "garbage.pem", Some("this is not PEM\n"));
        let message = PemFile::read(&source)
            .and_then(|f| f.certificates())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("no CERTIFICATE PEM block"),
            "unexpected message: {message}"
        );
        let message = PemFile::read(&source)
            .and_then(|f| f.private_key())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("PRIVATE KEY"),
            "unexpected message: {message}"
        );
    }
}
