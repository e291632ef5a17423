//! A service binary run as a child process, for what only a process shows:
//! its own peak memory, signals, its real start-up.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{HANG, SetupResult};

/// A running service binary, killed if dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its log, read as it comes: a child whose stderr pipe fills up
    /// blocks on its next log line, which a test would take for a hang.
    log: mpsc::UnboundedReceiver<String>,
    addr: SocketAddr,
    started: String,
    /// The catalog's SQLite database, removed with the process.
    _data: tempfile::TempDir,
}

impl Process {
    /// Starts `binary` with `args`, `RUST_LOG=info` and text logs, and
    /// waits for the start-up line holding `marker` followed by the bound
    /// address (for discount `"Running Discount service on "`).
    ///
    /// # Errors
    /// It could not start, exited, or did not log `marker` within [`HANG`].
    pub async fn start(binary: &Path, args: &[String], marker: &str) -> SetupResult<Self> {
        Self::start_with_env(binary, args, marker, &[("LOG_FORMAT", "text")]).await
    }

    /// [`Process::start`] with the environment variables `env` added (a
    /// `LOG_FORMAT` there replaces the text default). The catalog's
    /// database (`CATALOG_DATABASE_URL`, unless `env` or `args` name one)
    /// is a new SQLite file in a directory removed with the process.
    ///
    /// # Errors
    /// As [`Process::start`].
    pub async fn start_with_env(
        binary: &Path,
        args: &[String],
        marker: &str,
        env: &[(&str, &str)],
    ) -> SetupResult<Self> {
        let data = tempfile::tempdir()?;
        let database = format!("sqlite://{}", data.path().join("catalog.db").display());
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("CATALOG_DATABASE_URL", database)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (lines, mut log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = line_with(&mut log, marker).await?;
        let addr = line
            .split(marker)
            .nth(1)
            // The address ends at a space, or at the quote closing a JSON
            // message.
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .ok_or("no address in the start-up line")?
            .parse()?;
        Ok(Self {
            child,
            log,
            addr,
            started: line,
            _data: data,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The start-up line it logged.
    pub fn started_line(&self) -> &str {
        &self.started
    }

    /// Where its `--metrics-addr` listener is, as its start-up line says
    /// (`metrics=http://ADDR/metrics`).
    ///
    /// # Errors
    /// The line names no metrics address.
    pub fn metrics_addr(&self) -> SetupResult<std::net::SocketAddr> {
        Ok(self
            .started
            .split("metrics=http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("no metrics address in {}", self.started))?
            .parse()?)
    }

    /// Its process id.
    ///
    /// # Errors
    /// It has exited.
    pub fn pid(&self) -> SetupResult<u32> {
        Ok(self.child.id().ok_or("the process has exited")?)
    }

    /// Its peak resident memory so far (`VmHWM`), in MiB.
    ///
    /// # Errors
    /// `/proc` could not be read.
    pub fn peak_rss_mb(&self) -> SetupResult<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or("no VmHWM in /proc/PID/status")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    /// Its peak resident memory at the end of `period`, read every 100 ms,
    /// or as soon as it passes `limit` MiB: a test of a bound stops the
    /// attack there rather than let an unbounded server take the machine.
    ///
    /// # Errors
    /// `/proc` could not be read.
    pub async fn peak_rss_mb_during(&self, period: Duration, limit: f64) -> SetupResult<f64> {
        let until = tokio::time::Instant::now() + period;
        let mut peak = self.peak_rss_mb()?;
        while tokio::time::Instant::now() < until && peak < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = self.peak_rss_mb()?;
        }
        Ok(peak)
    }

    /// Waits for a log line holding `needle`, within [`HANG`].
    ///
    /// # Errors
    /// It exited first, or took too long.
    pub async fn logged(&mut self, needle: &str) -> SetupResult<String> {
        line_with(&mut self.log, needle).await
    }

    /// Sends `signal` (`"HUP"`, `"TERM"`).
    ///
    /// # Errors
    /// `kill` failed.
    pub async fn signal(&self, signal: &str) -> SetupResult<()> {
        let pid = self.pid()?.to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await?;
        if sent.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} failed").into())
        }
    }

    /// Whether it catches `signal` (`"HUP"`, `"INT"`, `"TERM"`) now, as the
    /// kernel records it (`SigCgt` in `/proc/PID/status`): a caught signal
    /// runs the process's handler; one not caught meets its default
    /// action, which for these three ends the process.
    ///
    /// # Errors
    /// An unknown signal name, or `/proc` could not be read.
    pub fn catches(&self, signal: &str) -> SetupResult<bool> {
        let number = match signal {
            "HUP" => 1,
            "INT" => 2,
            "TERM" => 15,
            other => return Err(format!("unknown signal {other:?}").into()),
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .ok_or("no SigCgt line in /proc/PID/status")?;
        let mask = u64::from_str_radix(mask.trim(), 16)?;
        Ok(mask & (1 << (number - 1)) != 0)
    }

    /// Waits for it to exit, within [`HANG`]; what it logged until then
    /// can still be read with [`Process::logged`].
    ///
    /// # Errors
    /// It did not exit in time.
    pub async fn exited(&mut self) -> SetupResult<ExitStatus> {
        Ok(tokio::time::timeout(HANG, self.child.wait()).await??)
    }

    /// Sends SIGTERM and waits for the exit, within [`HANG`].
    ///
    /// # Errors
    /// It did not exit in time.
    pub async fn terminate(mut self) -> SetupResult<ExitStatus> {
        self.signal("TERM").await?;
        self.exited().await
    }
}

/// Reads `lines` until one contains `needle`; returns it.
async fn line_with(
    lines: &mut mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> SetupResult<String> {
    let find = async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return Ok(line);
            }
        }
        Err(format!("the process exited before logging {needle:?}").into())
    };
    tokio::time::timeout(HANG, find).await?
}
