//! `jetlock serve` children: started with none of the test's own settings,
//! ready once they print their `ready` line, signalled, killed and reaped,
//! and their output shown when the test fails.

use super::{Output, PATIENCE};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `jetlock serve --url <url> <extra>` with none of the `JETLOCK_*` and
/// `NATS_*` settings of the test's environment leaking into it.
pub fn serve_command(url: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jetlock"));
    cmd.args(["serve", "--url", url]);
    // Several coordinators run side by side: each picks a free metrics
    // port, unless the test names one.
    if !extra.contains(&"--metrics-addr") {
        cmd.args(["--metrics-addr", "127.0.0.1:0"]);
    }
    cmd.args(extra);
    for var in [
        "JETLOCK_CONFIG",
        "JETLOCK_URL",
        "JETLOCK_BUCKET",
        "JETLOCK_REPLICAS",
        "JETLOCK_ID",
        "JETLOCK_SESSION_TIMEOUT_MS",
        "JETLOCK_SESSION_TIMEOUT",
        "JETLOCK_METRICS_ADDR",
        "JETLOCK_USER",
        "JETLOCK_PASSWORD",
        "JETLOCK_TOKEN",
    ]
    .into_iter()
    .chain(super::NATS_LOGIN_VARS)
    {
        cmd.env_remove(var);
    }
    // A test killed mid-run (a hang, a Ctrl-C) leaves no coordinator behind.
    jetlock_testkit::server::dies_with_this_process(&mut cmd);
    cmd
}

/// A `jetlock serve` child that printed its `ready` line. Killed (and
/// reaped) on drop, also when the test panics; then the tail of its output
/// is printed and all of it saved (see [`Serving::print_logs`]).
pub struct Serving {
    child: Child,
    /// `jetlock serve: ready coordinator=<id> url=… bucket=… metrics=…`
    ready: String,
    /// Its stdout lines, until the `ready` line is read.
    lines: std::sync::mpsc::Receiver<String>,
    pub stdout: Output,
    pub stderr: Output,
}

/// Starts [`serve_command`]`(url, extra)` and waits up to [`PATIENCE`] for
/// its `ready` line.
pub fn serve(url: &str, extra: &[&str]) -> Serving {
    serve_within(url, extra, PATIENCE)
}

/// [`serve`], waiting up to `within` for the `ready` line.
pub fn serve_within(url: &str, extra: &[&str], within: Duration) -> Serving {
    serve_with_env(url, extra, &[], within)
}

/// [`serve_within`] with `env` set in the child's environment.
pub fn serve_with_env(
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> Serving {
    let mut serving = spawn_serve_with_env(url, extra, env);
    serving.wait_ready(within);
    serving
}

/// Starts [`serve_command`]`(url, extra)` and returns at once, ready or
/// not: see [`Serving::wait_ready`].
pub fn spawn_serve(url: &str, extra: &[&str]) -> Serving {
    spawn_serve_with_env(url, extra, &[])
}

fn spawn_serve_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Serving {
    let mut child = serve_command(url, extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jetlock serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = Output::collect(child.stdout.take().expect("stdout"), move |l| {
        let _ = tx.send(l.to_owned());
    });
    let stderr = Output::collect(child.stderr.take().expect("stderr"), |_| {});
    Serving {
        child,
        ready: String::new(),
        lines: rx,
        stdout,
        stderr,
    }
}

impl Serving {
    /// Waits up to `within` for the `ready` line.
    pub fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            // Disconnected as well as timed out: stdout closed, the child exited.
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("ready") => {
                    self.ready = line;
                    return;
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "jetlock serve did not print `ready` within {within:?} \
                     (exit status: {:?})\nstdout:\n{}\nstderr:\n{}",
                    self.exit_status(),
                    self.stdout.text(),
                    self.stderr.text()
                ),
            }
        }
    }

    /// The coordinator's id, from its `ready` line.
    pub fn id(&self) -> Option<&str> {
        self.ready_field("coordinator=")
    }

    /// Its Prometheus endpoint (`http://…/metrics`), from its `ready` line;
    /// `None` when metrics are off.
    pub fn metrics_url(&self) -> Option<&str> {
        self.ready_field("metrics=")
            .filter(|m| m.starts_with("http"))
    }

    fn ready_field(&self, name: &str) -> Option<&str> {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (`libc::SIGSTOP`, `libc::SIGCONT`, `libc::SIGTERM`, …)
    /// to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// kill -9, then reap.
    pub fn kill9(&mut self) {
        // SIGKILL, and no signal at all once reaped (its pid may be reused).
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("kill -9 coordinator {}: {e}", self.label()));
        let status = self.child.wait().expect("reap the coordinator");
        eprintln!("coordinator {} killed: {status}", self.label());
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (up to [`PATIENCE`]) for the process to exit, e.g. after a
    /// SIGTERM; how it ended.
    pub async fn exited(&mut self) -> ExitStatus {
        exited(&mut self.child, "jetlock serve").await
    }

    /// Prints the tail of the child's output and saves all of it under
    /// `target/tmp/coordinator-<id>-<test pid>.log` (with
    /// `JETLOCK_LOG=debug` it is far too long for a terminal).
    pub fn print_logs(&self) {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "coordinator-{}-{}.log",
            self.label(),
            std::process::id()
        ));
        let all = format!(
            "---- stdout ----\n{}\n---- stderr ----\n{}\n",
            self.stdout.tail(usize::MAX),
            self.stderr.tail(usize::MAX)
        );
        let saved = match std::fs::write(&path, all) {
            Ok(()) => format!("full output: {}", path.display()),
            Err(e) => format!("could not save the full output to {}: {e}", path.display()),
        };
        eprintln!(
            "---- coordinator {} ({saved}) ----\n{}\n---- stderr (tail) ----\n{}",
            self.label(),
            self.stdout.tail(20),
            self.stderr.tail(60)
        );
    }

    /// Its id, or its pid before it was ready.
    fn label(&self) -> String {
        self.id()
            .map_or_else(|| format!("pid-{}", self.child.id()), str::to_owned)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// Waits (up to [`PATIENCE`]) for a child process to exit; how it ended.
pub async fn exited(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return status;
        }
        assert!(start.elapsed() < PATIENCE, "{what} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
