//! `jetlock elect` and `jetlock leader` against a real nats-server: the
//! command runs once while leader and is stopped when the leadership is
//! lost; a command that ends resigns for the next candidate.

mod common;

use common::{client, coordinator, single, PATIENCE};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

fn jetlock(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jetlock"));
    // In the environment: `elect` takes no flags after its command.
    command.env("JETLOCK_URL", url).env_remove("JETLOCK_BUCKET");
    for var in common::NATS_LOGIN_VARS {
        command.env_remove(var);
    }
    command
}

/// A child process whose stdout and stderr lines arrive on channels; it is
/// killed if the test ends first.
struct Running {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jetlock");
        let lines = |from: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().expect("stdout")));
        let err = lines(Box::new(child.stderr.take().expect("stderr")));
        Running { child, out, err }
    }

    /// The wait for the next line on `from` that `matches`.
    fn line(from: &Receiver<String>, matches: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        loop {
            let line = from
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("no such line ({e}) in {seen:#?}"));
            if matches(&line) {
                return line;
            }
            seen.push(line);
        }
    }

    /// The term `jetlock elect` announces on stderr once elected.
    fn elected(&self) -> (u64, String) {
        let line = Running::line(&self.err, |l| l.contains("leader of"));
        let term = line.split("term ").nth(1).and_then(|t| t.split(' ').next());
        let session = line
            .split("session ")
            .nth(1)
            .and_then(|t| t.split(')').next());
        let term = term.and_then(|t| t.parse().ok()).expect("a term");
        (term, session.expect("a session").to_owned())
    }

    fn exit_code(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(std::time::Instant::now() < deadline, "jetlock never exited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leader_json(url: &str, name: &str) -> (i32, serde_json::Value) {
    let out = jetlock(url)
        .args(["leader", name, "--json"])
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_runs_the_command_once_and_stops_it_when_leadership_is_lost() {
    let server = single();
    let url = server.url();
    let _bucket = client(&url, 1).await;
    let _coordinator = coordinator(&url).await;
    // The command says when it starts (with its term) and when SIGTERM
    // stops it.
    let script = r#"echo "started $JETLOCK_TERM"; trap 'echo stopped; exit 0' TERM; while :; do sleep 0.1; done"#;
    let mut elect = jetlock(&url);
    elect.args(["elect", "jobs", "--grace", "10s", "--", "sh", "-c", script]);
    let mut elect = Running::spawn(elect);
    let (term, session) = elect.elected();
    let started = Running::line(&elect.out, |l| l.starts_with("started"));
    assert_eq!(
        started,
        format!("started {term}"),
        "the term reaches the command"
    );

    let (code, view) = leader_json(&url, "jobs");
    assert_eq!(code, 0);
    assert_eq!(view["leader"]["term"], term, "{view}");
    assert_eq!(view["leader"]["session"], session.as_str(), "{view}");
    let candidate = view["leader"]["candidate"].as_str().unwrap();
    assert!(candidate.starts_with("elect@"), "{candidate}");
    let mut watch = jetlock(&url);
    watch.args(["leader", "jobs", "--watch", "--json"]);
    let watch = Running::spawn(watch);
    let first = Running::line(&watch.out, |_| true);
    assert!(first.contains(&format!("\"term\":{term}")), "{first}");

    // An operator takes the leadership away.
    let out = jetlock(&url)
        .args(["release", "election:jobs", "--force", "--reason", "test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    assert_eq!(elect.exit_code(), 4, "leadership lost");
    let rest: Vec<String> = elect.out.try_iter().collect();
    assert_eq!(
        rest,
        ["stopped"],
        "SIGTERM stopped the command, started once"
    );
    let why = Running::line(&elect.err, |l| l.contains("lost the leadership"));
    assert!(why.contains("jobs"), "{why}");
    let vacant = Running::line(&watch.out, |_| true);
    assert!(vacant.contains("\"leader\":null"), "{vacant}");
    let (code, _) = leader_json(&url, "jobs");
    assert_eq!(code, 3, "nobody leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_resigns_for_the_next_candidate_with_its_status() {
    let server = single();
    let url = server.url();
    let _bucket = client(&url, 1).await;
    // The first leader's command ends when its stdin closes, with status 7.
    let mut first = jetlock(&url);
    first.args([
        "elect",
        "nightly",
        "--",
        "sh",
        "-c",
        "echo first; read x; exit 7",
    ]);
    let mut first = Running::spawn(first);
    let (first_term, _) = first.elected();
    Running::line(&first.out, |l| l == "first");

    let mut second = jetlock(&url);
    second.args(["elect", "nightly", "--", "sh", "-c", "echo second"]);
    let mut second = Running::spawn(second);
    let (code, view) = leader_json(&url, "nightly");
    assert_eq!(code, 0);
    assert_eq!(view["leader"]["term"], first_term, "{view}");

    drop(first.child.stdin.take());
    assert_eq!(first.exit_code(), 7, "the command's status");
    let (second_term, _) = second.elected();
    assert!(second_term > first_term, "terms rise");
    Running::line(&second.out, |l| l == "second");
    assert_eq!(second.exit_code(), 0);
    // Both resigned.
    let (code, view) = leader_json(&url, "nightly");
    assert_eq!((code, view["leader"].clone()), (3, serde_json::Value::Null));
}

#[test]
fn elect_and_leader_usage_errors_exit_2() {
    let url = "nats://127.0.0.1:1";
    for args in [
        &["elect", "jobs"][..],
        &["elect", "", "--", "true"],
        &["elect", "jobs", "--grace", "soon", "--", "true"],
        &["leader", ""],
    ] {
        let out = jetlock(url).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
