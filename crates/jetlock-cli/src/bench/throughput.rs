//! W2 throughput: many tasks, each on keys of its own (a fresh key for
//! every pair, so no two tasks ever touch one key), acquire → release as
//! fast as they can for a fixed time; pairs per second, over
//!
//! - **one shared connection** — every task uses one async-nats client,
//!   one jetlock `Client` (one session), or one connection carrying a JSON
//!   session per task;
//! - **one connection per task** — each task its own of those.
//!
//! The same job three ways: the raw KV pair (async-nats `kv.create` +
//! `kv.delete_expect_revision`, the floor), the jetlock Rust client's fast
//! path, and the JSON protocol through the coordinator. Each jetlock row is
//! divided by the raw row with the same connections, in the same run.
//!
//! The time is split into rounds of [`ROUND`], and each round runs every
//! group once in turn, as W1 interleaves its rows: the drift of a shared
//! machine lands on all groups alike. The scaling workload runs the same
//! groups with 1 to 64 tasks.

use super::json::JsonSession;
use super::latency::{jetlock_pair, raw_pair};
use super::CliError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use jetlock::{Client, ClientOptions};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One round's slice of a group's time.
pub(super) const ROUND: Duration = Duration::from_secs(1);

/// Who does the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    Raw,
    Jetlock,
    Json,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Raw => "raw kv pair",
            Path::Jetlock => "jetlock pair",
            Path::Json => "json pair via coordinator",
        }
    }
}

/// How the tasks share connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sharing {
    Shared,
    PerTask,
}

impl Sharing {
    fn label(self) -> &'static str {
        match self {
            Sharing::Shared => "one shared",
            Sharing::PerTask => "one per task",
        }
    }
}

/// One group's numbers.
#[derive(Debug, Serialize)]
pub(super) struct ThroughputRow {
    pub(super) workload: &'static str,
    pub(super) connections: &'static str,
    pub(super) tasks: usize,
    /// The durability of the server it ran against (`sync_interval`).
    pub(super) durability: String,
    /// Time the tasks ran, over all rounds.
    pub(super) seconds: f64,
    pub(super) pairs: u64,
    pub(super) pairs_per_sec: f64,
    /// Pairs/s over the raw row's with the same connections and tasks;
    /// `None` for the raw rows.
    pub(super) ratio_to_raw: Option<f64>,
    /// CPU time per pair, in µs, of the processes involved (those whose
    /// pid the bench knows): where the time of a saturated machine goes.
    pub(super) cpu_us_per_pair: CpuPerPair,
}

/// CPU µs per pair by process.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct CpuPerPair {
    /// The bench process: the clients and their NATS connections.
    pub(super) client: f64,
    pub(super) nats_server: Option<f64>,
    pub(super) coordinator: Option<f64>,
}

/// The processes whose CPU time is counted.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pids {
    pub(super) nats_server: Option<u32>,
    pub(super) coordinator: Option<u32>,
}

impl Pids {
    /// CPU time used so far by the bench, the server and the coordinator.
    fn cpu(&self) -> [Option<Duration>; 3] {
        let of = |pid: Option<u32>| pid.and_then(super::machine::cpu_time);
        [
            of(Some(std::process::id())),
            of(self.nats_server),
            of(self.coordinator),
        ]
    }
}

/// Where the groups connect and what they write.
pub(super) struct Site<'a> {
    pub(super) url: &'a str,
    pub(super) bucket: &'a str,
    pub(super) keys: Keys,
    pub(super) pids: Pids,
}

/// What the tasks write, shared with each of them.
#[derive(Clone)]
pub(super) struct Keys {
    /// The run's key prefix (`jetlock-bench.<nuid>`) and the lock-name
    /// prefix whose keys fall under it.
    pub(super) run: Arc<str>,
    pub(super) names: Arc<str>,
    /// The raw rows' value: a record like the ones jetlock writes.
    pub(super) value: Bytes,
}

/// One task's means of doing pairs.
enum Worker {
    Raw(Box<kv::Store>),
    Jetlock(Client),
    Json(Box<JsonSession>),
}

impl Worker {
    /// One pair on the fresh key numbered `n`.
    async fn pair(&mut self, keys: &Keys, n: u64) -> Result<(), CliError> {
        match self {
            Worker::Raw(kv) => raw_pair(kv, &format!("{}.w2-{n}", keys.run), &keys.value).await,
            Worker::Jetlock(client) => {
                jetlock_pair(client, &format!("{}:w2-{n}", keys.names)).await
            }
            Worker::Json(json) => json.pair(&format!("{}:w2-{n}", keys.names)).await,
        }
    }
}

/// Numbers fresh keys across every group and round of the process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A group: `tasks` workers of one path and sharing, and what they did.
struct Group {
    path: Path,
    sharing: Sharing,
    workers: Vec<Worker>,
    pairs: u64,
    elapsed: Duration,
    /// CPU time used while this group ran, by process (see [`Pids::cpu`]).
    cpu: [Option<Duration>; 3],
}

impl Group {
    async fn connect(
        site: &Site<'_>,
        path: Path,
        sharing: Sharing,
        tasks: usize,
    ) -> Result<Group, CliError> {
        let connections = match sharing {
            Sharing::Shared => 1,
            Sharing::PerTask => tasks,
        };
        let connecting = (0..connections).map(|i| async move {
            let name = format!("jetlock-bench-w2-{i}");
            match path {
                Path::Jetlock => {
                    let client = ClientOptions::new()
                        .name(name)
                        .bucket(site.bucket)
                        .connect(site.url)
                        .await?;
                    Ok::<_, CliError>(Connection::Jetlock(client))
                }
                Path::Raw | Path::Json => {
                    let nats = async_nats::ConnectOptions::new()
                        .name(name)
                        .connect(jetlock::client::server_list(site.url))
                        .await?;
                    Ok(Connection::Nats(nats))
                }
            }
        });
        let connections = futures::future::try_join_all(connecting).await?;
        let mut workers = Vec::with_capacity(tasks);
        for i in 0..tasks {
            let worker = match (&connections[i % connections.len()], path) {
                (Connection::Jetlock(client), _) => Worker::Jetlock(client.clone()),
                (Connection::Nats(nats), Path::Raw) => Worker::Raw(Box::new(
                    jetstream::new(nats.clone())
                        .get_key_value(site.bucket)
                        .await?,
                )),
                (Connection::Nats(nats), _) => {
                    Worker::Json(Box::new(JsonSession::start(nats.clone()).await?))
                }
            };
            workers.push(worker);
        }
        Ok(Group {
            path,
            sharing,
            workers,
            pairs: 0,
            elapsed: Duration::ZERO,
            cpu: [Some(Duration::ZERO); 3],
        })
    }

    /// Every worker, each on a task of its own, does pairs until `length`
    /// is over; adds the pairs done and the time until the last one
    /// finished.
    async fn run_for(
        &mut self,
        keys: &Keys,
        pids: &Pids,
        length: Duration,
    ) -> Result<(), CliError> {
        let cpu_before = pids.cpu();
        let started = Instant::now();
        let end = started + length;
        let mut tasks = JoinSet::new();
        for mut worker in std::mem::take(&mut self.workers) {
            let keys = keys.clone();
            tasks.spawn(async move {
                let mut pairs = 0;
                while Instant::now() < end {
                    worker
                        .pair(&keys, NEXT_KEY.fetch_add(1, Ordering::Relaxed))
                        .await?;
                    pairs += 1;
                }
                Ok::<_, CliError>((worker, pairs))
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (worker, pairs) = done??;
            self.workers.push(worker);
            self.pairs += pairs;
        }
        self.elapsed += started.elapsed();
        for ((sum, before), after) in self.cpu.iter_mut().zip(cpu_before).zip(pids.cpu()) {
            *sum = match (*sum, before, after) {
                (Some(sum), Some(before), Some(after)) => Some(sum + after.saturating_sub(before)),
                _ => None,
            };
        }
        Ok(())
    }
}

enum Connection {
    Jetlock(Client),
    Nats(async_nats::Client),
}

/// Runs every `(path, sharing)` group with `tasks` tasks for `length` in
/// rounds of [`ROUND`]; returns a row per group, in the order given, each
/// non-raw row with its ratio to the raw row of the same sharing.
pub(super) async fn run(
    site: &Site<'_>,
    groups: &[(Path, Sharing)],
    tasks: usize,
    length: Duration,
) -> Result<Vec<ThroughputRow>, CliError> {
    let mut connected = Vec::with_capacity(groups.len());
    for &(path, sharing) in groups {
        connected.push(Group::connect(site, path, sharing, tasks).await?);
    }
    let rounds = rounds(length);
    let slice = length / rounds;
    for _ in 0..rounds {
        for group in &mut connected {
            group.run_for(&site.keys, &site.pids, slice).await?;
        }
    }
    let rate = |g: &Group| g.pairs as f64 / g.elapsed.as_secs_f64().max(1e-9);
    let raw_rate = |sharing| {
        connected
            .iter()
            .find(|g| g.path == Path::Raw && g.sharing == sharing)
            .map(rate)
    };
    Ok(connected
        .iter()
        .map(|g| ThroughputRow {
            workload: g.path.label(),
            connections: g.sharing.label(),
            tasks,
            durability: String::new(),
            seconds: g.elapsed.as_secs_f64(),
            pairs: g.pairs,
            pairs_per_sec: rate(g),
            ratio_to_raw: match g.path {
                Path::Raw => None,
                _ => raw_rate(g.sharing).and_then(|raw| super::floor::ratio(rate(g), raw)),
            },
            cpu_us_per_pair: {
                let per_pair = |cpu: Option<Duration>| {
                    cpu.map(|c| c.as_secs_f64() * 1e6 / g.pairs.max(1) as f64)
                };
                let [client, nats_server, coordinator] = g.cpu.map(per_pair);
                CpuPerPair {
                    client: client.unwrap_or(0.0),
                    nats_server,
                    coordinator,
                }
            },
        })
        .collect())
}

/// How many [`ROUND`]s `length` is split into: at least one.
fn rounds(length: Duration) -> u32 {
    (length.as_millis() / ROUND.as_millis()).clamp(1, u32::MAX as u128) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_split_into_whole_rounds() {
        assert_eq!(rounds(Duration::from_secs(5)), 5);
        assert_eq!(rounds(Duration::from_millis(2500)), 2);
        assert_eq!(rounds(Duration::from_millis(300)), 1);
    }
}
