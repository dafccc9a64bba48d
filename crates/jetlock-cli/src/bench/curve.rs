//! The coordinator curve: JSON pairs/s and CPU per pair on the 3-node
//! cluster of `nats/cluster.conf` (R3) with 1, 2 and 3 coordinators, over
//! one locks bucket and over three (K = 3, each stream led by another
//! server), the measure docs/SCALING.md asks of coordinators that add
//! capacity and of buckets that take the one Raft leader off the path.
//!
//! For each K the bench starts a cluster, creates the buckets (spreading
//! their leaders), then adds `jetlock serve` children one at a time. After each joins, tasks of the JSON
//! protocol (each its own session, as the cluster's protocol-only
//! `restricted` user, one shared connection) run uncontended pairs on
//! fresh keys for a window, and the CPU time of every coordinator and
//! every server over the window is read from `/proc`. The deployment's
//! requests are partitioned (the default, 64 partitions): each
//! coordinator reads only its partitions' requests, while every one still
//! watches the whole bucket. What to look for is whether a coordinator's
//! messages and CPU per pair fall as coordinators are added.

use super::json::JsonSession;
use super::procs::{Coord, Proc};
use super::CliError;
use jetlock::bucket::{spread_leaders, BucketSpec, DEFAULT_BUCKET};
use jetlock_testkit::server::{ensure_bucket_when_ready, NatsCluster, Role};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub(super) const NODES: usize = 3;
/// Coordinators, added one at a time.
pub(super) const MOST_COORDINATORS: usize = 3;
/// The deployments measured: locks over this many buckets.
pub(super) const BUCKETS: [u32; 2] = [1, 3];
/// How long the cluster may take to elect its JetStream leaders.
const START_LIMIT: Duration = Duration::from_secs(30);
/// After a coordinator joins: every coordinator hears it (heartbeats every
/// 250 ms) before the window starts. A short (`--quick`) window settles
/// for half of it.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub(super) struct CurveRow {
    pub(super) coordinators: usize,
    /// Locks buckets (K).
    pub(super) buckets: usize,
    /// Request partitions (1: not partitioned).
    pub(super) partitions: u32,
    pub(super) tasks: usize,
    pub(super) pairs: u64,
    pub(super) pairs_per_sec: f64,
    /// Every coordinator's CPU per pair, in µs, in the order they joined.
    pub(super) coordinator_us_per_pair: Vec<f64>,
    /// The coordinators' together.
    pub(super) coordinators_us_per_pair: f64,
    /// The three servers' together.
    pub(super) servers_us_per_pair: f64,
    /// Messages each coordinator's NATS connection received per pair
    /// (`jetlock_nats_messages_total`), in the order they joined.
    pub(super) coordinator_msgs_per_pair: Vec<f64>,
}

/// The coordinators' received-messages counter.
const RECEIVED: &str = r#"jetlock_nats_messages_total{direction="received"}"#;

pub(super) async fn run(tasks: usize, window: Duration) -> Result<Vec<CurveRow>, CliError> {
    let mut rows = Vec::new();
    for buckets in BUCKETS {
        rows.extend(run_over(buckets, tasks, window).await?);
    }
    Ok(rows)
}

/// The curve on a fresh cluster whose locks spread over `buckets` buckets.
async fn run_over(buckets: u32, tasks: usize, window: Duration) -> Result<Vec<CurveRow>, CliError> {
    super::progress(&format!(
        "coordinators: starting the 3-node cluster ({buckets} bucket(s))"
    ));
    let mut spec = BucketSpec::new(DEFAULT_BUCKET, NODES);
    spec.buckets = buckets;
    let (cluster, admin) = deployment(&spec).await?;
    if buckets > 1 {
        let js = async_nats::jetstream::new(admin.clone());
        spread_leaders(&js, DEFAULT_BUCKET, buckets).await?;
    }
    let servers: Vec<u32> = cluster.servers().iter().filter_map(|s| s.pid()).collect();
    let coordinator_url = cluster.url_as(Role::Coordinator);
    let client_url = cluster.url_as(Role::Restricted);
    let prefix = Role::Restricted
        .session_prefix()
        .expect("the restricted role has a session prefix");
    let mut coordinators: Vec<Proc> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let run = nuid::next();
    for n in 1..=MOST_COORDINATORS {
        super::progress(&format!(
            "coordinators: {n} of {MOST_COORDINATORS} serving, {buckets} bucket(s)"
        ));
        let (proc, url) = Coord::start_on_cluster(&coordinator_url, &format!("bench-c{n}")).await?;
        coordinators.push(proc);
        metrics.push(url.ok_or("a coordinator printed no metrics URL")?);
        tokio::time::sleep(SETTLE.min(window / 2)).await;
        let pids: Vec<u32> = coordinators.iter().map(Proc::pid).collect();
        let keys = format!("curve.{run}.c{n}");
        let who = Serving {
            coordinators: &pids,
            metrics: &metrics,
            servers: &servers,
        };
        let mut row = measure(&client_url, prefix, &keys, tasks, window, &who).await?;
        row.buckets = buckets as usize;
        row.partitions = spec.partitions;
        rows.push(row);
    }
    for c in coordinators {
        c.stop().await;
    }
    Ok(rows)
}

/// Starts the 3-node cluster of `nats/cluster.conf` and makes the
/// deployment of `spec` on it: the cluster, and the coordinator user's
/// connection that made it.
pub(super) async fn deployment(
    spec: &BucketSpec,
) -> Result<(NatsCluster, async_nats::Client), CliError> {
    let cluster = NatsCluster::start(NODES)
        .map_err(|e| format!("could not start the 3-node cluster: {e}"))?;
    let admin = jetlock::connect::nats(
        &cluster.url_as(Role::Coordinator),
        &Default::default(),
        async_nats::ConnectOptions::new().name("jetlock-bench-setup"),
    )
    .await?;
    ensure_bucket_when_ready(&admin, spec, START_LIMIT).await?;
    Ok((cluster, admin))
}

/// The processes measured: coordinators (pids and metrics URLs, in the
/// order they joined) and servers.
struct Serving<'a> {
    coordinators: &'a [u32],
    metrics: &'a [String],
    servers: &'a [u32],
}

/// Every coordinator's received-messages counter.
async fn received(metrics: &[String]) -> Result<Vec<u64>, CliError> {
    let mut counts = Vec::with_capacity(metrics.len());
    for url in metrics {
        counts.push(super::memory::gauge(url, RECEIVED).await?);
    }
    Ok(counts)
}

/// `tasks` JSON sessions run pairs on fresh keys under `keys` for `window`.
async fn measure(
    url: &str,
    prefix: &str,
    keys: &str,
    tasks: usize,
    window: Duration,
    who: &Serving<'_>,
) -> Result<CurveRow, CliError> {
    let (coordinators, servers) = (who.coordinators, who.servers);
    let nats = jetlock::connect::nats(
        url,
        &Default::default(),
        async_nats::ConnectOptions::new()
            .name("jetlock-bench-curve")
            .custom_inbox_prefix(format!("_INBOX.{prefix}")),
    )
    .await?;
    let mut sessions = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        sessions.push(JsonSession::start_as(nats.clone(), prefix).await?);
    }
    let cpu = |pids: &[u32]| -> Result<Vec<Duration>, CliError> {
        pids.iter()
            .map(|&pid| {
                super::machine::cpu_time(pid)
                    .ok_or_else(|| format!("could not read the CPU time of process {pid}").into())
            })
            .collect()
    };
    let pairs = Arc::new(AtomicU64::new(0));
    let received_before = received(who.metrics).await?;
    let (coordinators_before, servers_before) = (cpu(coordinators)?, cpu(servers)?);
    let started = Instant::now();
    let end = started + window;
    let work = sessions.into_iter().enumerate().map(|(t, mut session)| {
        let pairs = pairs.clone();
        let keys = keys.to_owned();
        async move {
            let mut i = 0u64;
            while Instant::now() < end {
                session.pair(&format!("{keys}:t{t}-{i}")).await?;
                pairs.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, CliError>(())
        }
    });
    futures::future::try_join_all(work).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (coordinators_after, servers_after) = (cpu(coordinators)?, cpu(servers)?);
    let received_after = received(who.metrics).await?;
    let pairs = pairs.load(Ordering::Relaxed);
    let per_pair = |before: &[Duration], after: &[Duration]| -> Vec<f64> {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| a.saturating_sub(*b).as_secs_f64() * 1e6 / pairs.max(1) as f64)
            .collect()
    };
    let coordinator_us_per_pair = per_pair(&coordinators_before, &coordinators_after);
    Ok(CurveRow {
        coordinators: coordinators.len(),
        buckets: 1,
        partitions: 1,
        tasks,
        pairs,
        pairs_per_sec: pairs as f64 / elapsed,
        coordinators_us_per_pair: coordinator_us_per_pair.iter().sum(),
        coordinator_us_per_pair,
        servers_us_per_pair: per_pair(&servers_before, &servers_after).iter().sum(),
        coordinator_msgs_per_pair: received_before
            .iter()
            .zip(&received_after)
            .map(|(b, a)| a.saturating_sub(*b) as f64 / pairs.max(1) as f64)
            .collect(),
    })
}

/// The workload's table.
pub(super) fn markdown(rows: &[CurveRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\ncoordinators: JSON pairs on fresh keys, {} tasks (a session each), on the 3-node cluster of nats/cluster.conf (R3, sync_interval: always; requests in {} partition(s); the locks in one bucket, then spread over three whose leaders are the three servers), CPU per pair over the window, and the messages each coordinator's connection received per pair (`jetlock_nats_messages_total`)\n\n",
        rows[0].tasks,
        rows[0].partitions
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.coordinators.to_string(),
                r.buckets.to_string(),
                format!("{:.0}", r.pairs_per_sec),
                r.coordinator_us_per_pair
                    .iter()
                    .map(|us| format!("{us:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                format!("{:.0}", r.coordinators_us_per_pair),
                format!("{:.0}", r.servers_us_per_pair),
                r.coordinator_msgs_per_pair
                    .iter()
                    .map(|m| format!("{m:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ]
        })
        .collect();
    let header = [
        "coordinators",
        "buckets",
        "pairs/s",
        "µs per pair, each coordinator",
        "µs per pair, all coordinators",
        "µs per pair, all servers",
        "messages received per pair, each coordinator",
    ];
    o.push_str(&super::report::table(&header, "rrrrrrr", &rows));
    o
}
