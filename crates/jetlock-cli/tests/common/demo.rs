//! `jetlock demo` run as a user runs it: the binary to its end, judged by
//! its JSON summary.

use super::Output;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A demo that has not finished by then has hung (it fails by itself after
/// 30 s without progress).
const LIMIT: Duration = Duration::from_secs(180);

/// How a run ended.
pub struct DemoRun {
    pub code: Option<i32>,
    pub summary: Value,
    pub stderr: String,
}

/// Runs `jetlock demo <args> --json` with `env` (and none of the test's own
/// `JETLOCK_*` login settings) to its end.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> DemoRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetlock"));
    cmd.arg("demo").args(args).arg("--json");
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
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for jetlock demo") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jetlock demo hung; stderr:\n{}", stderr.tail(30));
        }
        std::thread::sleep(Duration::from_millis(100));
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
pub const INVARIANTS: [&str; 5] = [
    "total balance conserved",
    "no transfer applied twice",
    "every transfer applied exactly once",
    "no stale write applied",
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
