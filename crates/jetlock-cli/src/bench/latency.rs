//! W1 and the JSON path: one client, sequential, uncontended pairs (take,
//! then give back), each timed end to end into an HDR histogram in µs, in
//! interleaved rounds (see [`measure`]).

use super::json::JsonSession;
use super::CliError;
use async_nats::jetstream::kv;
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use jetlock::Client;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The W1 row the peers are compared with.
pub(super) const RAW_FRESH: &str = "raw kv pair, fresh key";

/// Pairs run before each workload's measured loop, not recorded.
pub(super) const WARMUP: u64 = 50;
/// Interleaved rounds the measured pairs are split into.
const ROUNDS: u64 = 10;

/// One workload's numbers.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) workload: &'static str,
    /// The durability of the server it ran against (`sync_interval`).
    pub(super) durability: String,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) pairs_per_sec: f64,
    /// p50 over the p50 of the matching raw KV row; `None` for the floor.
    pub(super) ratio_to_raw: Option<f64>,
    /// The latency distribution: (quantile, µs) at [`QUANTILES`], then the
    /// slowest pair (quantile 1).
    pub(super) quantiles_us: Vec<(f64, u64)>,
}

/// The quantiles a row's distribution is reported at.
pub(super) const QUANTILES: [f64; 6] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999];

/// What one timed loop measured.
pub(super) struct Measurement {
    pub(super) histogram: Histogram<u64>,
    pub(super) elapsed: Duration,
}

impl Default for Measurement {
    fn default() -> Self {
        Measurement {
            histogram: Histogram::new(3).expect("3 significant digits is a valid precision"),
            elapsed: Duration::ZERO,
        }
    }
}

/// Where the pairs run.
pub(super) struct Target<'a> {
    pub(super) nats: &'a async_nats::Client,
    pub(super) kv: &'a kv::Store,
    pub(super) client: &'a Client,
    pub(super) json: &'a mut JsonSession,
    /// The run's key prefix (`jetlock-bench.<nuid>`).
    pub(super) run: &'a str,
    /// The lock-name prefix whose keys fall under `run`.
    pub(super) names: &'a str,
    /// The raw rows' value: a record like the ones jetlock writes.
    pub(super) value: &'a Bytes,
}

/// Runs the seven workloads and returns their rows, each jetlock or JSON
/// row compared with the raw row doing the same job.
pub(super) async fn run(t: Target<'_>, iterations: u64) -> Result<Vec<Row>, CliError> {
    let [rtt, raw_fresh, raw_reused, jl_fresh, jl_reused, json_fresh, json_reused] =
        measure(t, iterations).await?;
    let rows = [
        ("nats core rtt", &rtt, None),
        (RAW_FRESH, &raw_fresh, Some(&raw_fresh)),
        ("raw kv pair, reused key", &raw_reused, Some(&raw_reused)),
        ("jetlock pair, fresh key", &jl_fresh, Some(&raw_fresh)),
        ("jetlock pair, reused key", &jl_reused, Some(&raw_reused)),
        (
            "json pair via coordinator, fresh key",
            &json_fresh,
            Some(&raw_fresh),
        ),
        (
            "json pair via coordinator, reused key",
            &json_reused,
            Some(&raw_reused),
        ),
    ];
    Ok(rows
        .into_iter()
        .map(|(workload, m, raw)| row(workload, m, iterations, raw.map(p50)))
        .collect())
}

/// Runs the workloads in [`ROUNDS`] interleaved rounds, each round a slice
/// of every workload, so that drift of a shared 2-core machine (other
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
///   name (the Rust client's fast path: no coordinator involved);
/// - JSON a/b, the same through the coordinator by the JSON protocol: two
///   request-stream publishes, two coordinator CAS writes, two answers.
async fn measure(t: Target<'_>, iterations: u64) -> Result<[Measurement; 7], CliError> {
    let Target {
        nats,
        kv,
        client,
        json,
        run,
        names,
        value,
    } = t;
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
    let jl_reused = format!("{names}:reused");
    let json_reused = format!("{names}:json-reused");

    let mut m: [Measurement; 7] = std::array::from_fn(|_| Measurement::default());
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
            super::progress("latency: 7 workloads, interleaved");
        }
        let [rtt, raw_f, raw_r, jl_f, jl_r, js_f, js_r] = &mut m;
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
                jetlock_pair(client, &format!("{names}:fresh-{i}")).await
            })
            .await?;
            timed(jl_r, range.clone(), record, async |_| {
                jetlock_pair(client, &jl_reused).await
            })
            .await?;
            timed(js_f, range.clone(), record, async |i| {
                json.pair(&format!("{names}:json-fresh-{i}")).await
            })
            .await?;
            timed(js_r, range.clone(), record, async |_| {
                json.pair(&json_reused).await
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

pub(super) async fn raw_pair(kv: &kv::Store, key: &str, value: &Bytes) -> Result<(), CliError> {
    let revision = kv.create(key, value.clone()).await?;
    kv.delete_expect_revision(key, Some(revision)).await?;
    Ok(())
}

pub(super) async fn jetlock_pair(client: &Client, name: &str) -> Result<(), CliError> {
    client.lock(name).acquire().await?.release().await?;
    Ok(())
}

/// Runs `pair` for each index in `range`; when `record`, times each call
/// into the measurement's histogram (µs) and adds the loop's wall time.
/// Indices are distinct across calls, for workloads that need fresh keys.
pub(super) async fn timed(
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

fn p50(m: &Measurement) -> u64 {
    m.histogram.value_at_quantile(0.5)
}

fn row(workload: &'static str, m: &Measurement, iterations: u64, raw_p50: Option<u64>) -> Row {
    let p50_us = p50(m);
    Row {
        workload,
        durability: String::new(),
        p50_us,
        p99_us: m.histogram.value_at_quantile(0.99),
        pairs_per_sec: iterations as f64 / m.elapsed.as_secs_f64(),
        ratio_to_raw: raw_p50.map(|raw| p50_us as f64 / raw.max(1) as f64),
        quantiles_us: QUANTILES
            .iter()
            .map(|&q| (q, m.histogram.value_at_quantile(q)))
            .chain([(1.0, m.histogram.max())])
            .collect(),
    }
}
