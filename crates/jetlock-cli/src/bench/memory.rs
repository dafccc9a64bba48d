//! Scaling in memory: what a held lock and a queued waiter cost the
//! coordinator.
//!
//! A fresh `jetlock serve` child (so no earlier workload's freed memory is
//! reused and hides the growth) watches the bucket while the bench writes
//! held lock records into it: 1k, then 10k, 100k and 1M in all. The records
//! are what the fast path writes (a [`jetlock::record::LockRecord`] of a live
//! session), published straight to the bucket's subjects with many
//! publishes in flight, because the coordinator's memory is what is
//! measured, not the rate of acquires. After each step, once the
//! coordinator's `jetlock_locks_held` gauge counts every record, its
//! resident memory (`VmRSS`) is read; memory per held lock is the growth
//! over the baseline divided by the locks. Then waiters: JSON acquire
//! requests with a long wait, spread over the first held keys, until its
//! `jetlock_queue_depth` gauges count them all.
//!
//! The coordinator's CPU time over an idle second after each step shows
//! what the held locks cost it when nothing happens.
//!
//! Last, a restart: the coordinator is stopped and a fresh one started on
//! the same bucket and request stream, with the waiters' sessions still
//! beating. Its time to ready is how long a coordinator takes to rebuild
//! every held lock and queued request before it acts again: the takeover
//! bound of docs/SCALING.md for one partition holding everything.

use super::json::JsonSession;
use super::CliError;
use async_nats::jetstream;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use serde::Serialize;
use std::future::IntoFuture;
use std::time::Duration;
use tokio::time::Instant;

/// Publishes in flight while writing held records or waiters.
const IN_FLIGHT: usize = 2048;
/// Keys the waiters are spread over (fewer when fewer are held): a queue is
/// scanned on every change of its key, so thousands on one key would
/// measure that scan instead of memory.
const WAITER_KEYS: u64 = 1000;
/// JSON sessions the waiters come from.
const WAITER_SESSIONS: usize = 8;
/// How long the waiters ask to wait: longer than the workload.
const WAITER_WAIT: Duration = Duration::from_secs(600);
/// Time for the allocator and the coordinator's gauges to settle before a
/// reading.
const SETTLE: Duration = Duration::from_millis(1500);
/// The window the idle CPU is measured over.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// Targets from issue 5.
pub(super) const TARGET_PER_LOCK: f64 = 200.0;
pub(super) const TARGET_PER_WAITER: f64 = 500.0;

#[derive(Debug, Serialize)]
pub(super) struct MemoryReport {
    /// Resident memory of the fresh coordinator before the first record.
    pub(super) baseline_rss_bytes: u64,
    pub(super) held: Vec<HeldRow>,
    pub(super) waiters: Option<WaiterRow>,
    pub(super) restart: Option<RestartRow>,
}

/// A fresh coordinator started in place of the measured one.
#[derive(Debug, Serialize)]
pub(super) struct RestartRow {
    /// What the stopped coordinator counted: held locks and queued
    /// requests.
    pub(super) held: u64,
    pub(super) queued: u64,
    /// From the start of the process until it said ready: it has read the
    /// bucket and the request stream and acts.
    pub(super) ready_secs: f64,
    /// From the start until its gauges counted as many as the stopped
    /// one's.
    pub(super) counted_secs: f64,
}

/// The waiters' sessions, beating until dropped.
pub(super) struct Waiting {
    _sessions: Vec<JsonSession>,
}

/// The coordinator after a step of held locks.
#[derive(Debug, Serialize)]
pub(super) struct HeldRow {
    pub(super) held: u64,
    pub(super) rss_bytes: u64,
    /// (RSS − baseline) / held.
    pub(super) bytes_per_lock: f64,
    /// Writing this step's records (all acknowledged).
    pub(super) write_secs: f64,
    /// From the first write of this step until the coordinator counted
    /// every record.
    pub(super) seen_secs: f64,
    /// The coordinator's CPU use over an idle second afterwards, in % of
    /// one core.
    pub(super) idle_cpu_pct: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct WaiterRow {
    pub(super) waiters: u64,
    /// Held keys they wait for.
    pub(super) keys: u64,
    pub(super) rss_before_bytes: u64,
    pub(super) rss_after_bytes: u64,
    pub(super) bytes_per_waiter: f64,
    /// From the first request until the coordinator counted every waiter.
    pub(super) seen_secs: f64,
}

/// What the workload writes to and reads from.
pub(super) struct Setup<'a> {
    pub(super) url: &'a str,
    pub(super) js: &'a jetstream::Context,
    pub(super) bucket: &'a str,
    /// The run's key prefix and the lock-name prefix of the same keys.
    pub(super) run: &'a str,
    pub(super) names: &'a str,
    /// A held record of a live session.
    pub(super) value: &'a Bytes,
    /// The coordinator child: its pid and metrics URL.
    pub(super) pid: u32,
    pub(super) metrics: &'a str,
}

/// Writes held records up to each of `steps` (ascending), then queues
/// `waiters` waiters, whose sessions beat until the [`Waiting`] is dropped.
pub(super) async fn run(
    s: &Setup<'_>,
    steps: &[u64],
    waiters: u64,
) -> Result<(MemoryReport, Waiting), CliError> {
    tokio::time::sleep(SETTLE).await;
    let base_held = gauge(s.metrics, "jetlock_locks_held").await?;
    let baseline = rss(s.pid)?;
    let mut report = MemoryReport {
        baseline_rss_bytes: baseline,
        held: Vec::new(),
        waiters: None,
        restart: None,
    };
    let mut written = 0;
    for &step in steps {
        super::progress(&format!("memory: {step} held locks"));
        let started = Instant::now();
        let prefix = format!("$KV.{}.{}.held.k", s.bucket, s.run);
        publish_all(written..step, |i| {
            s.js.publish(format!("{prefix}{i}"), s.value.clone())
        })
        .await?;
        let write_secs = started.elapsed().as_secs_f64();
        written = step;
        let limit = Duration::from_secs(60) + Duration::from_micros(150) * step as u32;
        wait_for_gauge(&[s.metrics], "jetlock_locks_held", base_held + step, limit).await?;
        let seen_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let rss_bytes = rss(s.pid)?;
        report.held.push(HeldRow {
            held: step,
            rss_bytes,
            bytes_per_lock: per_item(baseline, rss_bytes, step),
            write_secs,
            seen_secs,
            idle_cpu_pct: idle_cpu(s.pid).await?,
        });
    }
    let mut sessions = Vec::new();
    if waiters > 0 && written > 0 {
        let (row, beating) = queue_waiters(s, written.min(WAITER_KEYS), waiters).await?;
        report.waiters = Some(row);
        sessions = beating;
    }
    Ok((
        report,
        Waiting {
            _sessions: sessions,
        },
    ))
}

/// What the coordinator at `metrics` counts: held locks, queued requests.
pub(super) async fn counts(metrics: &str) -> Result<(u64, u64), CliError> {
    Ok((
        gauge(metrics, "jetlock_locks_held").await?,
        gauge(metrics, "jetlock_queue_depth").await?,
    ))
}

/// Times a restarted coordinator, `started` when its process was: ready
/// after `ready`, then until its gauges at `metrics` reach `counted` (the
/// stopped coordinator's [`counts`]).
pub(super) async fn restart_row(
    started: Instant,
    ready: Duration,
    metrics: &str,
    counted: (u64, u64),
) -> Result<RestartRow, CliError> {
    let (held, queued) = counted;
    let limit = Duration::from_secs(60) + Duration::from_micros(100) * (held + queued) as u32;
    wait_for_gauge(&[metrics], "jetlock_locks_held", held, limit).await?;
    wait_for_gauge(&[metrics], "jetlock_queue_depth", queued, limit).await?;
    Ok(RestartRow {
        held,
        queued,
        ready_secs: ready.as_secs_f64(),
        counted_secs: started.elapsed().as_secs_f64(),
    })
}

/// Queues `waiters` JSON acquires over the first `keys` held keys.
async fn queue_waiters(
    s: &Setup<'_>,
    keys: u64,
    waiters: u64,
) -> Result<(WaiterRow, Vec<JsonSession>), CliError> {
    super::progress(&format!("memory: {waiters} waiters on {keys} held locks"));
    let nats = async_nats::ConnectOptions::new()
        .name("jetlock-bench-waiters")
        .connect(jetlock::client::server_list(s.url))
        .await?;
    let mut sessions = Vec::with_capacity(WAITER_SESSIONS);
    for _ in 0..WAITER_SESSIONS {
        sessions.push(JsonSession::start(nats.clone()).await?);
    }
    let base_depth = gauge(s.metrics, "jetlock_queue_depth").await?;
    let rss_before = rss(s.pid)?;
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..waiters {
        let session = &mut sessions[i as usize % WAITER_SESSIONS];
        let name = format!("{}:held:k{}", s.names, i % keys);
        acks.push(session.enqueue(&name, WAITER_WAIT).await?.into_future());
        if acks.len() >= IN_FLIGHT {
            if let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let limit = Duration::from_secs(60) + Duration::from_micros(500) * waiters as u32;
    wait_for_gauge(
        &[s.metrics],
        "jetlock_queue_depth",
        base_depth + waiters,
        limit,
    )
    .await?;
    let seen_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss(s.pid)?;
    let row = WaiterRow {
        waiters,
        keys,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_waiter: per_item(rss_before, rss_after, waiters),
        seen_secs,
    };
    Ok((row, sessions))
}

/// Runs `publish(i)` for each `i` of `range` with up to [`IN_FLIGHT`]
/// unacknowledged at once; fails on the first publish or ack that fails.
async fn publish_all<F, Fut>(range: std::ops::Range<u64>, publish: F) -> Result<(), CliError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<
        Output = Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
    >,
{
    futures::stream::iter(range)
        .map(|i| {
            let sent = publish(i);
            async move {
                sent.await?.await?;
                Ok::<_, CliError>(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

/// The growth from `before` to `after` per item, in bytes (0 if it shrank).
pub(super) fn per_item(before: u64, after: u64, items: u64) -> f64 {
    after.saturating_sub(before) as f64 / items.max(1) as f64
}

fn rss(pid: u32) -> Result<u64, CliError> {
    super::machine::rss_bytes(pid).ok_or_else(|| {
        format!("could not read the coordinator's memory (/proc/{pid}/status)").into()
    })
}

/// CPU the process uses over [`IDLE_WINDOW`], in % of one core.
async fn idle_cpu(pid: u32) -> Result<f64, CliError> {
    let cpu = || {
        super::machine::cpu_time(pid)
            .ok_or_else(|| format!("could not read the coordinator's CPU time (/proc/{pid}/stat)"))
    };
    let (before, started) = (cpu()?, Instant::now());
    tokio::time::sleep(IDLE_WINDOW).await;
    let used = cpu()?.saturating_sub(before);
    Ok(100.0 * used.as_secs_f64() / started.elapsed().as_secs_f64())
}

/// The sum of the samples of metric `name` at `metrics`.
pub(super) async fn gauge(metrics: &str, name: &str) -> Result<u64, CliError> {
    let uri: hyper::Uri = metrics
        .parse()
        .map_err(|e| format!("bad metrics URL {metrics}: {e}"))?;
    let (status, body) = crate::http::get(&uri, 16 << 20)
        .await
        .map_err(|e| format!("could not read {metrics}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{metrics} answered HTTP {status}").into());
    }
    Ok(sample_sum(&String::from_utf8_lossy(&body), name).round() as u64)
}

/// Polls metric `name` of every coordinator of `metrics` until their sum
/// reaches `at_least`, up to `limit`.
pub(super) async fn wait_for_gauge(
    metrics: &[&str],
    name: &str,
    at_least: u64,
    limit: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + limit;
    loop {
        let mut now = 0;
        for url in metrics {
            now += gauge(url, name).await?;
        }
        if now >= at_least {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the coordinators' {name} reached {now}, not {at_least}, within {limit:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sum of every sample of `name` in a Prometheus text exposition
/// (`name 3` and `name{label="x"} 4` lines; `# HELP`/`# TYPE` lines and
/// other metrics whose names merely start with `name` are skipped).
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.rfind('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_of_one_metric() {
        let text = "# HELP jetlock_locks_held Held locks.\n\
            # TYPE jetlock_locks_held gauge\n\
            jetlock_locks_held 1000\n\
            jetlock_locks_held_total 7\n\
            jetlock_queue_depth{prefix=\"a\"} 3\n\
            jetlock_queue_depth{prefix=\"b}\"} 4\n\
            # EOF\n";
        assert_eq!(sample_sum(text, "jetlock_locks_held"), 1000.0);
        assert_eq!(sample_sum(text, "jetlock_queue_depth"), 7.0);
        assert_eq!(sample_sum(text, "jetlock_sessions"), 0.0);
    }

    #[test]
    fn growth_per_item_never_goes_negative() {
        assert_eq!(per_item(1000, 3000, 10), 200.0);
        assert_eq!(per_item(3000, 1000, 10), 0.0);
        assert_eq!(per_item(0, 500, 0), 500.0);
    }
}
