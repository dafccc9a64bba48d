//! `jetlock bench`: lock latency, contention and failover beside the raw
//! NATS floor.
//!
//! - **W1 latency and the JSON path** (`latency.rs`) — one client,
//!   sequential, uncontended acquire + release pairs in interleaved rounds:
//!   the core NATS round trip, the raw KV pair (async-nats `kv.create` +
//!   `kv.delete_expect_revision`) on a fresh and a reused key, the Rust
//!   client's fast path on the same, and a client of the JSON protocol
//!   (`json.rs`, a plain NATS connection) through the coordinator;
//! - **W3 contention** (`contention.rs`) — 32 clients, each its own session,
//!   on one key for 5 s: the coordinator's FIFO queue, the watch-and-race
//!   path (`.queue(false)`), and raw KV watch + CAS retry;
//! - **W4 failover** (`failover.rs`) — a `jetlock hold` child is killed or
//!   hung while a waiter is queued: time to the waiter's grant.
//!
//! The raw floor runs in the same process, against the same server, in the
//! same run, because absolute latencies mean little across machines, server
//! versions and storage: the ratio of jetlock to the raw KV pair doing the
//! same job is what says how much jetlock itself costs.
//!
//! The bench starts what it needs (`procs.rs`): a nats-server unless `--url`
//! is given, and a coordinator (a `jetlock serve` child by default; see
//! `--coordinator`). Every process it starts is killed when it ends, however
//! it ends. Everything the run writes lives under one per-run key prefix,
//! purged from the bucket at the end.

mod contention;
mod failover;
mod json;
mod latency;
mod procs;

pub use procs::CoordinatorMode;

use super::CliError;
use crate::bucket::open_bucket;
use crate::record::LockRecord;
use crate::server::{server_binary, server_version, NatsServer};
use crate::{Client, ClientOptions};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use contention::ContentionRow;
use failover::{Death, FailoverRow};
use latency::{Row, WARMUP};
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Measured pairs per W1 workload by default.
const DEFAULT_ITERATIONS: u64 = 2000;
/// Measured pairs per W1 workload with `--quick`.
const QUICK_ITERATIONS: u64 = 300;
/// W3 window per path, by default and with `--quick`.
const CONTENTION_SECS: u64 = 5;
const QUICK_CONTENTION_SECS: u64 = 2;
/// W4 runs per kind of death, by default and with `--quick`.
const FAILOVER_RUNS: usize = 5;
const QUICK_FAILOVER_RUNS: usize = 3;
/// First token of every key and subject the bench writes.
const PREFIX: &str = "jetlock-bench";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// NATS server URL(s), comma-separated. Without it a local nats-server
    /// is started for the run (and stopped after it).
    #[arg(long)]
    url: Option<String>,
    /// Shorter runs (300 pairs per latency workload, 2 s per contention
    /// path, 3 failovers of each kind), for a quick check.
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
    /// Clients contending for the one key in the contention workload.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(2..=1024))]
    clients: u64,
    /// Seconds per contention path; overrides --quick [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    contention_secs: Option<u64>,
    /// Where the coordinator runs.
    #[arg(long, value_enum, default_value_t = CoordinatorMode::Child)]
    coordinator: CoordinatorMode,
}

/// The workloads `--only` selects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// W1 and the JSON path: uncontended pairs.
    Latency,
    /// W3: many clients on one key.
    Contention,
    /// W4: a holder process killed or hung.
    Failover,
}

/// The whole report, as printed by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    nats_server_version: String,
    local_server: bool,
    coordinator: String,
    cpus: usize,
    iterations: u64,
    warmup: u64,
    /// W1 and the JSON path.
    results: Vec<Row>,
    /// W3.
    contention: Vec<ContentionRow>,
    /// W4.
    failover: Vec<FailoverRow>,
    /// Wall time of the whole bench, servers included.
    elapsed_s: f64,
}

/// What the workloads share.
struct Ctx<'a> {
    args: &'a BenchArgs,
    url: &'a str,
    bucket: String,
    client: &'a Client,
    nats: async_nats::Client,
    kv: kv::Store,
    /// The run's key prefix, and the lock-name prefix whose keys fall
    /// under it (`:` in a name is `.` in its key).
    run: String,
    names: String,
    /// A one-token prefix for the names the Rust client sends to the
    /// coordinator (see [`Ctx::coordinated_name`]).
    flat: String,
    /// Those names, purged one by one at the end.
    flat_names: Mutex<Vec<String>>,
    value: Bytes,
    iterations: u64,
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let iterations = args.iterations.unwrap_or(if args.quick {
        QUICK_ITERATIONS
    } else {
        DEFAULT_ITERATIONS
    });
    // Kept alive until the end of the run: dropping it stops the server.
    let (local, url) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let server = NatsServer::start_single(None)?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = ClientOptions::new()
        .name("jetlock-bench")
        .create_bucket(1)
        .connect(&url)
        .await?;
    let nats = client.nats().clone();
    let js = jetstream::new(nats.clone());
    let bucket = client.store().bucket().to_owned();
    let kv = open_bucket(&js, &bucket).await?;
    let nats_server_version = match &local {
        Some(_) => server_version(&server_binary()?)
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or_else(|| "unknown".to_owned()),
        None => nats.server_info().version,
    };
    progress("starting the coordinator");
    let coordinator = procs::Coord::start(args.coordinator, &url, &bucket).await?;
    // One prefix per run, so runs never see each other's keys.
    let id = nuid::next();
    let run = format!("{PREFIX}.{id}");
    let ctx = Ctx {
        flat: format!("{PREFIX}-{id}"),
        flat_names: Mutex::new(Vec::new()),
        args: &args,
        url: &url,
        bucket,
        client: &client,
        nats,
        kv,
        names: run.replace('.', ":"),
        value: Bytes::from(sample_record(&client).encode()),
        run,
        iterations,
    };
    let measured = workloads(&ctx).await;
    // Clean up even after a failed workload, but report the failure first.
    let coordinator_text = coordinator.describe();
    coordinator.stop().await;
    let flat_names = std::mem::take(&mut *ctx.flat_names.lock().expect("never poisoned"));
    let cleanup = purge_run(&js, &ctx.kv, &ctx.run, &flat_names).await;
    let (results, contention, failover) = measured?;
    cleanup?;

    let report = Report {
        nats_server_version,
        local_server: local.is_some(),
        coordinator: coordinator_text,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        iterations,
        warmup: WARMUP,
        results,
        contention,
        failover,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_markdown(&report, &url);
    }
    progress(&format!("done in {:.1} s", report.elapsed_s));
    Ok(())
}

type Measured = (Vec<Row>, Vec<ContentionRow>, Vec<FailoverRow>);

async fn workloads(ctx: &Ctx<'_>) -> Result<Measured, CliError> {
    let selected = |w| ctx.args.only.is_empty() || ctx.args.only.contains(&w);
    let mut results = Vec::new();
    if selected(Workload::Latency) {
        let mut json = json::JsonSession::connect(ctx.url).await?;
        let target = latency::Target {
            nats: &ctx.nats,
            kv: &ctx.kv,
            client: ctx.client,
            json: &mut json,
            run: &ctx.run,
            names: &ctx.names,
            value: &ctx.value,
        };
        results = latency::run(target, ctx.iterations).await?;
    }
    let mut contention = Vec::new();
    if selected(Workload::Contention) {
        let secs = ctx.args.contention_secs.unwrap_or(if ctx.args.quick {
            QUICK_CONTENTION_SECS
        } else {
            CONTENTION_SECS
        });
        let window = Duration::from_secs(secs);
        let clients = ctx.args.clients as usize;
        let (url, bucket) = (ctx.url, ctx.bucket.as_str());
        // Raw first and the watch-and-race path last: every wait of those
        // creates a server-side consumer that outlives it by 30 s (see
        // `consumers_left`), and the server refuses new consumers past
        // about a thousand, which would break the watches of later runs.
        let run = async |label: &str, path| {
            progress(&format!(
                "contention: {clients} clients, one key, {label}, {secs} s"
            ));
            let before = consumers(&ctx.kv).await?;
            let mut row = match path {
                Path::Raw => {
                    let key = format!("{}.w3-raw", ctx.run);
                    contention::raw(url, bucket, &key, &ctx.value, clients, window).await?
                }
                Path::Queue => {
                    let name = ctx.coordinated_name("w3-queue");
                    let workload = "jetlock, coordinator FIFO queue";
                    contention::jetlock(workload, url, bucket, &name, clients, window, true).await?
                }
                Path::Race => {
                    let name = ctx.coordinated_name("w3-race");
                    let workload = "jetlock, watch and race (.queue(false))";
                    contention::jetlock(workload, url, bucket, &name, clients, window, false)
                        .await?
                }
            };
            row.consumers_left = consumers(&ctx.kv).await? as i64 - before as i64;
            Ok::<_, CliError>(row)
        };
        contention.push(run("raw kv watch + CAS", Path::Raw).await?);
        contention.push(run("coordinator queue", Path::Queue).await?);
        contention.push(run("watch and race", Path::Race).await?);
    }
    let mut failover = Vec::new();
    if selected(Workload::Failover) {
        let runs = if ctx.args.quick {
            QUICK_FAILOVER_RUNS
        } else {
            FAILOVER_RUNS
        };
        let waiter = ClientOptions::new()
            .name("jetlock-bench-waiter")
            .bucket(&ctx.bucket)
            .connect(ctx.url)
            .await?;
        let setup = failover::Setup {
            url: ctx.url,
            bucket: &ctx.bucket,
            waiter: &waiter,
            nats: &ctx.nats,
            name: &|suffix| ctx.coordinated_name(suffix),
        };
        for death in [Death::Kill, Death::Hang] {
            progress(&format!("failover: {}, {runs} runs", death_name(death)));
            failover.push(failover::run(&setup, death, runs).await?);
        }
    }
    Ok((results, contention, failover))
}

#[derive(Clone, Copy)]
enum Path {
    Raw,
    Queue,
    Race,
}

/// Consumers on the bucket's stream right now.
async fn consumers(kv: &kv::Store) -> Result<usize, CliError> {
    let mut stream = kv.stream.clone();
    Ok(stream.info().await?.state.consumer_count)
}

fn death_name(death: Death) -> &'static str {
    match death {
        Death::Kill => "holder process killed",
        Death::Hang => "holder process hung",
    }
}

/// A record like the ones jetlock writes, for the raw rows' value.
fn sample_record(client: &Client) -> LockRecord {
    LockRecord {
        owner: "jetlock-bench#1".to_owned(),
        session: client.session().to_owned(),
        acquired_ms: 1_764_000_000_000,
        lease_ms: crate::client::DEFAULT_TTL.as_millis() as u64,
        holds: 1,
        token: 0,
    }
}

impl Ctx<'_> {
    /// A lock name for a workload where the Rust client queues at the
    /// coordinator. It has a `:` so its KV key differs from the name: the
    /// overlap count of W3 and the token check of W4 guard against a client
    /// that puts the key where the protocol wants the name (an early bug).
    fn coordinated_name(&self, suffix: &str) -> String {
        let name = format!("{}:{suffix}", self.flat);
        let mut names = self.flat_names.lock().expect("never poisoned");
        names.push(name.clone());
        name
    }
}

/// Removes everything the run wrote (records, delete and release markers):
/// the keys under the run's prefix and the coordinated workloads' names.
async fn purge_run(
    js: &jetstream::Context,
    kv: &kv::Store,
    run: &str,
    flat_names: &[String],
) -> Result<(), CliError> {
    let stream = js.get_stream(&kv.stream_name).await?;
    stream
        .purge()
        .filter(format!("$KV.{}.{run}.>", kv.name))
        .await?;
    for name in flat_names {
        let key = crate::name::LockName::new(name)?;
        stream
            .purge()
            .filter(format!("$KV.{}.{}", kv.name, key.key()))
            .await?;
    }
    Ok(())
}

fn progress(what: &str) {
    eprintln!("jetlock bench: {what}…");
}

fn print_markdown(report: &Report, url: &str) {
    println!("nats-server: {}", report.nats_server_version);
    if report.local_server {
        println!("server: local (started for this run)");
    } else {
        println!("server: {url}");
    }
    println!("coordinator: {}", report.coordinator);
    println!("cpus: {}", report.cpus);
    if !report.results.is_empty() {
        println!(
            "iterations: {} pairs per workload, after {} unrecorded warm-up pairs",
            report.iterations, report.warmup
        );
        println!();
        println!("| workload | p50 (µs) | p99 (µs) | pairs/s | × raw kv pair |");
        println!("|---|---:|---:|---:|---:|");
        for row in &report.results {
            let ratio = match row.ratio_to_raw {
                Some(r) => format!("{r:.2}"),
                None => "floor".to_owned(),
            };
            println!(
                "| {} | {} | {} | {:.0} | {ratio} |",
                row.workload, row.p50_us, row.p99_us, row.pairs_per_sec
            );
        }
    }
    if let Some(first) = report.contention.first() {
        println!();
        println!(
            "contention: {} clients (one session and connection each) on one key, acquire → release, {} s per path",
            first.clients, first.seconds
        );
        println!();
        println!("| path | owner changes/s | grants | grants per client (min–max) | min/max | wait p50 (ms) | wait p99 (ms) | overlaps | consumers left |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &report.contention {
            println!(
                "| {} | {:.0} | {} | {}–{} | {:.2} | {:.1} | {:.1} | {} | {} |",
                r.workload,
                r.owner_changes_per_sec,
                r.grants,
                r.min_grants,
                r.max_grants,
                r.min_max_ratio,
                r.wait_p50_ms,
                r.wait_p99_ms,
                r.overlaps,
                r.consumers_left
            );
        }
    }
    if !report.failover.is_empty() {
        println!();
        println!("failover: a `jetlock hold` process holds the lock, an in-process waiter is queued; the holder dies");
        println!();
        println!("| event | runs | p50 (ms) | max (ms) | target (ms) | each run (ms) |");
        println!("|---|---:|---:|---:|---:|---|");
        for r in &report.failover {
            let each: Vec<String> = r.samples_ms.iter().map(|s| format!("{s:.1}")).collect();
            println!(
                "| {} | {} | {:.1} | {:.1} | ≤ {:.0} | {} |",
                r.event,
                r.runs,
                r.p50_ms,
                r.max_ms,
                r.target_ms,
                each.join(", ")
            );
        }
    }
}
