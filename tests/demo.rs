//! `jetlock demo` end to end, as a user runs it: the binary on the embedded
//! default, with chaos, judged by its JSON summary.

mod common;

use common::Output;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A demo that has not finished by then has hung (it fails by itself after
/// 30 s without progress).
const LIMIT: Duration = Duration::from_secs(180);

struct Run {
    code: Option<i32>,
    summary: Value,
    stderr: String,
}

/// Runs `jetlock demo --workers 4 --accounts 50 --transfers <transfers>
/// --chaos <extra> --json` to its end.
fn chaos_demo(transfers: u64, extra: &[&str]) -> Run {
    let transfers = transfers.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetlock"))
        .args(["demo", "--workers", "4", "--accounts", "50"])
        .args(["--transfers", &transfers, "--chaos"])
        .args(extra)
        .arg("--json")
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
    Run {
        code: status.code(),
        summary,
        stderr: stderr.text(),
    }
}

fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no count {field}: {v:#}"))
}

fn invariant(v: &Value, name: &str) -> bool {
    v["invariants"]
        .as_array()
        .expect("invariants list")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no invariant {name:?} in {v:#}"))["held"]
        .as_bool()
        .expect("held is a bool")
}

/// No process of the run is left: workers carry the run id on their
/// command line.
fn assert_no_process_of(run: &str) {
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let path = entry.expect("proc entry").path().join("cmdline");
        if let Ok(cmdline) = std::fs::read(&path) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(run), "left running: {cmdline}");
        }
    }
}

#[test]
fn chaos_run_applies_every_transfer_exactly_once() {
    let run = chaos_demo(2000, &[]);
    let s = &run.summary;
    assert_eq!(run.code, Some(0), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    assert_eq!(s["invariants_held"], true, "{s:#}");
    for name in [
        "total balance conserved",
        "no transfer applied twice",
        "every transfer applied exactly once",
        "no stale write applied",
        "no account balance negative",
    ] {
        assert!(invariant(s, name), "{name} failed: {s:#}");
    }
    assert_eq!(count(s, "applied"), 2000);
    // Chaos really struck, and each kind of strike exercised its defence.
    let kills = count(s, "kills");
    assert!(kills > 0 && count(s, "pauses") > 0, "{s:#}");
    assert_eq!(count(s, "respawns"), kills, "every killed worker replaced");
    assert_eq!(count(s, "worker_crashes"), 0, "{s:#}");
    // A kill lands after the commit and before the ack: every one comes
    // back as a redelivery that the ledger must refuse.
    assert!(count(s, "duplicates_refused") >= kills, "{s:#}");
    // A pause outlasts the session: the sleeper's write meets the fence.
    assert!(count(s, "fenced_stale_writes") > 0, "{s:#}");
    assert!(count(s, "acquisitions") >= 2000);
    assert_no_process_of(s["run"].as_str().expect("run id"));
}

#[test]
fn a_ledger_that_applies_redeliveries_fails_the_run() {
    let run = chaos_demo(500, &["--fault", "double-apply"]);
    let s = &run.summary;
    assert_eq!(run.code, Some(1), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    assert_eq!(s["invariants_held"], false);
    assert!(!invariant(s, "no transfer applied twice"), "{s:#}");
    assert!(
        run.stderr
            .contains("invariant failed: no transfer applied twice"),
        "stderr:\n{}",
        run.stderr
    );
    // The money still adds up: only process-once was broken.
    assert!(invariant(s, "total balance conserved"));
    assert_no_process_of(s["run"].as_str().expect("run id"));
}
