//! A peer's server process: found on the machine, started on a free
//! loopback port in a temp dir, killed (with `PR_SET_PDEATHSIG`, and on
//! drop) when the bench is done with it.

use super::CliError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// How long a peer may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);

/// `name` in a directory of `PATH`.
pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Debian's newest `/usr/lib/postgresql/<major>/bin/postgres`, else one on
/// `PATH`.
pub(super) fn postgres_binary() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin/postgres");
            bin.is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin);
    newest.or_else(|| on_path("postgres"))
}

/// The version `<binary> --version` prints.
pub(super) fn version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    version_in(&String::from_utf8_lossy(&out.stdout))
}

/// The first word of a `--version` text that looks like a version:
/// `Redis server v=7.0.15 sha=…`, `postgres (PostgreSQL) 15.18 (Debian …)`,
/// `etcd Version: 3.4.23`.
fn version_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches("v=").trim_start_matches('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_owned)
}

/// A running peer server.
pub(super) struct Service {
    what: String,
    child: Child,
    port: u16,
    log: PathBuf,
    /// Removed after the process is killed (fields drop after `drop`).
    _dir: TempDir,
}

impl Service {
    /// A fresh temp dir and a free port for a server about to start.
    pub(super) fn prepare(what: &str) -> Result<(TempDir, u16), CliError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("jetlock-bench-{what}-"))
            .tempdir()?;
        let port = jetlock_testkit::server::free_ports(1)?[0];
        Ok((dir, port))
    }

    /// Spawns `cmd` (output to `<dir>/server.log`) and waits until `port`
    /// accepts connections.
    pub(super) async fn start(
        what: &str,
        mut cmd: Command,
        dir: TempDir,
        port: u16,
    ) -> Result<Service, CliError> {
        let log = dir.path().join("server.log");
        let file = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        jetlock_testkit::server::dies_with_this_process(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {what}: {e}"))?;
        let mut service = Service {
            what: what.to_owned(),
            child,
            port,
            log,
            _dir: dir,
        };
        service.wait_listening().await?;
        Ok(service)
    }

    async fn wait_listening(&mut self) -> Result<(), CliError> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            let exited = self.child.try_wait()?.is_some();
            if exited || Instant::now() >= deadline {
                let why = if exited {
                    "exited".to_owned()
                } else {
                    format!("did not listen within {START_LIMIT:?}")
                };
                return Err(self.failed(&why).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Retries `connect` until it works, up to [`START_LIMIT`]: a server
    /// listens before it serves. `refusal` says what it did not do.
    pub(super) async fn wait_serving<T>(
        &self,
        refusal: &str,
        mut connect: impl AsyncFnMut() -> Result<T, CliError>,
    ) -> Result<(), CliError> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match connect().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.failed(&format!("{refusal}: {e}")).into())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `what` went wrong, with the end of the server's log.
    pub(super) fn failed(&self, what: &str) -> String {
        let tail = std::fs::File::open(&self.log)
            .map(|mut f| jetlock_testkit::server::file_tail(&mut f, 4096, 10))
            .unwrap_or_default();
        format!("{} {what}; its log ends with:\n{tail}", self.what)
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_version_in_what_each_peer_prints() {
        let redis = "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d";
        assert_eq!(version_in(redis).as_deref(), Some("7.0.15"));
        let postgres = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)";
        assert_eq!(version_in(postgres).as_deref(), Some("15.18"));
        let etcd = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(version_in(etcd).as_deref(), Some("3.4.23"));
        assert_eq!(version_in("no version here"), None);
    }
}
