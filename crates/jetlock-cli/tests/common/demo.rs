//! `jetlock demo` run as a user runs it: the binary to its end, judged by
//! its JSON summary.

use super::Output;
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A demo that has not finished by then has hung. It fails by itself after
/// 30 s without progress, so this only catches a demo that makes progress
/// forever or hangs outside its run; the cluster run with chaos has taken
/// over two minutes on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(600);

/// How a run ended.
pub struct DemoRun {
    pub code: Option<i32>,
    pub summary: Value,
    pub stderr: String,
    /// What the test saw of the demo's child processes while it ran.
    pub children: Children,
}

/// The demo's nats-server and `jetlock serve` children, as seen in /proc
/// while it ran: evidence of its chaos that does not come from the demo's
/// own counts.
#[derive(Debug, Default)]
pub struct Children {
    /// Every nats-server pid seen: more than the nodes means restarts.
    pub servers: HashSet<u32>,
    /// Times a nats-server was seen going into the stopped state (SIGSTOP).
    pub server_stops: u64,
    /// The nats-servers stopped at the last look.
    stopped: HashSet<u32>,
    /// Every `jetlock serve` pid seen.
    pub coordinators: HashSet<u32>,
}

impl Children {
    /// Looks at the children of `parent` once.
    fn look(&mut self, parent: u32) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
                continue;
            };
            let comm = &head[open + 1..];
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("");
            if fields.next().and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
                continue;
            }
            let args = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let has_arg = |arg: &[u8]| args.split(|b| *b == 0).any(|a| a == arg);
            // A server runs from a config (`-c`); `nats-server --version`,
            // which the demo asks, is no server.
            if comm == "nats-server" && has_arg(b"-c") {
                self.servers.insert(pid);
                if state != "T" {
                    self.stopped.remove(&pid);
                } else if self.stopped.insert(pid) {
                    self.server_stops += 1;
                }
            } else if has_arg(b"serve") {
                self.coordinators.insert(pid);
            }
        }
    }
}

/// Runs `jetlock demo <args> --json` with `env` (and none of the test's own
/// `JETLOCK_*` login settings) to its end.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> DemoRun {
    // The demo's servers keep their files under TMPDIR: a demo killed as
    // hung cannot remove them, this dir goes with the test.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetlock"));
    cmd.arg("demo")
        .args(args)
        .arg("--json")
        .env("TMPDIR", tmp.path());
    for var in ["JETLOCK_USER", "JETLOCK_PASSWORD", "JETLOCK_SESSION_PREFIX"] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jetlock demo");
    let stdout = Output::collect(child.stdout.take().expect("stdout"), |_| {});
    let stderr = Output::collect(child.stderr.take().expect("stderr"), |_| {});
    let started = Instant::now();
    let mut children = Children::default();
    let status = loop {
        children.look(child.id());
        if let Some(status) = child.try_wait().expect("wait for jetlock demo") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jetlock demo hung; stderr:\n{}", stderr.tail(30));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The collectors finish at EOF, right after the exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        if let Ok(v) = serde_json::from_str::<Value>(&stdout.text()) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON summary on stdout:\n{}\nstderr:\n{}",
            stdout.text(),
            stderr.tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    DemoRun {
        code: status.code(),
        summary,
        stderr: stderr.text(),
        children,
    }
}

/// The summary's count `field`.
pub fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no count {field}: {v:#}"))
}

/// Whether the invariant `name` held.
pub fn invariant(v: &Value, name: &str) -> bool {
    v["invariants"]
        .as_array()
        .expect("invariants list")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no invariant {name:?} in {v:#}"))["held"]
        .as_bool()
        .expect("held is a bool")
}

/// Every invariant the demo checks.
pub const INVARIANTS: [&str; 6] = [
    "total balance conserved",
    "no transfer applied twice",
    "every transfer applied exactly once",
    "no stale write applied",
    "every transfer applied under its own partition",
    "no account balance negative",
];

/// No process of the run is left: workers carry the run id on their
/// command line.
pub fn assert_no_process_of(run: &str) {
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let path = entry.expect("proc entry").path().join("cmdline");
        if let Ok(cmdline) = std::fs::read(&path) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(run), "left running: {cmdline}");
        }
    }
}
