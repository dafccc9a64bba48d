//! Peers: other lock services doing jetlock's jobs, W1 (one client,
//! sequential pairs, a fresh lock name each) and W3 (clients contending
//! for one lock, through [`contention::contend`]), in the same run:
//!
//! - **Redis** (`redis.rs`): `SET key token NX PX` and a compare-and-delete
//!   script, a waiter retrying every millisecond (Redis has no queue). Run
//!   in memory, without persistence: the fastest a lock can be.
//! - **PostgreSQL** (`postgres.rs`): `pg_advisory_lock` / `_unlock` on a
//!   64-bit id (a hash of the name); waiters queue in the server. Advisory
//!   locks live in shared memory: no WAL, nothing fsynced.
//! - **etcd** (`etcd.rs`): its v3 lock API (`Lock` with a lease, `Unlock`),
//!   each a Raft write fsynced to the WAL; waiters queue by revision. And
//!   its v3 election API for the election failover rows
//!   (`etcd_election.rs`, beside jetlock's in `../election.rs`).
//!
//! Each is started for the run on a free loopback port, in a temp dir
//! (`service.rs`), and killed after; one that is not installed
//! (`bench/peers.sh` installs them from Debian) gets a row saying so. The
//! Redis and PostgreSQL clients are crates (`redis`, `tokio-postgres`),
//! compiled only with the `peers` cargo feature so that the default build
//! and CI stay as they were; etcd is spoken to through its JSON gateway
//! with the HTTP client jetlock already has.

mod etcd;
mod etcd_election;
#[cfg(feature = "peers")]
mod postgres;
#[cfg(feature = "peers")]
mod redis;
mod service;

use super::contention::{self, Contender, ContentionRow};
use super::latency::{self, Measurement, WARMUP};
use super::CliError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One lock service's numbers, or why it has none.
#[derive(Debug, Serialize)]
pub(super) struct PeerRow {
    pub(super) service: &'static str,
    pub(super) version: Option<String>,
    /// How it locks.
    pub(super) lock: &'static str,
    pub(super) w1_p50_us: Option<u64>,
    pub(super) w1_p99_us: Option<u64>,
    /// W1 p50 over the raw KV pair's (fresh key), by the durability of the
    /// server the raw pair ran against.
    pub(super) w1_ratio_to_raw: BTreeMap<String, f64>,
    pub(super) w3: Option<ContentionRow>,
    /// The lock-kinds read/write mix, where the peer has shared locks.
    pub(super) rw: Option<super::kinds::KindsRow>,
    /// What it keeps on disk, how it waits; or why it was skipped.
    pub(super) note: String,
}

/// What the peers are compared with, and how long they run.
pub(super) struct Plan {
    pub(super) iterations: u64,
    pub(super) clients: usize,
    pub(super) window: Duration,
    /// The raw KV pair's W1 p50 (fresh key) by durability.
    pub(super) raw_p50_us: Vec<(String, u64)>,
}

/// Measures every peer that is installed.
pub(super) async fn run(plan: &Plan) -> Vec<PeerRow> {
    let mut rows = Vec::new();
    for peer in [Peer::Redis, Peer::Postgres, Peer::Etcd] {
        let mut row = PeerRow {
            service: peer.name(),
            version: None,
            lock: peer.lock(),
            w1_p50_us: None,
            w1_p99_us: None,
            w1_ratio_to_raw: BTreeMap::new(),
            w3: None,
            rw: None,
            note: peer.note().to_owned(),
        };
        match peer.binary() {
            Err(why) => row.note = format!("skipped: {why}"),
            Ok(binary) => {
                row.version = service::version(&binary);
                super::progress(&format!("peers: {}", peer.name()));
                if let Err(e) = peer.measure(&binary, plan, &mut row).await {
                    row.note = format!("failed: {e}");
                }
            }
        }
        rows.push(row);
    }
    rows
}

#[derive(Debug, Clone, Copy)]
enum Peer {
    Redis,
    Postgres,
    Etcd,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Redis => "Redis",
            Peer::Postgres => "PostgreSQL",
            Peer::Etcd => "etcd",
        }
    }

    fn lock(self) -> &'static str {
        match self {
            Peer::Redis => "SET NX PX + compare-and-delete script",
            Peer::Postgres => "pg_advisory_lock / pg_advisory_unlock",
            Peer::Etcd => "v3 lock API (Lock with a lease, Unlock)",
        }
    }

    fn note(self) -> &'static str {
        match self {
            Peer::Redis => "in memory, no persistence; a waiter retries every 1 ms (no queue)",
            Peer::Postgres => "advisory locks live in memory (no WAL); waiters queue in the server",
            Peer::Etcd => {
                "each lock and unlock a Raft write fsynced to the WAL; JSON gateway over HTTP/1.1"
            }
        }
    }

    /// The server binary, or why there is none.
    fn binary(self) -> Result<std::path::PathBuf, String> {
        let found = match self {
            Peer::Redis => service::on_path("redis-server"),
            Peer::Postgres => service::postgres_binary(),
            Peer::Etcd => service::on_path("etcd"),
        };
        let binary = found.ok_or_else(|| {
            let what = match self {
                Peer::Redis => "redis-server",
                Peer::Postgres => "postgres",
                Peer::Etcd => "etcd",
            };
            format!("{what} not installed (bash bench/peers.sh installs it)")
        })?;
        if cfg!(not(feature = "peers")) && matches!(self, Peer::Redis | Peer::Postgres) {
            return Err(
                "built without the `peers` feature (cargo run --release --features peers -- bench)"
                    .to_owned(),
            );
        }
        Ok(binary)
    }

    async fn measure(
        self,
        binary: &std::path::Path,
        plan: &Plan,
        row: &mut PeerRow,
    ) -> Result<(), CliError> {
        match self {
            #[cfg(feature = "peers")]
            Peer::Redis => {
                let server = redis::start(binary).await?;
                let port = server.port();
                measure(plan, row, async || redis::RedisLock::connect(port).await).await
            }
            #[cfg(feature = "peers")]
            Peer::Postgres => {
                let server = postgres::start(binary).await?;
                let port = server.port();
                measure(plan, row, async || {
                    postgres::AdvisoryLock::connect(port).await
                })
                .await?;
                let mut clients = Vec::with_capacity(plan.clients);
                for _ in 0..plan.clients {
                    clients.push(postgres::AdvisoryRw::connect(port).await?);
                }
                let workload = "PostgreSQL pg_advisory_lock_shared, 90% reads";
                row.rw =
                    Some(super::kinds::mix(workload, "rw", clients, Some(10), plan.window).await?);
                Ok(())
            }
            #[cfg(not(feature = "peers"))]
            Peer::Redis | Peer::Postgres => {
                let _ = (binary, plan, row);
                Err("built without the `peers` feature".into())
            }
            Peer::Etcd => {
                let server = etcd::start(binary).await?;
                let port = server.port();
                measure(plan, row, async || etcd::EtcdLock::connect(port).await).await
            }
        }
    }
}

/// etcd's election failover rows (`etcd_election.rs`), or why there are
/// none: etcd is not installed, or the runs failed.
pub(super) async fn election(runs: usize) -> Result<Vec<super::election::ElectionRow>, String> {
    let binary = Peer::Etcd
        .binary()
        .map_err(|why| format!("skipped: {why}"))?;
    let service = match service::version(&binary) {
        Some(v) => format!("etcd ({v})"),
        None => "etcd".to_owned(),
    };
    let measured = async {
        let server = etcd::start(&binary).await?;
        etcd_election::run(server.port(), service, runs).await
    };
    measured.await.map_err(|e| format!("failed: {e}"))
}

/// W1 on one connection, then W3 on `plan.clients` connections.
async fn measure<C: Contender>(
    plan: &Plan,
    row: &mut PeerRow,
    mut connect: impl AsyncFnMut() -> Result<C, CliError>,
) -> Result<(), CliError> {
    let mut one = connect().await?;
    let mut m = Measurement::default();
    let mut pair = async |i: u64| {
        let key = format!("w1-{i}");
        let held = one.take(&key).await?;
        one.give_back(&key, held).await
    };
    latency::timed(&mut m, 0..WARMUP, false, &mut pair).await?;
    latency::timed(&mut m, WARMUP..WARMUP + plan.iterations, true, &mut pair).await?;
    let p50 = m.histogram.value_at_quantile(0.5);
    row.w1_p50_us = Some(p50);
    row.w1_p99_us = Some(m.histogram.value_at_quantile(0.99));
    for (durability, raw) in &plan.raw_p50_us {
        if let Some(r) = super::floor::ratio(p50 as f64, *raw as f64) {
            row.w1_ratio_to_raw.insert(durability.clone(), r);
        }
    }
    drop(one);
    let mut clients = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        clients.push(connect().await?);
    }
    row.w3 = Some(contention::contend(row.service, "w3", clients, plan.window).await?);
    Ok(())
}
