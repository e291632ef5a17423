//! A throw-away PostgreSQL server for one test: Debian's `postgresql`
//! package, a new cluster (`initdb`) in a temporary directory, started with
//! `pg_ctl` on a free loopback port, and stopped and removed on drop.
//!
//! When the package is missing the tests that need it are skipped with a
//! line that says how to install it, unless `CATALOG_REQUIRE_POSTGRES` is
//! set (`.ci/run` sets it): then they fail.

use std::path::PathBuf;
use std::process::Command;

use crate::SetupResult;

/// The variable that turns a missing PostgreSQL into a failure.
pub const REQUIRE: &str = "CATALOG_REQUIRE_POSTGRES";

/// A running PostgreSQL cluster, owned by this test.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `Some("postgres")` when the server runs as that user (the tests run
    /// as root, which PostgreSQL refuses to run as).
    user: Option<&'static str>,
}

impl Postgres {
    /// Starts a cluster, or `None` (after saying why on stderr) when
    /// PostgreSQL is not installed and [`REQUIRE`] is not set.
    ///
    /// # Errors
    /// PostgreSQL is missing and required, or would not start.
    pub fn start() -> SetupResult<Option<Self>> {
        let Some(bin) = binaries() else {
            if std::env::var_os(REQUIRE).is_some() {
                return Err(format!(
                    "{REQUIRE} is set but PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
                )
                .into());
            }
            eprintln!(
                "SKIPPED: PostgreSQL is not installed; apt-get install postgresql to run this test"
            );
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let user = is_root().then_some("postgres");
        if let Some(user) = user {
            run(Command::new("chown").arg("-R").arg(user).arg(dir.path()))?;
        }
        let port = free_port()?;
        let cluster = Self {
            bin,
            dir,
            port,
            user,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            cluster.dir.path().display()
        );
        let log = format!("{}/server.log", cluster.dir.path().display());
        cluster.pg(
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        )?;
        Ok(Some(cluster))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, with `password` in
    /// it when given (the cluster trusts loopback, so any is accepted).
    pub fn url(&self, password: Option<&str>) -> String {
        let secret = password.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "postgres://postgres{secret}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown): clients see their connections
    /// closed, as when PostgreSQL is restarted.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub fn stop(&self) -> SetupResult<()> {
        self.pg("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &self.data()])
    }

    /// Starts it again on the same port, with the same data.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    pub fn restart(&self) -> SetupResult<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = format!("{}/server.log", self.dir.path().display());
        self.pg(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
            ],
        )
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn pg(&self, tool: &str, args: &[&str]) -> SetupResult<()> {
        let tool = self.bin.join(tool);
        let mut command = match self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&tool);
                command
            }
            None => Command::new(&tool),
        };
        run(command.args(args).current_dir(self.dir.path()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.data()],
        );
    }
}

/// The newest `/usr/lib/postgresql/N/bin` that has `initdb`.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn free_port() -> SetupResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(command: &mut Command) -> SetupResult<()> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} failed ({}): {}{}",
        command.get_program(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .into())
}
