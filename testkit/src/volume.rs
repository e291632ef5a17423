//! TLS files laid out as the kubelet lays out a Secret volume: each file a
//! symlink `name -> ..data/name`, `..data` a symlink to a directory of the
//! current version. An update writes a new version's directory and then
//! renames a new `..data` over the old one, so that a reader sees the old
//! set or the new set, never a mix. What a service must notice to rotate
//! its certificates inside Kubernetes.

use std::path::{Path, PathBuf};

use crate::SetupResult;

/// A directory published kubelet-style.
#[derive(Debug)]
pub struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    /// An empty volume in a new temporary directory.
    ///
    /// # Errors
    /// The directory could not be made.
    pub fn new() -> SetupResult<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            version: 0,
        })
    }

    /// Where `name` is read from: `DIR/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes `files` (each its name in the volume and where to copy it
    /// from) as the next version: a new directory, then `..data` swapped
    /// to it with one rename.
    ///
    /// # Errors
    /// A file could not be copied or a link made.
    pub fn publish(&mut self, files: &[(&str, &Path)]) -> SetupResult<()> {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version))?;
        for (name, from) in files {
            std::fs::copy(from, self.dir.path().join(&version).join(name))?;
        }
        let next = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &next)?;
        std::fs::rename(&next, self.dir.path().join("..data"))?;
        for (name, _) in files {
            let link = self.dir.path().join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), link)?;
            }
        }
        Ok(())
    }
}
