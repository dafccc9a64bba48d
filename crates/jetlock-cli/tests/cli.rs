//! The `jetlock` binary: the dev walk-through, clean stops (no orphan
//! nats-server), `locks --json`, exit codes and error lines, durations,
//! colour, completions and the man page, `config` showing what the
//! coordinators apply, `members` naming each session's client (the short
//! bench runs are `tests/bench.rs`).

mod common;

use common::{client, coordinator, jetlock, serve, single, PATIENCE};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `jetlock dev --no-demo` and returns it with its nats-server pid,
/// read from its first output line, and the temp dir it keeps its server's
/// files in: a SIGKILLed `jetlock dev` cannot remove them, the test does.
fn start_dev() -> (Running, u32, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut child = Running(
        jetlock()
            .args(["dev", "--port", "0", "--no-demo"])
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jetlock dev"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let mut pid = None;
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(rest) = line.split("(pid ").nth(1) {
            pid = rest.trim_end_matches(')').parse().ok();
        }
        if line.starts_with("serving") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (
        child,
        pid.expect("jetlock dev printed the nats-server pid"),
        tmp,
    )
}

/// True once `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_exited(pid: u32) {
    let start = Instant::now();
    while !exited(pid) {
        assert!(
            start.elapsed() < PATIENCE,
            "nats-server {pid} outlived jetlock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dev_walk_through_runs_and_exits_cleanly() {
    let out = jetlock()
        .args(["dev", "--port", "0", "--once"])
        .output()
        .expect("run jetlock dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "try-lock: busy",
        "was granted it after",
        "worker-b was granted order:7",
        "ledger refused worker-a: stale fencing token",
        "both transfers completed",
        "holds invoice:9 2 times",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

#[test]
fn ctrl_c_stops_dev_and_its_server() {
    let (mut dev, server_pid, _tmp) = start_dev();
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGINT) };
    let status = dev.0.wait().expect("wait for jetlock dev");
    assert!(status.success(), "{status}");
    wait_exited(server_pid);
}

#[test]
fn a_killed_dev_takes_its_server_with_it() {
    let (dev, server_pid, tmp) = start_dev();
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGKILL) };
    drop(dev);
    wait_exited(server_pid);
    // What the killed process left is in the test's temp dir, removed here.
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_some(),
        "jetlock dev kept its server's files under TMPDIR"
    );
}

#[tokio::test]
async fn locks_lists_held_locks_as_json_and_filters_by_prefix() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let held = c.lock("account:42").owner("txn-9").acquire().await.unwrap();
    let other = c.lock("order:1").acquire().await.unwrap();
    let out = jetlock()
        .args(["locks", "account", "--json", "--url", &server.url()])
        .output()
        .expect("run jetlock locks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    let views = views.as_array().expect("an array");
    assert_eq!(views.len(), 1, "prefix filter: {views:?}");
    assert_eq!(views[0]["name"], "account:42");
    assert_eq!(views[0]["owner"], "txn-9");
    assert_eq!(views[0]["token"], held.token().get());
    assert_eq!(views[0]["session"], c.session());

    let out = jetlock()
        .args(["locks", "--url", &server.url()])
        .output()
        .expect("run jetlock locks");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("account:42") && table.contains("order:1"),
        "{table}"
    );
    other.release().await.unwrap();
    held.release().await.unwrap();
}

#[tokio::test]
async fn locks_shows_readers_writers_and_permits_under_the_name_they_lock() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let r1 = c.read_lock("ledger").acquire().await.unwrap();
    let r2 = c.read_lock("ledger").acquire().await.unwrap();
    let permit = c.semaphore("bank", 4).acquire().await.unwrap();
    let out = jetlock()
        .args(["locks", "--json", "--url", &server.url()])
        .output()
        .expect("run jetlock locks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    let kinds: Vec<(String, String)> = views
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    let count =
        |name: &str, kind: &str| kinds.iter().filter(|(n, k)| n == name && k == kind).count();
    // A session's reads share one key, its holds counted.
    assert_eq!(count("ledger", "read"), 1, "{kinds:?}");
    let read = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "read")
        .unwrap();
    assert_eq!(read["holds"], 2, "{read}");
    assert_eq!(count("bank", "permit"), 1, "{kinds:?}");
    let shown = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "permit")
        .unwrap();
    assert_eq!(shown["permit"], permit.index());
    assert_eq!(shown["token"], permit.token().get());
    for r in [r1, r2] {
        r.release().await.unwrap();
    }
    permit.release().await.unwrap();
}

#[test]
fn errors_exit_1_and_usage_errors_exit_2() {
    let out = jetlock()
        .args(["locks", "--url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not connect to NATS"));
    let out = jetlock().args(["no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A lock name that cannot be is a usage error too, whatever the server.
    let long = "a".repeat(300);
    for name in ["", long.as_str()] {
        let out = jetlock()
            .args(["hold", name, "--url", "nats://127.0.0.1:1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {err}");
        assert!(err.contains("lock name"), "{err}");
    }
    for cmd in [
        &["history", ""][..],
        &["release", "", "--force", "--reason", "x"],
        &["serve", "--threads", "0"],
        &["serve", "--threads", "257"],
    ] {
        let out = jetlock()
            .args(cmd)
            .args(["--url", "nats://127.0.0.1:1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {out:?}");
    }
}

/// A refused connection is one line, not the same words once per link of
/// the error chain.
#[test]
fn an_error_is_said_once() {
    let out = jetlock()
        .args(["locks", "--url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Durations take units everywhere, and the old `-ms` flags with plain
/// integers still parse: the flags pass and the (empty) name is what is
/// refused, before any connection.
#[test]
fn duration_flags_take_units_and_the_old_ms_flags_still_work() {
    for flags in [
        &["--ttl", "10s", "--wait", "1m", "--session-timeout", "900ms"][..],
        &[
            "--ttl-ms",
            "10000",
            "--wait-ms",
            "0",
            "--session-timeout-ms",
            "900",
        ],
        &["--ttl-ms", "10s"],
    ] {
        let out = jetlock().args(["hold", ""]).args(flags).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lock name is empty"), "{flags:?}: {err}");
    }
    for flags in [
        &["--permits", "0"][..],
        &["--permits", "1025"],
        &["--read", "--write"],
        &["--read", "--permits", "2"],
    ] {
        let out = jetlock().args(["hold", "x"]).args(flags).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {out:?}");
    }
    let out = jetlock()
        .args(["hold", "", "--ttl", "soon"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a duration"), "{err}");
    for window in ["soon", "500ms"] {
        let out = jetlock()
            .args(["bench", "--contention", window])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{window}: {out:?}");
    }
    let out = jetlock()
        .args([
            "release", "job:1", "--force", "--reason", "x", "--grace", "5s",
        ])
        .args(["--url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// Logs on a stderr that is not a terminal carry no colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour() {
    let out = jetlock()
        .args(["locks", "--url", "nats://127.0.0.1:1"])
        .env("JETLOCK_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DEBUG") || err.contains("WARN"),
        "no log lines: {err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// On a terminal logs are coloured, unless NO_COLOR is set. `script`
/// (util-linux) gives the command a terminal.
#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let on_a_terminal = |no_color: Option<&str>| {
        let line = format!(
            "{} locks --url nats://127.0.0.1:1",
            env!("CARGO_BIN_EXE_jetlock")
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env("JETLOCK_LOG", "debug")
            .env_remove("JETLOCK_URL")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("script (util-linux) runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(None);
    assert!(coloured.contains("DEBUG"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(plain.contains("DEBUG"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = jetlock().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["hold", "members", "doctor", "session-timeout"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = jetlock().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = jetlock().arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH jetlock 1"), "{page}");
    assert!(
        page.contains("doctor") && page.contains("completions"),
        "{page}"
    );
    // A command's own page has its flags.
    let out = jetlock().args(["man", "hold"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH jetlock-hold 1"), "{page}");
    assert!(page.contains("ttl") && page.contains("owner"), "{page}");
    let out = jetlock().args(["man", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `setup` on one server: three replicas (the default) fail with the hint
/// to pass one; one replica is ready; asking for three again on the
/// existing one-replica bucket fails and says what it has, rather than
/// "ready".
#[test]
fn setup_says_what_the_server_and_the_existing_bucket_allow() {
    let server = single();
    let url = server.url();
    let setup = |replicas: &str| {
        jetlock()
            .args(["setup", "--url", &url, "--replicas", replicas])
            .output()
            .expect("run jetlock setup")
    };
    let out = setup("3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pass --replicas 1"), "{err}");

    let out = setup("1");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));

    let out = setup("3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exists with 1 replica(s), not the 3 asked for"),
        "{err}"
    );
}

/// `locks --bucket` names the bucket listed even while coordinators of
/// another bucket answer: theirs is not shown for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_the_bucket_asked_for_not_the_coordinators_one() {
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let holder = client(&url, 1).await;
    let _guard = holder.lock("shown:1").try_acquire().await.expect("free");
    let locks = |bucket: Option<&str>| {
        let mut cmd = jetlock();
        cmd.args(["locks", "--url", &url, "--json"]);
        if let Some(b) = bucket {
            cmd.args(["--bucket", b]);
        }
        cmd.output().expect("run jetlock locks")
    };
    let out = locks(None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("shown:1"));
    let out = locks(Some("NOPE"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains("shown:1"), "{stdout}");
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("NOPE"), "{stderr}");
}

/// Writes `text` to a temporary TOML file for `jetlock serve --config`.
fn config_file(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
    file.write_all(text.as_bytes()).expect("write the config");
    file
}

fn config_list(url: &str) -> (serde_json::Value, String) {
    let out = jetlock()
        .args(["config", "list", "--json", "--url", url])
        .output()
        .expect("run jetlock config list");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (
        serde_json::from_slice(&out.stdout).expect("--json parses"),
        err,
    )
}

fn row(list: &serde_json::Value, key: &str) -> serde_json::Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .clone()
}

/// `config list` and `get` show what the coordinators apply (their file,
/// flags, the bucket) and say when they disagree; nothing is read from the
/// compiled defaults alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_what_coordinators_apply_and_where_it_comes_from() {
    let server = single();
    let url = server.url();
    let file = config_file(
        "default_ttl = \"20s\"\nmax_waiters = 77\n[policies.\"acct\"]\nmax_waiters = 3\n",
    );
    let path = file.path().to_str().expect("a utf-8 path");
    let _serving = serve(
        &url,
        &[
            "--config",
            path,
            "--session-timeout",
            "2s",
            "--id",
            "c-file",
        ],
    );

    let (list, err) = config_list(&url);
    assert_eq!(row(&list, "default_ttl_ms")["value"], 20_000, "{list}");
    assert_eq!(row(&list, "default_ttl_ms")["source"], "file");
    assert_eq!(row(&list, "max_waiters")["source"], "file");
    assert_eq!(row(&list, "session_timeout_ms")["value"], 2000);
    assert_eq!(row(&list, "session_timeout_ms")["source"], "flag");
    assert_eq!(row(&list, "max_wait_ms")["source"], "default");
    assert_eq!(row(&list, "policy.acct")["value"]["max_waiters"], 3);
    assert!(!err.contains("disagree"), "{err}");
    let out = jetlock()
        .args(["config", "get", "default_ttl", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20000");

    // A second coordinator with the compiled defaults: they disagree.
    let _defaults = coordinator(&url).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (list, err) = config_list(&url);
        let ttl = row(&list, "default_ttl_ms");
        if ttl["disagree"].as_array().is_some_and(|d| d.len() == 2) {
            assert!(
                err.contains("coordinators disagree on default_ttl_ms"),
                "{err}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no disagreement shown: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The bucket wins on both, and is named as the source.
    let out = jetlock()
        .args(["config", "set", "default_ttl", "15s", "--url", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    loop {
        let (list, _) = config_list(&url);
        let ttl = row(&list, "default_ttl_ms");
        if ttl["source"] == "bucket" && ttl.get("disagree").is_none() {
            assert_eq!(ttl["value"], 15_000);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bucket's value not applied: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A read never creates the config bucket.
#[tokio::test]
async fn config_list_without_coordinators_creates_nothing() {
    let server = single();
    let url = server.url();
    let (list, err) = config_list(&url);
    assert!(err.contains("no coordinator answered"), "{err}");
    assert_eq!(row(&list, "default_ttl_ms")["source"], "default");
    let nats = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    assert!(
        js.get_stream("KV_jetlock_config").await.is_err(),
        "config list created the bucket"
    );
}

/// `jetlock hold` names its owner after its host and pid, and `members`
/// shows each session's client name, host and pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_and_sessions_say_who_they_are() {
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let mut hold = Running(
        jetlock()
            .args(["hold", "who:1", "--url", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn jetlock hold"),
    );
    let mut line = String::new();
    BufReader::new(hold.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("hold prints its token");
    let held: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let pid = held["pid"].as_u64().expect("a pid");
    let session = held["session"].as_str().expect("a session").to_owned();

    let out = jetlock()
        .args(["locks", "--json", "--url", &url])
        .output()
        .unwrap();
    let locks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    let owner = locks[0]["owner"].as_str().expect("an owner").to_owned();
    assert!(
        owner.starts_with("hold@") && owner.ends_with(&format!(":{pid}")),
        "{owner}"
    );

    let out = jetlock()
        .args(["members", "--json", "--url", &url])
        .output()
        .unwrap();
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    let me = members["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session"] == session.as_str())
        .unwrap_or_else(|| panic!("{session} not in {members}"))
        .clone();
    assert_eq!(me["client"]["name"], "jetlock-hold", "{me}");
    assert_eq!(me["client"]["pid"], pid, "{me}");
    assert!(me["client"]["host"].is_string(), "{me}");
    let out = jetlock().args(["members", "--url", &url]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("jetlock-hold ") && table.contains(&format!(":{pid}")),
        "{table}"
    );
    drop(hold.0.stdin.take());
}
