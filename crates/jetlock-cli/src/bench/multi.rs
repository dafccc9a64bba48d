//! Multi-key: one client, sequential, uncontended `lock_all` + release of
//! 2 and of 8 keys, taken one by one in key order (a CAS each) and
//! atomically (one batch of every key's CAS, `.atomic()`), in interleaved
//! rounds as W1. Releases are one CAS per key either way, so the gap
//! between the rows is the acquire's round trips: one per key against one.

use super::latency::{timed, Measurement, WARMUP};
use super::CliError;
use jetlock::Client;
use serde::Serialize;

/// Set sizes measured.
const KEYS: [usize; 2] = [2, 8];
/// Interleaved rounds the measured sets are split into.
const ROUNDS: u64 = 10;

/// One row: a set size and a way to take it.
#[derive(Debug, Serialize)]
pub(super) struct MultiRow {
    /// `ordered` or `atomic`.
    pub(super) path: &'static str,
    pub(super) keys: usize,
    /// Acquire + release of the whole set, end to end.
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) sets_per_sec: f64,
    /// p50 over the ordered row's p50 for the same size; `None` for it.
    pub(super) ratio_to_ordered: Option<f64>,
}

/// Runs the four workloads on names under `names` (the same set every
/// time, so each acquire starts from its own release markers).
pub(super) async fn run(
    client: &Client,
    names: &str,
    iterations: u64,
) -> Result<Vec<MultiRow>, CliError> {
    let sets: Vec<Vec<String>> = KEYS
        .iter()
        .map(|&n| (0..n).map(|k| format!("{names}:multi-{n}-{k}")).collect())
        .collect();
    let mut m: Vec<[Measurement; 2]> = KEYS.iter().map(|_| Default::default()).collect();
    for round in 0..=ROUNDS {
        // Round 0 is the warm-up; then sets [from, to) of each workload.
        let (range, record) = match round {
            0 => (0..WARMUP, false),
            r => (
                WARMUP + (r - 1) * iterations / ROUNDS..WARMUP + r * iterations / ROUNDS,
                true,
            ),
        };
        for (set, [ordered, atomic]) in sets.iter().zip(m.iter_mut()) {
            timed(ordered, range.clone(), record, async |_| {
                Ok(client.lock_all(set).acquire().await?.release().await?)
            })
            .await?;
            timed(atomic, range.clone(), record, async |_| {
                Ok(client
                    .lock_all(set)
                    .atomic()
                    .acquire()
                    .await?
                    .release()
                    .await?)
            })
            .await?;
        }
    }
    let row = |path, keys, m: &Measurement, ordered_p50: Option<u64>| {
        let p50_us = m.histogram.value_at_quantile(0.5);
        MultiRow {
            path,
            keys,
            p50_us,
            p99_us: m.histogram.value_at_quantile(0.99),
            sets_per_sec: iterations as f64 / m.elapsed.as_secs_f64(),
            ratio_to_ordered: ordered_p50.map(|o| p50_us as f64 / o.max(1) as f64),
        }
    };
    Ok(KEYS
        .iter()
        .zip(&m)
        .flat_map(|(&keys, [ordered, atomic])| {
            let ordered_p50 = ordered.histogram.value_at_quantile(0.5);
            [
                row("ordered", keys, ordered, None),
                row("atomic", keys, atomic, Some(ordered_p50)),
            ]
        })
        .collect())
}
