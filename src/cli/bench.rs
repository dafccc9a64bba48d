//! `jetlock bench`: lock latency and throughput beside the raw NATS floor.
//!
//! One client, sequential: every measured operation is one *pair* (take,
//! then give back) timed end to end with [`Instant`] into an HDR histogram
//! in microseconds, after a short warm-up that is not recorded. Five
//! workloads run against the same server, connection and bucket, in
//! interleaved rounds (see [`measure`]):
//!
//! - **nats core rtt** — a core NATS request answered with an empty reply by
//!   a responder on the same connection: the floor of any request/reply
//!   through this server, with no JetStream and no storage (it crosses the
//!   server twice, so a single JetStream publish-and-ack, which crosses it
//!   once, can come in under it; a KV pair is two of those);
//! - **raw kv pair** — async-nats `kv.create` + `kv.delete_expect_revision`
//!   on the locks bucket with a value the size of a lock record, on a fresh
//!   key each time and on one reused key (async-nats' `create` on a key
//!   holding a delete marker is a failed create, a read and an update: three
//!   round trips, the honest raw floor for reuse);
//! - **jetlock pair** — `client.lock(name).acquire()` + `guard.release()`,
//!   on a fresh name each time and on one reused name.
//!
//! The raw floor runs in the same process, against the same server, in the
//! same run, because absolute latencies mean little across machines, server
//! versions and storage: the ratio of jetlock to the raw KV pair doing the
//! same job is what says how much jetlock itself costs. Everything the run
//! writes lives under one per-run key prefix, purged from the bucket at the
//! end.

use super::CliError;
use crate::bucket::open_bucket;
use crate::record::LockRecord;
use crate::server::{server_binary, server_version, NatsServer};
use crate::{Client, ClientOptions};
use async_nats::jetstream::{self, kv};
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Pairs run before each workload's measured loop, not recorded.
const WARMUP: u64 = 50;
/// Measured pairs per workload by default.
const DEFAULT_ITERATIONS: u64 = 2000;
/// Interleaved rounds the measured pairs are split into.
const ROUNDS: u64 = 10;
/// Measured pairs per workload with `--quick`.
const QUICK_ITERATIONS: u64 = 300;
/// First token of every key and subject the bench writes.
const PREFIX: &str = "jetlock-bench";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// NATS server URL(s), comma-separated. Without it a local nats-server
    /// is started for the run (and stopped after it).
    #[arg(long)]
    url: Option<String>,
    /// Fewer iterations (300 pairs per workload), for a quick check.
    #[arg(long)]
    quick: bool,
    /// Measured pairs per workload; overrides --quick [default: 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Print a JSON document instead of the markdown table.
    #[arg(long)]
    json: bool,
}

/// The whole report, as printed by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    nats_server_version: String,
    local_server: bool,
    cpus: usize,
    iterations: u64,
    warmup: u64,
    results: Vec<Row>,
}

/// One workload's numbers.
#[derive(Debug, Serialize)]
struct Row {
    workload: &'static str,
    p50_us: u64,
    p99_us: u64,
    pairs_per_sec: f64,
    /// p50 over the p50 of the matching raw KV row; `None` for the floor.
    ratio_to_raw: Option<f64>,
}

/// What one timed loop measured.
struct Measurement {
    histogram: Histogram<u64>,
    elapsed: Duration,
}

impl Default for Measurement {
    fn default() -> Self {
        Measurement {
            histogram: Histogram::new(3).expect("3 significant digits is a valid precision"),
            elapsed: Duration::ZERO,
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let iterations = args.iterations.unwrap_or(if args.quick {
        QUICK_ITERATIONS
    } else {
        DEFAULT_ITERATIONS
    });
    // Kept alive until the end of the run: dropping it stops the server.
    let (local, url) = match args.url {
        Some(url) => (None, url),
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
    let kv = open_bucket(&js, client.store().bucket()).await?;

    let nats_server_version = match &local {
        Some(_) => server_version(&server_binary()?)
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or_else(|| "unknown".to_owned()),
        None => nats.server_info().version,
    };
    // One prefix per run, so runs never see each other's keys.
    let run = format!("{PREFIX}.{}", nuid::next());
    let value = Bytes::from(sample_record(&client).encode());

    let measured = measure(&nats, &kv, &client, &run, &value, iterations).await;
    // Clean up even after a failed workload, but report the failure first.
    let cleanup = purge_run(&js, &kv, &run).await;
    let [rtt, raw_fresh, raw_reused, jl_fresh, jl_reused] = measured?;
    cleanup?;

    // Each jetlock row is compared with the raw row doing the same job.
    let rows = [
        ("nats core rtt", &rtt, None),
        ("raw kv pair, fresh key", &raw_fresh, Some(&raw_fresh)),
        ("raw kv pair, reused key", &raw_reused, Some(&raw_reused)),
        ("jetlock pair, fresh key", &jl_fresh, Some(&raw_fresh)),
        ("jetlock pair, reused key", &jl_reused, Some(&raw_reused)),
    ];
    let report = Report {
        nats_server_version,
        local_server: local.is_some(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        iterations,
        warmup: WARMUP,
        results: rows
            .into_iter()
            .map(|(workload, m, raw)| row(workload, m, iterations, raw.map(p50)))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_markdown(&report, &url);
    }
    Ok(())
}

/// Runs the five workloads in [`ROUNDS`] interleaved rounds, each round a
/// slice of every workload, so that drift of a shared 2-core machine (other
/// processes, the server's own background work) spreads over all rows
/// instead of landing on whichever ran last; the ratios compare like with
/// like. Each workload is warmed up once, unrecorded, first.
///
/// - W1a, core NATS request/reply with an empty payload, answered by a
///   responder subscribed on the same connection;
/// - W1b/c, the raw KV pair on a new key each time (create is one round
///   trip) and on one key (create over a delete marker is three: the failed
///   create, a read, an update);
/// - W1d/e, a jetlock acquire + release on a new name each time and on one
///   name.
async fn measure(
    nats: &async_nats::Client,
    kv: &kv::Store,
    client: &Client,
    run: &str,
    value: &Bytes,
    iterations: u64,
) -> Result<[Measurement; 5], CliError> {
    let subject = Subject::from(format!("{run}.rtt"));
    let mut requests = nats.subscribe(subject.clone()).await?;
    // Make sure the server knows the responder before the first request.
    nats.flush().await?;
    let replier = nats.clone();
    let responder = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                // A lost reply surfaces as the requester's error.
                let _ = replier.publish(reply, Bytes::new()).await;
            }
        }
    });
    let raw_reused = format!("{run}.raw-reused");
    let prefix = lock_prefix(run);
    let jl_reused = format!("{prefix}:reused");

    let mut m: [Measurement; 5] = std::array::from_fn(|_| Measurement::default());
    let mut result = Ok(());
    let warmup = 0..WARMUP;
    for round in 0..=ROUNDS {
        // Round 0 is the warm-up; then pairs [from, to) of each workload.
        let (range, record) = match round {
            0 => (warmup.clone(), false),
            r => (
                WARMUP + (r - 1) * iterations / ROUNDS..WARMUP + r * iterations / ROUNDS,
                true,
            ),
        };
        if record && round == 1 {
            progress("5 workloads, interleaved");
        }
        let [rtt, raw_f, raw_r, jl_f, jl_r] = &mut m;
        result = async {
            timed(rtt, range.clone(), record, async |_| {
                nats.request(subject.clone(), Bytes::new()).await?;
                Ok(())
            })
            .await?;
            timed(raw_f, range.clone(), record, async |i| {
                raw_pair(kv, &format!("{run}.raw-fresh-{i}"), value).await
            })
            .await?;
            timed(raw_r, range.clone(), record, async |_| {
                raw_pair(kv, &raw_reused, value).await
            })
            .await?;
            timed(jl_f, range.clone(), record, async |i| {
                jetlock_pair(client, &format!("{prefix}:fresh-{i}")).await
            })
            .await?;
            timed(jl_r, range.clone(), record, async |_| {
                jetlock_pair(client, &jl_reused).await
            })
            .await
        }
        .await;
        if result.is_err() {
            break;
        }
    }
    responder.abort();
    result.map(|()| m)
}

async fn raw_pair(kv: &kv::Store, key: &str, value: &Bytes) -> Result<(), CliError> {
    let revision = kv.create(key, value.clone()).await?;
    kv.delete_expect_revision(key, Some(revision)).await?;
    Ok(())
}

async fn jetlock_pair(client: &Client, name: &str) -> Result<(), CliError> {
    client.lock(name).acquire().await?.release().await?;
    Ok(())
}

/// Runs `pair` for each index in `range`; when `record`, times each call
/// into the measurement's histogram (µs) and adds the loop's wall time.
/// Indices are distinct across calls, for workloads that need fresh keys.
async fn timed(
    m: &mut Measurement,
    range: std::ops::Range<u64>,
    record: bool,
    mut pair: impl AsyncFnMut(u64) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let started = Instant::now();
    for i in range {
        let pair_started = Instant::now();
        pair(i).await?;
        if record {
            let us = u64::try_from(pair_started.elapsed().as_micros()).unwrap_or(u64::MAX);
            m.histogram.record(us)?;
        }
    }
    if record {
        m.elapsed += started.elapsed();
    }
    Ok(())
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

/// The lock-name prefix whose keys fall under the run's key prefix
/// (`:` in a name is `.` in its key).
fn lock_prefix(run: &str) -> String {
    run.replace('.', ":")
}

/// Removes everything the run wrote (records, delete and release markers).
async fn purge_run(js: &jetstream::Context, kv: &kv::Store, run: &str) -> Result<(), CliError> {
    let stream = js.get_stream(&kv.stream_name).await?;
    stream
        .purge()
        .filter(format!("$KV.{}.{run}.>", kv.name))
        .await?;
    Ok(())
}

fn progress(workload: &str) {
    eprintln!("jetlock bench: {workload}…");
}

fn p50(m: &Measurement) -> u64 {
    m.histogram.value_at_quantile(0.5)
}

fn row(workload: &'static str, m: &Measurement, iterations: u64, raw_p50: Option<u64>) -> Row {
    let p50_us = p50(m);
    Row {
        workload,
        p50_us,
        p99_us: m.histogram.value_at_quantile(0.99),
        pairs_per_sec: iterations as f64 / m.elapsed.as_secs_f64(),
        ratio_to_raw: raw_p50.map(|raw| p50_us as f64 / raw.max(1) as f64),
    }
}

fn print_markdown(report: &Report, url: &str) {
    println!("nats-server: {}", report.nats_server_version);
    if report.local_server {
        println!("server: local (started for this run)");
    } else {
        println!("server: {url}");
    }
    println!("cpus: {}", report.cpus);
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
