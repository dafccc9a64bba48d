//! Takeover: how long a coordinator's request partitions go unserved when
//! it leaves or dies, with waiters queued in them — the bound
//! docs/SCALING.md ("Partitioned coordinators") gives a takeover.
//!
//! Each run starts the 3-node cluster of `nats/cluster.conf` (R3) and two
//! or three `jetlock serve` children over a new deployment (requests in 64
//! partitions), and waits until each owns the partitions rendezvous
//! hashing gives it (their metrics). Of two, the survivor owns every
//! partition after; of three, each survivor only its share, and reads
//! through a consumer filtered on it. A JSON session (the `restricted` user) holds four locks in
//! every partition, and `queued` JSON acquires wait behind them, spread
//! over all of them. Then one coordinator is stopped (SIGTERM: it tells the
//! others it leaves) or killed (SIGKILL: they learn it from the
//! server's disconnect advisory, or its beats stopping). Once it has
//! exited, a try-lock of a free lock in one of its partitions is sent.
//!
//! Measured: from the signal to that try-lock's grant. A survivor owns
//! the partition only once it counts the other gone, and acts there only
//! once it has read the partitions it gained from the request stream:
//! every queued acquire there, re-queued in order.

use super::curve::{deployment, NODES};
use super::failover::p50_and_max;
use super::json::JsonSession;
use super::memory::{gauge, wait_for_gauge};
use super::procs::Coord;
use super::CliError;
use jetlock::bucket::{BucketSpec, DEFAULT_BUCKET};
use jetlock::name::LockName;
use jetlock::protocol::Answer;
use jetlock::shards::partition_of;
use jetlock_coordinator::Ring;
use jetlock_testkit::server::Role;
use serde::Serialize;
use std::future::IntoFuture;
use std::time::Duration;
use tokio::time::Instant;

/// Queued acquires, by default and with `--quick`.
pub(super) const QUEUED: &[u64] = &[0, 10_000, 100_000];
pub(super) const QUICK_QUEUED: &[u64] = &[0, 1_000];
/// Runs of each kind of exit and queue, by default and with `--quick`.
pub(super) const RUNS: usize = 3;
pub(super) const QUICK_RUNS: usize = 1;
/// Coordinators before one goes, by default and with `--quick` (three:
/// the survivors' consumers are filtered).
pub(super) const COORDINATORS: &[usize] = &[2, 3];
pub(super) const QUICK_COORDINATORS: &[usize] = &[3];
/// The coordinators' ids; the first is the one that goes.
const IDS: [&str; 3] = ["bench-ta", "bench-tb", "bench-tc"];
/// Held locks per partition: the queued acquires wait behind them, a few
/// dozen per lock at the most (a queue is scanned on every change of its
/// key: thousands on one would measure that scan).
const HELD_PER_PARTITION: usize = 4;
/// How long the holds and waits last: past the run.
const LONG: Duration = Duration::from_secs(600);
/// How long the coordinators may take to split the partitions as the
/// bench worked out (beats every 250 ms, gauges set every second).
const SPLIT_LIMIT: Duration = Duration::from_secs(10);
/// Publishes in flight while queueing.
const IN_FLIGHT: usize = 1024;
/// JSON sessions the queued acquires come from (a session may have 20,000
/// waiting: `max_waits_per_session`).
const WAITER_SESSIONS: usize = 8;
/// How long the coordinators may take to count the queued acquires.
const QUEUE_LIMIT: Duration = Duration::from_secs(60);
/// How long the try-lock may take after the signal.
const GRANT_LIMIT: Duration = Duration::from_secs(30);

/// How the coordinator goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exit {
    Left,
    Killed,
}

impl Exit {
    fn label(self) -> &'static str {
        match self {
            Exit::Left => "coordinator stopped (SIGTERM) → its partition served again",
            Exit::Killed => "coordinator killed (SIGKILL) → its partition served again",
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct TakeoverRow {
    pub(super) event: &'static str,
    /// Coordinators before one went.
    pub(super) coordinators: usize,
    /// Acquires queued over the whole deployment when it went.
    pub(super) queued: u64,
    /// Request partitions of the deployment, and how many the survivors
    /// gained.
    pub(super) partitions: u32,
    pub(super) gained: usize,
    pub(super) runs: usize,
    pub(super) p50_ms: f64,
    pub(super) max_ms: f64,
    pub(super) samples_ms: Vec<f64>,
}

pub(super) async fn run(quick: bool) -> Result<Vec<TakeoverRow>, CliError> {
    let (queues, runs, counts) = if quick {
        (QUICK_QUEUED, QUICK_RUNS, QUICK_COORDINATORS)
    } else {
        (QUEUED, RUNS, COORDINATORS)
    };
    let mut rows = Vec::new();
    for &coordinators in counts {
        rows.extend(run_with(coordinators, queues, runs).await?);
    }
    Ok(rows)
}

async fn run_with(
    coordinators: usize,
    queues: &[u64],
    runs: usize,
) -> Result<Vec<TakeoverRow>, CliError> {
    let mut rows = Vec::new();
    for exit in [Exit::Left, Exit::Killed] {
        for &queued in queues {
            let mut samples = Vec::with_capacity(runs);
            let mut gained = 0;
            let mut partitions = 0;
            for i in 0..runs {
                super::progress(&format!(
                    "takeover: {} of {coordinators} with {queued} queued, run {} of {runs}",
                    match exit {
                        Exit::Left => "stopped",
                        Exit::Killed => "killed",
                    },
                    i + 1
                ));
                let run = once(exit, queued, coordinators).await?;
                samples.push(run.took.as_secs_f64() * 1000.0);
                (gained, partitions) = (run.gained, run.partitions);
            }
            let (p50_ms, max_ms) = p50_and_max(&samples);
            rows.push(TakeoverRow {
                event: exit.label(),
                coordinators,
                queued,
                partitions,
                gained,
                runs,
                p50_ms,
                max_ms,
                samples_ms: samples,
            });
        }
    }
    Ok(rows)
}

struct Once {
    took: Duration,
    gained: usize,
    partitions: u32,
}

/// One run on a fresh cluster with `coordinators` of them.
async fn once(exit: Exit, queued: u64, coordinators: usize) -> Result<Once, CliError> {
    let spec = BucketSpec::new(DEFAULT_BUCKET, NODES);
    let partitions = spec.partitions;
    let (cluster, _admin) = deployment(&spec).await?;
    let coordinator_url = cluster.url_as(Role::Coordinator);
    let (ids, run) = (&IDS[..coordinators], nuid::next());
    // The survivors first, the one to go last.
    let order: Vec<&str> = ids[1..].iter().chain(&ids[..1]).copied().collect();
    let mut started = Vec::with_capacity(coordinators);
    let mut metrics = Vec::with_capacity(coordinators);
    for id in &order {
        let (coord, url) = Coord::start_on_cluster(&coordinator_url, id).await?;
        started.push(coord);
        metrics.push(url.ok_or("a coordinator printed no metrics URL")?);
    }
    let mut victim = started.pop().expect("the one to go");
    // What each owns while all are live, in the order started; the one to
    // go owns `gained`.
    let owned = |me: &str| {
        let mut ring = Ring::new(me.to_owned(), Duration::from_secs(60));
        for id in ids.iter().filter(|id| **id != me) {
            ring.beat(id, None, Instant::now());
        }
        ring.set_partitions(partitions);
        ring.owned_partitions()
    };
    let gained = owned(ids[0]);
    // All hear each other before the locks are taken: each owns the share
    // worked out here, and the one to go has none to catch up on.
    let split: Vec<usize> = order.iter().map(|id| owned(id).len()).collect();
    wait_for_split(&metrics, &split).await?;

    let client_url = cluster.url_as(Role::Restricted);
    let prefix = Role::Restricted
        .session_prefix()
        .expect("the restricted role has a session prefix");
    let nats = jetlock::connect::nats(
        &client_url,
        &Default::default(),
        async_nats::ConnectOptions::new()
            .name("jetlock-bench-takeover")
            .custom_inbox_prefix(format!("_INBOX.{prefix}")),
    )
    .await?;
    // Lock names by partition, then the holds.
    let mut names: Vec<Vec<String>> = vec![Vec::new(); partitions as usize];
    let mut free = None;
    for i in 0.. {
        let name = format!("takeover.{run}.k{i}");
        let p = partition_of(LockName::new(&name)?.key(), partitions);
        let of_p = &mut names[p as usize];
        if of_p.len() < HELD_PER_PARTITION {
            of_p.push(name);
        } else if free.is_none() && gained.contains(&p) {
            free = Some(name);
        }
        if free.is_some() && names.iter().all(|n| n.len() == HELD_PER_PARTITION) {
            break;
        }
    }
    let held: Vec<String> = names.into_iter().flatten().collect();
    let mut holder = JsonSession::start_as(nats.clone(), prefix).await?;
    for name in &held {
        match holder.try_acquire(name, LONG).await? {
            Answer::Granted { .. } => {}
            other => return Err(format!("takeover: {name} answered {other:?}").into()),
        }
    }
    let waiting = queue(&nats, prefix, &held, queued, &metrics).await?;
    let mut probe = JsonSession::start_as(nats.clone(), prefix).await?;

    let signalled = Instant::now();
    match exit {
        Exit::Left => victim.stop().await,
        Exit::Killed => victim.kill().await,
    }
    let free = free.expect("a free name in a gained partition");
    let answer = tokio::time::timeout(GRANT_LIMIT, probe.try_acquire(&free, LONG))
        .await
        .map_err(|_| format!("takeover: {free} not answered within {GRANT_LIMIT:?}"))??;
    let took = signalled.elapsed();
    if !matches!(answer, Answer::Granted { .. }) {
        return Err(format!("takeover: {free} answered {answer:?}").into());
    }
    drop((waiting, holder, probe));
    for survivor in started {
        survivor.stop().await;
    }
    Ok(Once {
        took,
        gained: gained.len(),
        partitions,
    })
}

/// Waits until the coordinators of `metrics` own `split` partitions each,
/// none of them being caught up on.
async fn wait_for_split(metrics: &[String], split: &[usize]) -> Result<(), CliError> {
    let deadline = Instant::now() + SPLIT_LIMIT;
    loop {
        let mut now = Vec::with_capacity(metrics.len());
        for url in metrics {
            let owned = gauge(url, "jetlock_partitions_owned").await? as usize;
            let catching_up = gauge(url, "jetlock_partitions_catching_up").await?;
            now.push((owned, catching_up));
        }
        if now
            .iter()
            .map(|&(owned, _)| owned)
            .eq(split.iter().copied())
            && now.iter().all(|&(_, c)| c == 0)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "takeover: the coordinators own (partitions, being read) {now:?}, not {split:?}, after {SPLIT_LIMIT:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Queues `queued` JSON acquires round the `held` locks, from sessions
/// that beat until dropped; returns once the coordinators (`metrics`)
/// count them queued, each those of its own partitions.
async fn queue(
    nats: &async_nats::Client,
    prefix: &str,
    held: &[String],
    queued: u64,
    metrics: &[String],
) -> Result<Vec<JsonSession>, CliError> {
    let mut sessions = Vec::with_capacity(WAITER_SESSIONS);
    for _ in 0..WAITER_SESSIONS {
        sessions.push(JsonSession::start_as(nats.clone(), prefix).await?);
    }
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..queued as usize {
        let session = &mut sessions[i % WAITER_SESSIONS];
        let name = &held[i % held.len()];
        acks.push(session.enqueue(name, LONG).await?.into_future());
        if acks.len() >= IN_FLIGHT {
            if let Some(ack) = futures::StreamExt::next(&mut acks).await {
                ack?;
            }
        }
    }
    while let Some(ack) = futures::StreamExt::next(&mut acks).await {
        ack?;
    }
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    wait_for_gauge(&metrics, "jetlock_queue_depth", queued, QUEUE_LIMIT).await?;
    Ok(sessions)
}

/// The workload's table.
pub(super) fn markdown(rows: &[TakeoverRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\ntakeover: two or three coordinators on the 3-node cluster of nats/cluster.conf (R3), requests in {} partitions; one goes, and a try-lock in one of the partitions it had is sent once it exited: from the signal to the grant\n\n",
        rows[0].partitions
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.event.to_owned(),
                r.coordinators.to_string(),
                r.gained.to_string(),
                r.queued.to_string(),
                r.runs.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.max_ms),
            ]
        })
        .collect();
    let header = [
        "event",
        "coordinators",
        "partitions it had",
        "acquires queued",
        "runs",
        "p50 (ms)",
        "max (ms)",
    ];
    o.push_str(&super::report::table(&header, "lrrrrrr", &rows));
    o
}
