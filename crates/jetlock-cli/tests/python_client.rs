//! A service in another language can use jetlock with nothing but a NATS
//! client and JSON: runs `tests/python/scenario.py` and `kinds.py` (nats-py,
//! in a venv made by `tests/python/setup.sh`) against `jetlock serve` on a
//! real nats-server.

mod common;

use common::Output;
use jetlock_testkit::server::NatsServer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the Python scenario may run.
const SCENARIO_WITHIN: Duration = Duration::from_secs(120);

/// Kills the child on drop, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This crate's folder, where `tests/python` is.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, made once for every test of this file: the tests run
/// in parallel, and two `setup.sh` at once race to create one venv.
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(set_up).clone()
}

/// Runs `tests/python/setup.sh` and returns the venv's python.
fn set_up() -> PathBuf {
    let script = repo().join("tests/python/setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}): the Python test needs python3 with venv and access to PyPI \
         (nats-py).\nstdout:\n{stdout}\nstderr:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let python = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    assert!(
        python.is_file(),
        "{} did not print a python path on its last line:\n{stdout}",
        script.display()
    );
    python
}

#[test]
fn a_python_service_uses_jetlock_with_nats_py_and_json() {
    run("scenario.py", "python scenario: ok", &[]);
}

/// Read/write locks and semaphores from Python: the ordered steps and racing
/// sessions judged by their beliefs and tokens (`tests/python/kinds.py`).
#[test]
fn a_python_service_takes_read_write_locks_and_permits() {
    run("kinds.py", "python kinds: ok", &[]);
}

/// The same where the locks spread over three buckets: the client reads
/// each lock's parts in the bucket its name routes to.
#[test]
fn a_python_service_takes_read_write_locks_and_permits_over_three_buckets() {
    run("kinds.py", "python kinds: ok", &["--buckets", "3"]);
}

/// Runs `tests/python/<script>` against `jetlock serve` on a real
/// nats-server (`serve` given `serve_args`); it must exit 0 and print
/// `ok_line`.
fn run(script: &str, ok_line: &str, serve_args: &[&str]) {
    let python = python();
    let server =
        NatsServer::start_single(None).expect("start nats-server (run `bash nats/install.sh`)");
    let url = server.url();
    let mut coordinator = common::serve(&url, serve_args);

    let started = Instant::now();
    let mut scenario = Running(
        Command::new(&python)
            .arg(repo().join("tests/python").join(script))
            .arg(&url)
            .current_dir(repo().join("tests/python"))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the python scenario"),
    );
    let py_out = Output::collect(scenario.0.stdout.take().expect("stdout"), |_| {});
    let py_err = Output::collect(scenario.0.stderr.take().expect("stderr"), |_| {});
    let status = loop {
        if let Some(status) = scenario.0.try_wait().expect("wait for python") {
            break Some(status);
        }
        if started.elapsed() > SCENARIO_WITHIN {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the reader threads drain what the process wrote last.
    std::thread::sleep(Duration::from_millis(200));
    let coordinator_exit = coordinator.exit_status();
    let report = format!(
        "python stdout:\n{}\npython stderr:\n{}\njetlock serve (exit status {coordinator_exit:?}) \
         stdout:\n{}\njetlock serve stderr:\n{}",
        py_out.text(),
        py_err.text(),
        coordinator.stdout.text(),
        coordinator.stderr.text()
    );
    match status {
        None => panic!("{script} ran longer than {SCENARIO_WITHIN:?}\n{report}"),
        Some(s) if !s.success() => panic!("{script} failed ({s})\n{report}"),
        Some(_) => {}
    }
    assert!(
        py_out.text().contains(ok_line),
        "{script} exited 0 without its summary line\n{report}"
    );
    println!("{}", py_out.text());
    println!("{script} took {:?}", started.elapsed());
}
