//! Helpers of the tests that run the `jetlock` binary (`jetlock serve`
//! children, the demo) and of this crate's tests only; the shared harness
//! (servers, clients, checkers) is `jetlock-testkit`, re-exported here.
#![allow(dead_code)]

pub mod compose;
pub mod demo;
pub mod holding;
pub mod lossy;
pub mod promql;
pub mod serving;

pub use jetlock_testkit::*;
// Not every test binary starts a coordinator.
#[allow(unused_imports)]
pub use serving::{serve, serve_with_env, serve_within, spawn_serve, Serving};

/// The `jetlock` binary, without the developer's `JETLOCK_URL` and
/// `JETLOCK_BUCKET`.
pub fn jetlock() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jetlock"));
    cmd.env_remove("JETLOCK_URL").env_remove("JETLOCK_BUCKET");
    cmd
}

/// The `nats` CLI's variables that `jetlock` reads too (server list,
/// credentials, TLS files, context): children of the tests start without
/// the developer's.
pub const NATS_LOGIN_VARS: [&str; 11] = [
    "NATS_URL",
    "NATS_CONTEXT",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_NKEY",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_CA",
    "XDG_CONFIG_HOME",
];

use jetlock::{Client, ClientOptions};
use jetlock_testkit::server::NatsCluster;
use std::sync::Mutex;
use std::time::Duration;

pub async fn named_client(url: &str, name: &str) -> Client {
    ClientOptions::new()
        .name(name)
        .create_bucket(1)
        .connect(url)
        .await
        .expect("connect jetlock client")
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
