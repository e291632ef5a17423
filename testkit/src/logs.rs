//! Log output captured for one test, to check what an operator would read.
//!
//! One global subscriber, installed by the first capture, writes every
//! event at INFO and above into the buffer of the thread it happens on, if
//! that thread is capturing. A thread-local subscriber (`set_default`) is
//! not enough: `tracing` caches per call site whether anyone listens, and a
//! test on another thread that reaches the call site first, with no
//! subscriber, can make a capturing test miss its events. Tokio's test
//! runtime runs on one thread, so the servers a test starts in-process log
//! into that test's buffer.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use crate::HANG;

thread_local! {
    static CURRENT: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Everything logged on this thread while the guard of [`Logs::capture`]
/// lives.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

/// Capturing on this thread until dropped.
#[derive(Debug)]
pub struct Capturing(());

impl Drop for Capturing {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
    }
}

impl Logs {
    /// Starts capturing this thread's log at INFO and above; stops when the
    /// guard is dropped.
    pub fn capture() -> (Self, Capturing) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ToCurrentThread)
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .finish();
            // Err: the test binary installed its own; then it decides.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let logs = Self::default();
        CURRENT.with(|current| *current.borrow_mut() = Some(logs.clone()));
        (logs, Capturing(()))
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The lines holding `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (at most [`HANG`]) for a line holding `needle`, which another
    /// task may still be about to log; returns it.
    pub async fn line_with(&self, needle: &str) -> Option<String> {
        let started = std::time::Instant::now();
        loop {
            if let Some(line) = self.lines_with(needle).into_iter().next() {
                return Some(line);
            }
            if started.elapsed() > HANG {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A [`Logs`] is also a writer, for a test binary that installs its own
/// subscriber (`init_with(..., move || logs.clone())`) rather than
/// [`Logs::capture`]'s: everything written is kept, whatever the thread.
impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn append(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
    }

    /// The lines written as JSON whose `message` is `message`, parsed.
    /// A line that is not JSON fails the test: a JSON log has none.
    pub fn json_messages(&self, message: &str) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"))
            })
            .filter(|line| line["message"] == message)
            .collect()
    }
}

/// Writes into the capturing buffer of the current thread, if any.
struct ToCurrentThread;

impl std::io::Write for ToCurrentThread {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|current| {
            if let Some(logs) = &*current.borrow() {
                logs.append(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
