//! `jetlock bench`: lock latency, throughput, contention, failover, scaling
//! and memory beside the raw NATS floor, and optionally other lock services.
//!
//! - **W1 latency and the JSON path** (`latency.rs`) — one client,
//!   sequential, uncontended acquire + release pairs in interleaved rounds:
//!   the core NATS round trip, the raw KV pair (async-nats `kv.create` +
//!   `kv.delete_expect_revision`) on a fresh and a reused key, the Rust
//!   client's fast path on the same, and a client of the JSON protocol
//!   (`json.rs`, a plain NATS connection) through the coordinator;
//! - **W2 throughput** (`throughput.rs`) — 32 tasks on distinct keys, one
//!   shared connection and one per task: raw KV, fast path, JSON;
//! - **W3 contention** (`contention.rs`) — 32 clients, each its own session,
//!   on one key for 5 s: the coordinator's FIFO queue, the watch-and-race
//!   path (`.queue(false)`), and raw KV watch + CAS retry;
//! - **lock kinds** (`kinds.rs`) — a read/write lock under a 90/10 mix, a
//!   4-permit semaphore, and readers in keys of their own against one
//!   record listing them, 32 clients on one name (PostgreSQL's shared
//!   advisory locks as the peer, in `peers/`);
//! - **W4 failover** (`failover.rs`) — a `jetlock hold` child is killed or
//!   hung while a waiter is queued: time to the waiter's grant;
//! - **election** (`election.rs`) — `jetlock elect` candidate processes on
//!   one election, the leader killed or stopped: time until an observer
//!   sees the next leader; the same with etcd's election API (`peers/`);
//! - **multi-key** (`multi.rs`) — one client, uncontended `lock_all` +
//!   release of 2 and 8 keys, ordered (a CAS per key) against atomic (one
//!   batch);
//! - **durability** — W1 and W2 again against a server with
//!   `sync_interval: always` (`--durability`);
//! - **scaling** (`scaling.rs`, `memory.rs`) — W2 and W3 at 1 to 64
//!   clients; a fresh coordinator's memory with 1k to 1M held locks and with
//!   queued waiters;
//! - **coordinators** (`curve.rs`) — JSON pairs/s and CPU per pair on a
//!   3-node cluster the bench starts, with 1, 2 and 3 coordinators;
//! - **takeover** (`takeover.rs`) — two or three coordinators on the
//!   3-node cluster, waiters queued, one stopped or killed: time until a
//!   request in one of its partitions is granted by another;
//! - **sessions** (`sessions.rs`) — 100 to 10,000 sessions beating at the
//!   default timeout: the coordinator's and the server's CPU per beat, and
//!   the coordinator's memory per session;
//! - **peers** (`peers.rs`) — W1 and W3 against Redis, PostgreSQL and etcd
//!   when they are installed (`bench/peers.sh`).
//!
//! The raw floor runs in the same process, against the same server, in the
//! same run, because absolute latencies mean little across machines, server
//! versions and storage: the ratio of jetlock to the raw KV pair doing the
//! same job is what says how much jetlock itself costs. The report names
//! the machine (`machine.rs`) and its load, and prints as markdown or JSON
//! (`report.rs`).
//!
//! `workloads.rs` runs the workloads against each site. The bench starts
//! what it needs (`site.rs`, `procs.rs`): a nats-server
//! per durability unless `--url` is given, and a coordinator (a `jetlock serve`
//! child by default; see `--coordinator`). Every process it starts is
//! killed when it ends, however it ends. Everything the run writes lives
//! under one per-run key prefix, purged from the bucket at the end.

mod contention;
mod curve;
mod election;
mod eta;
mod failover;
mod floor;
mod json;
mod kinds;
mod latency;
mod machine;
mod memory;
mod multi;
mod peers;
mod plots;
mod procs;
mod report;
mod scaling;
mod sessions;
mod site;
mod takeover;
mod throughput;
mod workloads;
mod writes;

pub use procs::CoordinatorMode;

use super::CliError;
use async_nats::jetstream::kv;
use contention::ContentionRow;
use failover::{Death, FailoverRow};
use jetlock::ClientOptions;
use jetlock_testkit::server::{server_binary, server_version, SyncInterval};
use latency::{Row, WARMUP};
use machine::Machine;
use report::Report;
use site::{Ctx, Site};
use std::time::{Duration, Instant};
use throughput::{Path as Via, Sharing, ThroughputRow};
use workloads::{memory_workload, site_workloads};

/// Measured pairs per W1 workload by default.
const DEFAULT_ITERATIONS: u64 = 2000;
/// Measured pairs per W1 workload with `--quick`.
const QUICK_ITERATIONS: u64 = 300;
/// W3 window per path, by default and with `--quick`.
const CONTENTION_SECS: u64 = 5;
const QUICK_CONTENTION_SECS: u64 = 2;
/// W2 time per group, by default and with `--quick`.
const THROUGHPUT_SECS: u64 = 5;
const QUICK_THROUGHPUT_SECS: u64 = 2;
/// Scaling time per client count and path, by default and with `--quick`.
const SCALING_SECS: u64 = 2;
const QUICK_SCALING_SECS: u64 = 1;
/// Sessions workload window per step, by default and with `--quick`.
const SESSIONS_SECS: u64 = 5;
const QUICK_SESSIONS_SECS: u64 = 2;
/// Coordinator curve window per step, by default and with `--quick`.
const CURVE_SECS: u64 = 5;
const QUICK_CURVE_SECS: u64 = 1;
/// W4 runs per kind of death, by default and with `--quick`.
const FAILOVER_RUNS: usize = 5;
const QUICK_FAILOVER_RUNS: usize = 3;
/// The session timeout of the memory workload's records (see
/// `memory_workload`).
const MEMORY_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Held-lock steps of the memory workload, and the waiters queued after.
const HELD_STEPS: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
const QUICK_HELD_MAX: u64 = 10_000;
const WAITERS: u64 = 100_000;
const QUICK_WAITERS: u64 = 5_000;
/// clap's parser for a bench window: at least one whole second.
fn whole_secs(text: &str) -> Result<u64, String> {
    match jetlock_coordinator::duration::parse_secs(text)? {
        0 => Err(format!("{text:?} is under a second")),
        secs => Ok(secs),
    }
}

/// First token of every key and subject the bench writes.
const PREFIX: &str = "jetlock-bench";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// NATS server URL(s), comma-separated. Without it a local nats-server
    /// is started for the run (and stopped after it), one per --durability.
    #[arg(long)]
    url: Option<String>,
    /// Shorter runs (300 pairs per latency workload, 2 s per throughput
    /// group and contention path, 1 s per scaling row, 3 failovers of each
    /// kind and 5 election failovers, up to 10k held locks), for a quick check.
    #[arg(long)]
    quick: bool,
    /// Measured pairs per latency workload; overrides --quick [default: 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Print a JSON document instead of the markdown tables.
    #[arg(long)]
    json: bool,
    /// Run only these workloads (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Workload>,
    /// The local servers' sync_interval, comma-separated: W1 and W2 run
    /// against each, the other workloads against the first. Ignored with
    /// --url (the server's own setting applies).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "default,always"
    )]
    durability: Vec<Durability>,
    /// Clients (tasks) in the throughput and contention workloads.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(2..=1024))]
    clients: u64,
    /// Time per contention path, whole seconds (`5s`, `1m`; an integer is
    /// seconds); overrides --quick [default: 5s].
    #[arg(long = "contention", visible_alias = "contention-secs", value_parser = whole_secs)]
    contention_secs: Option<u64>,
    /// Time per throughput group, as --contention; overrides --quick
    /// [default: 5s].
    #[arg(long = "throughput", visible_alias = "throughput-secs", value_parser = whole_secs)]
    throughput_secs: Option<u64>,
    /// Most held locks in the memory workload (its steps are 1k, 10k, 100k,
    /// 1M); overrides --quick [default: 1000000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1000..))]
    max_held: Option<u64>,
    /// Where the coordinator runs.
    #[arg(long, value_enum, default_value_t = CoordinatorMode::Child)]
    coordinator: CoordinatorMode,
    /// Also draw the curves as SVG charts into this folder: latency.svg
    /// (W1's distribution), scaling-clients.svg, memory.svg,
    /// coordinators.svg, takeover.svg; each when its workload ran.
    #[arg(long, value_name = "DIR")]
    plots: Option<std::path::PathBuf>,
}

/// The workloads `--only` selects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// W1 and the JSON path: uncontended pairs.
    #[value(alias = "w1")]
    Latency,
    /// W2: many tasks on distinct keys.
    #[value(alias = "w2")]
    Throughput,
    /// W3: many clients on one key.
    #[value(alias = "w3")]
    Contention,
    /// W4: a holder process killed or hung.
    #[value(alias = "w4")]
    Failover,
    /// Election failover: the leader killed or resigning, jetlock and etcd.
    Election,
    /// Read/write locks (90/10), a semaphore (4 permits), and readers in
    /// keys of their own against one record listing them.
    Kinds,
    /// W2 and W3 at 1 to 64 clients.
    Scaling,
    /// `lock_all` of 2 and 8 keys, ordered against atomic.
    Multi,
    /// What beating sessions cost the coordinator and the server.
    Sessions,
    /// JSON pairs/s and CPU per pair with 1, 2 and 3 coordinators on a
    /// 3-node cluster the bench starts.
    Coordinators,
    /// Time until a coordinator's request partitions are served again
    /// after it is stopped or killed, with waiters queued.
    Takeover,
    /// The coordinator's memory per held lock and per waiter.
    Memory,
    /// Redis, PostgreSQL and etcd, when installed.
    Peers,
}

/// A local server's `sync_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// JetStream's default: fsync every 2 minutes (`nats/dev.conf`).
    Default,
    /// fsync before every acknowledgement, as production
    /// (`nats/cluster.conf`).
    Always,
}

impl Durability {
    fn sync(self) -> SyncInterval {
        match self {
            Durability::Default => SyncInterval::Default,
            Durability::Always => SyncInterval::Always,
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let machine = Machine::read();
    let iterations = args.iterations.unwrap_or(if args.quick {
        QUICK_ITERATIONS
    } else {
        DEFAULT_ITERATIONS
    });
    let syncs: Vec<Option<SyncInterval>> = match &args.url {
        Some(_) => vec![None],
        None => {
            let mut syncs: Vec<Option<SyncInterval>> = Vec::new();
            for d in &args.durability {
                if !syncs.contains(&Some(d.sync())) {
                    syncs.push(Some(d.sync()));
                }
            }
            syncs
        }
    };
    let mut report = Report {
        cpus: machine.cpus,
        machine,
        nats_server_version: "unknown".to_owned(),
        local_server: args.url.is_none(),
        coordinator: String::new(),
        durability: Vec::new(),
        iterations,
        warmup: WARMUP,
        results: Vec::new(),
        writes: Vec::new(),
        throughput: Vec::new(),
        contention: Vec::new(),
        kinds: Vec::new(),
        failover: Vec::new(),
        election: Vec::new(),
        scaling: Default::default(),
        multi: Vec::new(),
        sessions: Vec::new(),
        curve: Vec::new(),
        takeover: Vec::new(),
        memory: None,
        peers: Vec::new(),
        notes: Vec::new(),
        load_at_end: None,
        elapsed_s: 0.0,
    };
    let selected = |w| args.only.is_empty() || args.only.contains(&w);
    let needs_server = [
        Workload::Latency,
        Workload::Throughput,
        Workload::Contention,
        Workload::Kinds,
        Workload::Failover,
        Workload::Election,
        Workload::Scaling,
        Workload::Sessions,
        Workload::Memory,
        Workload::Multi,
    ]
    .into_iter()
    .any(selected);
    eta::plan(planned(&args, iterations, &syncs, needs_server));
    for (i, &sync) in syncs.iter().enumerate() {
        let first = i == 0;
        if !site_runs(&args.only, first, needs_server) {
            continue;
        }
        let mut site = Site::start(&args, sync).await?;
        if first {
            report.nats_server_version = match &site.server {
                Some(_) => server_version(&server_binary()?)
                    .map(|(a, b, c)| format!("{a}.{b}.{c}"))
                    .unwrap_or_else(|| "unknown".to_owned()),
                None => site.client.nats().server_info().version,
            };
            report.coordinator = site
                .coordinator
                .as_ref()
                .map(|c| c.describe())
                .unwrap_or_default();
        }
        report.durability.push(site.durability.clone());
        let ctx = Ctx::new(&args, &site, iterations);
        let measured = site_workloads(&ctx, first, &mut report).await;
        // Clean up even after a failed workload, but report the failure first.
        let cleanup = ctx.purge().await;
        drop(ctx);
        let measured = match measured {
            Ok(()) if first && selected(Workload::Memory) => {
                eta::begin("memory");
                memory_workload(&args, &mut site, &mut report).await
            }
            other => other,
        };
        site.stop_coordinator().await;
        measured?;
        cleanup?;
    }
    if selected(Workload::Coordinators) {
        eta::begin("coordinators");
        let window = Duration::from_secs(if args.quick {
            QUICK_CURVE_SECS
        } else {
            CURVE_SECS
        });
        report.curve = curve::run(args.clients as usize, window).await?;
    }
    if selected(Workload::Takeover) {
        eta::begin("takeover");
        report.takeover = takeover::run(args.quick).await?;
    }
    // Those two start their own cluster.
    if report.nats_server_version == "unknown"
        && (selected(Workload::Coordinators) || selected(Workload::Takeover))
    {
        if let Some((a, b, c)) = server_version(&server_binary()?) {
            report.nats_server_version = format!("{a}.{b}.{c}");
        }
    }
    if selected(Workload::Peers) {
        let plan = peers::Plan {
            iterations,
            clients: args.clients as usize,
            window: Duration::from_secs(args.contention_secs.unwrap_or(if args.quick {
                QUICK_CONTENTION_SECS
            } else {
                CONTENTION_SECS
            })),
            raw_p50_us: report
                .results
                .iter()
                .filter(|r| r.workload == latency::RAW_FRESH)
                .map(|r| (r.durability.clone(), r.p50_us))
                .collect(),
        };
        eta::begin("peers");
        report.peers = peers::run(&plan).await;
    }
    if selected(Workload::Election) {
        eta::begin("etcd election");
        match peers::election(election::runs(args.quick)).await {
            Ok(rows) => report.election.extend(rows),
            Err(why) => report.notes.push(format!("election, etcd: {why}")),
        }
    }
    report.load_at_end = machine::load_average();
    report.elapsed_s = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown(args.url.as_deref().unwrap_or("")));
    }
    if let Some(dir) = &args.plots {
        for file in plots::write(&report, dir)? {
            progress(&format!("wrote {}", file.display()));
        }
    }
    progress(&format!("done in {:.1} s", report.elapsed_s));
    Ok(())
}

/// Whether the site of a durability runs: the first runs every workload
/// that needs a server, the others W1 and W2 only.
fn site_runs(only: &[Workload], first: bool, needs_server: bool) -> bool {
    let selected = |w| only.is_empty() || only.contains(&w);
    needs_server && (first || selected(Workload::Latency) || selected(Workload::Throughput))
}

/// Each workload's planned time, in run order (see `eta.rs`): windows as
/// set, pairs at the pace of the last full run on 2 cores.
fn planned(
    args: &BenchArgs,
    iterations: u64,
    syncs: &[Option<SyncInterval>],
    needs_server: bool,
) -> Vec<(&'static str, Duration)> {
    let selected = |w| args.only.is_empty() || args.only.contains(&w);
    let secs = |given: Option<u64>, full: u64, quick: u64| {
        Duration::from_secs(given.unwrap_or(if args.quick { quick } else { full }))
    };
    let window = secs(args.contention_secs, CONTENTION_SECS, QUICK_CONTENTION_SECS);
    let length = secs(args.throughput_secs, THROUGHPUT_SECS, QUICK_THROUGHPUT_SECS);
    let scaling = secs(None, SCALING_SECS, QUICK_SCALING_SECS);
    let second = Duration::from_secs(1);
    let per_pair = |ms: u64| Duration::from_millis(ms) * iterations as u32;
    let mut stages = Vec::new();
    for (i, sync) in syncs.iter().enumerate() {
        let first = i == 0;
        if !site_runs(&args.only, first, needs_server) {
            continue;
        }
        let fsync = matches!(sync, Some(SyncInterval::Always));
        let mut stage = |w, name, time| {
            if selected(w) {
                stages.push((name, time));
            }
        };
        stage(
            Workload::Latency,
            "latency",
            per_pair(if fsync { 30 } else { 10 }),
        );
        stage(Workload::Throughput, "throughput", (length + second) * 6);
        if !first {
            continue;
        }
        stage(Workload::Multi, "multi", per_pair(7));
        stage(Workload::Contention, "contention", (window + second) * 3);
        stage(Workload::Kinds, "kinds", (window + second) * 4);
        let runs = if args.quick {
            QUICK_FAILOVER_RUNS
        } else {
            FAILOVER_RUNS
        };
        stage(Workload::Failover, "failover", second * 4 * runs as u32);
        let elections = second * 2 * election::runs(args.quick) as u32;
        stage(Workload::Election, "election", elections);
        stage(Workload::Scaling, "scaling", (scaling + second / 2) * 11);
        let (sessions, steps) = if args.quick {
            (QUICK_SESSIONS_SECS, sessions::QUICK_STEPS.len())
        } else {
            (SESSIONS_SECS, sessions::STEPS.len())
        };
        stage(
            Workload::Sessions,
            "sessions",
            second * (sessions as u32 + 1) * steps as u32,
        );
        let memory = if args.quick { 15 } else { 100 };
        stage(Workload::Memory, "memory", second * memory);
    }
    if selected(Workload::Coordinators) {
        let window = if args.quick {
            QUICK_CURVE_SECS
        } else {
            CURVE_SECS
        };
        // For each count of buckets: the cluster's start, then a
        // coordinator's start and settling before each window.
        let each = second * (window as u32 + 4);
        stages.push((
            "coordinators",
            (second * 5 + each * curve::MOST_COORDINATORS as u32) * curve::BUCKETS.len() as u32,
        ));
    }
    if selected(Workload::Takeover) {
        let (queues, runs, counts) = if args.quick {
            (
                takeover::QUICK_QUEUED,
                takeover::QUICK_RUNS,
                takeover::QUICK_COORDINATORS,
            )
        } else {
            (takeover::QUEUED, takeover::RUNS, takeover::COORDINATORS)
        };
        // Each run: the cluster's start, the coordinators', the holds, the
        // queue (about 5,000 a second), the takeover.
        let each: Duration = queues
            .iter()
            .map(|&q| second * 6 + Duration::from_micros(200) * q as u32)
            .sum();
        stages.push(("takeover", each * 2 * (runs * counts.len()) as u32));
    }
    if selected(Workload::Peers) {
        stages.push(("peers", (per_pair(5) + window + second * 5) * 3));
    }
    if selected(Workload::Election) {
        let elections = second * 2 * election::runs(args.quick) as u32;
        stages.push(("etcd election", elections));
    }
    stages
}

fn progress(what: &str) {
    eprintln!("jetlock bench: {what}…{}", eta::suffix());
}
