//! Noticing that TLS files changed, so that certificates rotate with no
//! one to send SIGHUP.
//!
//! The files are polled, not watched through inotify (the `notify` crate):
//! - a Kubernetes Secret volume is updated by writing a new directory and
//!   swapping the `..data` symlink, cert-manager, spiffe-helper and Vault
//!   agents rewrite files in place, and inotify sees each of these
//!   differently, or not at all (NFS, some overlay and FUSE volumes), so a
//!   poll would be needed as the fallback anyway;
//! - what is read is each file's metadata, following symlinks (so a
//!   `..data` swap is a new inode): three `stat` calls every few seconds,
//!   nothing next to the handshakes they protect;
//! - a renewal comes days before expiry, so seconds of delay cost nothing.
//!
//! A change is acted on once it has held still for [`SETTLE`], so that a
//! writer's burst (a certificate, then its key) is one reload. A reload
//! that fails (a half-written or mismatched set) keeps the last good
//! material and is logged once; it is tried again when the files change
//! again, not at every poll.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

/// How long a change must hold still before it is reloaded.
pub(super) const SETTLE: Duration = Duration::from_millis(500);

/// Files that keep changing for this many [`SETTLE`]s (10 s) are reloaded
/// as they are, so that a writer that never stops cannot hold a rotation
/// back unseen.
const MOST_SETTLES: u32 = 20;

/// What a file looks like from outside: enough to tell that it was
/// replaced (device, inode), rewritten (length, modification and change
/// times) or removed. The change time moves on every write, even one that
/// puts the old modification time back (`cp -p`, `tar`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File {
        dev: u64,
        ino: u64,
        len: u64,
        modified: Option<SystemTime>,
        changed: (i64, i64),
    },
    /// Missing or unreadable, with the reason's kind.
    Unreadable(std::io::ErrorKind),
}

fn look(path: &PathBuf) -> Seen {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(meta) => Seen::File {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
                changed: (meta.ctime(), meta.ctime_nsec()),
            },
            Err(error) => Seen::Unreadable(error.kind()),
        }
    }
    #[cfg(not(unix))]
    match std::fs::metadata(path) {
        Ok(meta) => Seen::File {
            dev: 0,
            ino: 0,
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (0, 0),
        },
        Err(error) => Seen::Unreadable(error.kind()),
    }
}

/// All the files, in order.
async fn look_at_all(files: &[PathBuf]) -> Vec<Seen> {
    let files = files.to_vec();
    // `stat` may block (a network volume): off the runtime's workers.
    tokio::task::spawn_blocking(move || files.iter().map(look).collect())
        .await
        .unwrap_or_default()
}

/// Every `interval`, looks at `files`; when they changed since the last
/// reload asked, and then held still for [`SETTLE`], notifies `asked`
/// (which [`super::reload_when_asked`] serves). Runs for ever; an interval
/// of zero turns it off.
pub(super) async fn on_change(files: Vec<PathBuf>, interval: Duration, asked: &Notify) {
    if interval.is_zero() || files.is_empty() {
        return std::future::pending().await;
    }
    let mut reloaded = look_at_all(&files).await;
    loop {
        tokio::time::sleep(interval).await;
        let mut now = look_at_all(&files).await;
        if now == reloaded {
            continue;
        }
        // Changing: wait until it stops, or has not for MOST_SETTLES.
        let mut settles = 0;
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = look_at_all(&files).await;
            if again == now {
                break;
            }
            now = again;
            settles += 1;
            if settles == MOST_SETTLES {
                tracing::warn!(
                    held_still_for = ?SETTLE,
                    "TLS files keep changing; reloading them as they are now"
                );
                break;
            }
        }
        let changed: Vec<String> = files
            .iter()
            .zip(now.iter().zip(&reloaded))
            .filter(|(_, (now, before))| now != before)
            .map(|(path, _)| path.display().to_string())
            .collect();
        tracing::info!(
            changed = %changed.join(", "),
            "TLS files changed, reloading TLS material"
        );
        reloaded = now;
        asked.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Waits until `asked` is notified, at most `limit`; whether it was.
    async fn notified(asked: &Notify, limit: Duration) -> bool {
        tokio::time::timeout(limit, asked.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn a_rewrite_a_symlink_swap_and_a_removal_are_each_one_reload() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = dir.path();
        // The kubelet's layout: files -> ..data/file, ..data -> ..v1.
        std::fs::create_dir(dir.join("..v1")).unwrap_or_else(|e| panic!("{e}"));
        write(&dir.join("..v1/cert.pem"), "one");
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("..data/cert.pem", dir.join("cert.pem"))
            .unwrap_or_else(|e| panic!("{e}"));
        write(&dir.join("key.pem"), "key");
        let files = vec![dir.join("cert.pem"), dir.join("key.pem")];

        let asked = Arc::new(Notify::new());
        let watcher = tokio::spawn({
            let asked = Arc::clone(&asked);
            async move { on_change(files, Duration::from_millis(100), &asked).await }
        });
        // Nothing changed: no reload, however long it looks.
        assert!(!notified(&asked, Duration::from_millis(300)).await);

        // In place, the same length.
        write(&dir.join("key.pem"), "KEY");
        assert!(notified(&asked, Duration::from_secs(10)).await, "rewrite");

        // A new directory, then the symlink swapped atomically.
        std::fs::create_dir(dir.join("..v2")).unwrap_or_else(|e| panic!("{e}"));
        write(&dir.join("..v2/cert.pem"), "two");
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(notified(&asked, Duration::from_secs(10)).await, "swap");

        // Removed: a change too (the reload will fail and say so).
        std::fs::remove_file(dir.join("key.pem")).unwrap_or_else(|e| panic!("{e}"));
        assert!(notified(&asked, Duration::from_secs(10)).await, "removal");
        // And then still: not asked again.
        assert!(!notified(&asked, Duration::from_millis(300)).await);
        watcher.abort();
    }
}
