//! `jetlock hold` children: lock holders in another process, to kill,
//! pause or interrupt.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `jetlock hold` child, killed and reaped on drop (also when the test
/// panics: its client would otherwise retry a dead server forever).
pub struct HoldProcess(pub Child);

impl Drop for HoldProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `jetlock hold NAME` (with `extra` flags, such as `--read`) in a
/// child process; returns it and its token once it holds.
pub fn hold_process(url: &str, name: &str, extra: &[&str]) -> (HoldProcess, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetlock"))
        .args(["hold", name, "--url", url, "--ttl-ms", "10000"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jetlock hold");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("hold prints its token");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
    (HoldProcess(child), v["token"].as_u64().unwrap())
}

pub fn signal(child: &HoldProcess, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as i32, sig);
    }
}

/// Waits (up to `PATIENCE`) for the child to exit; its exit code.
pub async fn exit_code(child: &mut HoldProcess) -> Option<i32> {
    super::serving::exited(&mut child.0, "jetlock hold")
        .await
        .code()
}
