//! A file that cannot be read until the test lets it: a named pipe put in
//! its place. A service that reloads it blocks in `open` until
//! [`StalledFile::release`], which makes "a reload that takes long" a state
//! the test holds, not a file big enough to be slow on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SetupResult;

/// A file replaced by a named pipe until released.
#[derive(Debug)]
pub struct StalledFile {
    path: PathBuf,
    contents: Vec<u8>,
}

impl StalledFile {
    /// Puts a named pipe at `path`, keeping what the file held.
    ///
    /// # Errors
    /// The file could not be read or removed, or `mkfifo` failed.
    pub fn stall(path: &Path) -> SetupResult<Self> {
        let contents = std::fs::read(path)?;
        std::fs::remove_file(path)?;
        let made = Command::new("mkfifo").arg(path).status()?;
        if !made.success() {
            return Err(format!("mkfifo {} failed: {made}", path.display()).into());
        }
        Ok(Self {
            path: path.to_owned(),
            contents,
        })
    }

    /// Lets the reader that is waiting (or the next one) read the old
    /// contents, then puts the file back as a regular file.
    ///
    /// The writing happens on a thread of its own, which waits for a reader
    /// to open the pipe: if none ever does (the test failed first), it
    /// ends with the test process rather than hold up a runtime's
    /// shutdown.
    pub fn release(self) {
        std::thread::spawn(move || {
            // Opening for writing waits for the reader; closing is its
            // end of file.
            if std::fs::write(&self.path, &self.contents).is_ok() {
                let restored = self.path.with_extension("restored");
                if std::fs::write(&restored, &self.contents).is_ok() {
                    let _ = std::fs::rename(&restored, &self.path);
                }
            }
        });
    }
}
