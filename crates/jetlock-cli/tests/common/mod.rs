//! Helpers of the tests that run the `jetlock` binary (`jetlock serve`
//! children, the demo) and of this crate's tests only; the shared harness
//! (servers, clients, checkers) is `jetlock-testkit`, re-exported here.
#![allow(dead_code)]

pub mod demo;
pub mod lossy;

pub use jetlock_testkit::*;

use jetlock::{Client, ClientOptions};
use jetlock_testkit::server::NatsCluster;
use std::sync::Mutex;
use std::time::Duration;

/// [`cluster`] with each node's HTTP monitoring endpoint (`/varz`).
pub async fn monitored_cluster() -> NatsCluster {
    init_tracing();
    with_jetstream(NatsCluster::start_monitored(3).expect("start 3-node cluster")).await
}

pub async fn named_client(url: &str, name: &str) -> Client {
    ClientOptions::new()
        .name(name)
        .create_bucket(1)
        .connect(url)
        .await
        .expect("connect jetlock client")
}

/// `jetlock serve --url <url> <extra>` with none of the `JETLOCK_*`
/// settings of the test's environment leaking into it.
pub fn serve_command(url: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jetlock"));
    // Several coordinators run side by side: each picks a free metrics port.
    cmd.args(["serve", "--url", url, "--metrics-addr", "127.0.0.1:0"])
        .args(extra);
    for var in [
        "JETLOCK_CONFIG",
        "JETLOCK_URL",
        "JETLOCK_BUCKET",
        "JETLOCK_REPLICAS",
        "JETLOCK_ID",
        "JETLOCK_SESSION_TIMEOUT_MS",
        "JETLOCK_METRICS_ADDR",
        "JETLOCK_USER",
        "JETLOCK_PASSWORD",
    ] {
        cmd.env_remove(var);
    }
    // A test killed mid-run (a hang, a Ctrl-C) leaves no coordinator behind.
    jetlock_testkit::server::dies_with_this_process(&mut cmd);
    cmd
}

/// The permissions violations in the servers' logs, each line after the
/// name of the server that logged it. The server names the connection, its
/// user and the subject: `n1: ... - "v0.51.0:rust:<name>" -
/// "JETLOCK/user:<user>" - Publish Violation - Subject "<subject>"`.
pub fn violations(cluster: &NatsCluster) -> Vec<String> {
    cluster
        .servers()
        .iter()
        .flat_map(|s| {
            s.log()
                .lines()
                .filter(|l| l.contains("Violation"))
                .map(|l| format!("{}: {l}", s.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A `jetlock serve` child that printed its `ready` line. Killed (and
/// reaped) on drop, also when the test panics.
pub struct Serving {
    child: std::process::Child,
    pub stdout: Output,
    pub stderr: Output,
}

/// Starts [`serve_command`]`(url, extra)` and waits up to [`PATIENCE`] for
/// its `ready` line.
pub fn serve(url: &str, extra: &[&str]) -> Serving {
    use std::process::Stdio;
    let mut child = serve_command(url, extra)
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
    let mut serving = Serving {
        child,
        stdout,
        stderr,
    };
    let start = std::time::Instant::now();
    loop {
        let left = PATIENCE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("ready") => return serving,
            Ok(_) => {}
            Err(_) => panic!(
                "jetlock serve did not print `ready` within {PATIENCE:?} \
                 (exit status: {:?})\nstdout:\n{}\nstderr:\n{}",
                serving.exit_status(),
                serving.stdout.text(),
                serving.stderr.text()
            ),
        }
    }
}

impl Serving {
    /// Sends `sig` (`libc::SIGSTOP`, `libc::SIGCONT`, …) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a child process wrote on one stream, collected by a thread
/// (so the child never blocks on a full pipe) and readable at any time.
#[derive(Clone, Default)]
pub struct Output(std::sync::Arc<Mutex<String>>);

impl Output {
    /// Reads `from` line by line until EOF; each line is kept and also
    /// passed to `on_line`.
    pub fn collect(
        from: impl std::io::Read + Send + 'static,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        use std::io::BufRead;
        let out = Output::default();
        let buf = out.0.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from).lines() {
                let Ok(line) = line else { break };
                {
                    let mut b = buf.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
                on_line(&line);
            }
        });
        out
    }

    /// Everything collected so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// The last `lines` lines collected so far.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.0.lock().unwrap();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Starts `client`'s acquire of `name` (lease `ttl`, waiting up to `wait`)
/// and returns once a coordinator has queued it: its `queued` answer, which
/// the Rust client ignores, is read on `watcher` from the client's answer
/// subject. The task yields when the acquire returned, and its result.
pub async fn queued_acquire(
    watcher: &async_nats::Client,
    client: &Client,
    name: &'static str,
    ttl: Duration,
    wait: Duration,
) -> tokio::task::JoinHandle<(
    std::time::Instant,
    Result<jetlock::LockGuard, jetlock::LockError>,
)> {
    use futures::StreamExt;
    let mut answers = watcher
        .subscribe(jetlock::protocol::answer_subject(client.session()))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let c = client.clone();
    let task = tokio::spawn(async move {
        let r = c.lock(name).ttl(ttl).wait(wait).acquire().await;
        (std::time::Instant::now(), r)
    });
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = answers.next().await.expect("subscription open");
            if let Ok(jetlock::protocol::Answer::Queued { .. }) = serde_json::from_slice(&m.payload)
            {
                return;
            }
        }
    })
    .await
    .expect("the waiter is queued");
    task
}
