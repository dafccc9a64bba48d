//! The processes the bench starts besides the nats-server: a `jetlock
//! serve` coordinator (or one in this process), `jetlock hold` lock
//! holders to kill and pause, and `jetlock elect` candidates to kill and
//! stop.
//!
//! Every child is this same binary (`std::env::current_exe()`), started with
//! `PR_SET_PDEATHSIG` (it dies with the bench even when the bench is killed
//! with SIGKILL) and `kill_on_drop` (an early return or a panic kills it);
//! [`Proc::stop`] and [`Proc::kill`] end it and reap it on the normal path.
//! A child's stderr goes to an anonymous temp file, whose end is quoted when
//! the child fails to start.

use super::CliError;
use jetlock_coordinator::{Coordinator, CoordinatorConfig};
use std::fs::File;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a child may take to print its first line.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How long a coordinator may take to leave after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// One child process of the bench.
pub(super) struct Proc {
    what: String,
    pid: u32,
    child: Child,
    /// Kept open: `jetlock hold` releases its lock when its stdin closes.
    _stdin: Option<ChildStdin>,
    /// Kept open so that a late print never meets a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    log: File,
}

impl Proc {
    /// Starts `jetlock <args>` and waits for the first stdout line that
    /// `ready` accepts; returns the process and that line.
    async fn start(
        what: String,
        args: &[&str],
        ready: impl Fn(&str) -> bool,
    ) -> Result<(Proc, String), CliError> {
        Proc::start_env(what, args, &[], ready).await
    }

    /// [`Proc::start`] with `env` set in the child's environment (where a
    /// URL with a password goes: other users can read a command line).
    async fn start_env(
        what: String,
        args: &[&str],
        env: &[(&str, &str)],
        ready: impl Fn(&str) -> bool,
    ) -> Result<(Proc, String), CliError> {
        let mut proc = Proc::spawn_env(what, args, env)?;
        let first = tokio::time::timeout(START_LIMIT, async {
            while let Some(line) = proc._stdout.next_line().await? {
                if ready(&line) {
                    return Ok(Some(line));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        match first {
            Ok(Ok(Some(line))) => Ok((proc, line)),
            outcome => {
                let why = match outcome {
                    Err(_) => format!("did not get ready within {START_LIMIT:?}"),
                    Ok(Err(e)) => format!("stdout unreadable: {e}"),
                    _ => "exited before it was ready".to_owned(),
                };
                proc.kill().await;
                Err(proc.failed(&why).into())
            }
        }
    }

    /// Starts `jetlock <args>` without waiting for anything.
    fn spawn(what: String, args: &[&str]) -> Result<Proc, CliError> {
        Proc::spawn_env(what, args, &[])
    }

    fn spawn_env(what: String, args: &[&str], env: &[(&str, &str)]) -> Result<Proc, CliError> {
        let exe = std::env::current_exe()?;
        let log = tempfile::tempfile()?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(args)
            .envs(env.iter().copied())
            // A config file named in the bench's environment is not ours.
            .env_remove("JETLOCK_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?));
        jetlock_testkit::server::dies_with_this_process(&mut cmd);
        let mut cmd = Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("could not start {what} ({}): {e}", exe.display()))?;
        let pid = child.id().ok_or("child exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("child stdout is piped")?;
        Ok(Proc {
            what,
            pid,
            child,
            _stdin: stdin,
            _stdout: BufReader::new(stdout).lines(),
            log,
        })
    }

    /// `what` went wrong with this child, with the end of its stderr.
    pub(super) fn failed(&mut self, what: &str) -> String {
        let log = self.log_tail();
        format!("{} {what}; its stderr ends with:\n{log}", self.what)
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig`. The child is not reaped before [`Proc::kill`], so the
    /// pid is still ours.
    pub(super) fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    /// SIGKILL (and SIGCONT, in case it was stopped), then reap.
    pub(super) async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.signal(libc::SIGCONT);
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_LIMIT`].
    pub(super) async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(STOP_LIMIT, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    fn log_tail(&mut self) -> String {
        jetlock_testkit::server::file_tail(&mut self.log, 4096, 20)
    }
}

/// A lock held by a `jetlock hold` child.
pub(super) struct Holder {
    pub(super) proc: Proc,
    pub(super) token: u64,
}

/// Starts `jetlock hold NAME` and waits until it holds the lock.
pub(super) async fn hold(url: &str, bucket: &str, name: &str) -> Result<Holder, CliError> {
    let args = ["hold", name, "--url", url, "--bucket", bucket];
    let (proc, line) = Proc::start(format!("`jetlock hold {name}`"), &args, |l| {
        l.starts_with('{')
    })
    .await?;
    let held: serde_json::Value = serde_json::from_str(&line)?;
    let token = held["token"]
        .as_u64()
        .ok_or_else(|| format!("`jetlock hold` printed no token: {line}"))?;
    Ok(Holder { proc, token })
}

/// Starts `jetlock elect NAME --owner OWNER -- cat`: a candidate that
/// campaigns as `owner` and, once elected, runs `cat` on the stdin this
/// bench holds open (so `cat` ends with the bench even when the candidate
/// was killed and could not stop it). Campaigning prints nothing: watch the
/// election to see it lead.
pub(super) fn candidate(
    url: &str,
    bucket: &str,
    name: &str,
    owner: &str,
) -> Result<Proc, CliError> {
    let args = [
        "elect", name, "--url", url, "--bucket", bucket, "--owner", owner, "--", "cat",
    ];
    Proc::spawn(format!("`jetlock elect {name}` ({owner})"), &args)
}

/// The value of `name` (`coordinator=`, `metrics=`) in `jetlock serve`'s
/// ready line.
fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .map(str::to_owned)
}

/// The metrics URL of `jetlock serve`'s ready line.
fn metrics_url(line: &str) -> Option<String> {
    field(line, "metrics=").filter(|m| m.starts_with("http"))
}

/// Where the bench's coordinator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CoordinatorMode {
    /// A `jetlock serve` child process, as deployed.
    Child,
    /// In the bench process, on its own NATS connection.
    InProcess,
    /// None is started: the coordinators already serving at --url.
    External,
}

/// The bench's running coordinator.
pub(super) enum Coord {
    Child {
        proc: Box<Proc>,
        id: String,
        /// `http://127.0.0.1:<port>/metrics`, on a port the child picked.
        metrics: Option<String>,
    },
    InProcess(Coordinator),
    External,
}

impl Coord {
    /// A `jetlock serve` child on a cluster, with R3 streams, logging in
    /// with the URL in `url` (passed in its environment); with its metrics
    /// URL.
    pub(super) async fn start_on_cluster(
        url: &str,
        id: &str,
    ) -> Result<(Proc, Option<String>), CliError> {
        let args = [
            "serve",
            "--replicas",
            "3",
            "--id",
            id,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        let (proc, line) = Proc::start_env(
            format!("`jetlock serve` {id}"),
            &args,
            &[("JETLOCK_URL", url)],
            |l| l.starts_with("jetlock serve: ready"),
        )
        .await?;
        Ok((proc, metrics_url(&line)))
    }

    pub(super) async fn start(
        mode: CoordinatorMode,
        url: &str,
        bucket: &str,
    ) -> Result<Coord, CliError> {
        match mode {
            CoordinatorMode::Child => {
                // Port 0: two bench coordinators, or a coordinator serving
                // beside the bench, never fight over the default port.
                let args = [
                    "serve",
                    "--url",
                    url,
                    "--bucket",
                    bucket,
                    "--metrics-addr",
                    "127.0.0.1:0",
                ];
                let (proc, line) = Proc::start("`jetlock serve`".to_owned(), &args, |l| {
                    l.starts_with("jetlock serve: ready")
                })
                .await?;
                Ok(Coord::Child {
                    proc: Box::new(proc),
                    id: field(&line, "coordinator=").unwrap_or_else(|| "?".to_owned()),
                    metrics: metrics_url(&line),
                })
            }
            CoordinatorMode::InProcess => {
                let nats = async_nats::ConnectOptions::new()
                    .name("jetlock-bench-coordinator")
                    .connect(jetlock::client::server_list(url))
                    .await?;
                let config = CoordinatorConfig {
                    bucket: bucket.to_owned(),
                    ..CoordinatorConfig::default()
                };
                Ok(Coord::InProcess(Coordinator::start(nats, config).await?))
            }
            CoordinatorMode::External => Ok(Coord::External),
        }
    }

    /// For the report.
    pub(super) fn describe(&self) -> String {
        match self {
            Coord::Child { proc, id, .. } => {
                format!("`jetlock serve` child process (pid {}, {id})", proc.pid())
            }
            Coord::InProcess(c) => format!("in the bench process ({})", c.id()),
            Coord::External => "external (already serving at --url)".to_owned(),
        }
    }

    /// The child's pid and metrics URL; `None` unless it is a child.
    pub(super) fn child(&self) -> Option<(u32, Option<&str>)> {
        match self {
            Coord::Child { proc, metrics, .. } => Some((proc.pid(), metrics.as_deref())),
            Coord::InProcess(_) | Coord::External => None,
        }
    }

    pub(super) async fn stop(self) {
        match self {
            Coord::Child { proc, .. } => proc.stop().await,
            Coord::InProcess(c) => c.shutdown().await,
            Coord::External => {}
        }
    }
}
