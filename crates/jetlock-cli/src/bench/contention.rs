//! W3 contention: many clients, each its own session and NATS connection,
//! loop acquire (waiting) → release at once on ONE key for a fixed time.
//! Three paths to the same job:
//!
//! - **coordinator queue** — jetlock clients with the default `.queue(true)`:
//!   a contended acquire joins the coordinator's FIFO queue, and a release
//!   with waiters hands the lock over in one CAS write;
//! - **watch and race** — jetlock clients with `.queue(false)`: waiters
//!   watch the key and CAS on each release marker;
//! - **raw kv** — async-nats alone: `update` expecting the revision of the
//!   last delete seen (`create` for the first), watch for deletes, retry.
//!
//! Counted while the window is open: grants per client, owner changes (a
//! grant to another client than the previous one), the wait of each
//! acquire, and overlaps (a grant while another client still believed it
//! held the lock: must be 0). At the end of the window waiting acquires are
//! dropped (a queued jetlock acquire is then cancelled).

use super::CliError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use jetlock::ClientOptions;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The longest single acquire wait asked for (the window is shorter).
const ACQUIRE_WAIT: Duration = Duration::from_secs(60);
/// How long the clients may take to wind down after the window.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One contention run's numbers.
#[derive(Debug, Serialize)]
pub(super) struct ContentionRow {
    pub(super) workload: &'static str,
    pub(super) clients: usize,
    pub(super) seconds: f64,
    pub(super) grants: u64,
    pub(super) owner_changes: u64,
    pub(super) owner_changes_per_sec: f64,
    /// Fewest and most grants one client got.
    pub(super) min_grants: u64,
    pub(super) max_grants: u64,
    /// `min_grants / max_grants`: 1.0 is perfectly even.
    pub(super) min_max_ratio: f64,
    /// From asking to being granted, over all acquires.
    pub(super) wait_p50_ms: f64,
    pub(super) wait_p99_ms: f64,
    /// Must be 0.
    pub(super) overlaps: u64,
    /// Consumers on the bucket's stream after the run minus before it:
    /// watchers the run created that the server still keeps (an ordered
    /// consumer of async-nats outlives its watcher by 30 s).
    pub(super) consumers_left: i64,
    /// Messages the run stored per owner change in the bucket (grants,
    /// handoffs, release markers) and in the request stream (queued
    /// acquires, stored releases); W3's one-key rows only.
    pub(super) stored_per_change: Option<(f64, f64)>,
}

/// Shared by the clients of one run.
struct Tally {
    holding: AtomicBool,
    last_owner: AtomicUsize,
    owner_changes: AtomicU64,
    overlaps: AtomicU64,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            holding: AtomicBool::new(false),
            last_owner: AtomicUsize::new(usize::MAX),
            owner_changes: AtomicU64::new(0),
            overlaps: AtomicU64::new(0),
        })
    }

    /// Client `i` was granted the lock (and has not released it yet).
    fn granted(&self, i: usize) {
        if self.holding.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        if self.last_owner.swap(i, Ordering::SeqCst) != i {
            self.owner_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The holder is about to release.
    fn releasing(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }
}

/// One client's count.
struct Counted {
    grants: u64,
    waits_us: Histogram<u64>,
}

impl Counted {
    fn new() -> Self {
        Counted {
            grants: 0,
            waits_us: Histogram::new(3).expect("3 significant digits is a valid precision"),
        }
    }

    fn granted(&mut self, asked: Instant) -> Result<(), CliError> {
        self.grants += 1;
        let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waits_us.record(us)?;
        Ok(())
    }
}

/// A client in the contention loop: takes one lock and gives it back. The
/// W3 paths and the peers (`peers/`) are each one of these.
pub(super) trait Contender: Send + 'static {
    /// What giving the lock back needs (a guard, a revision, a token).
    type Held: Send;
    /// Takes the lock on `key`, waiting while another client holds it.
    fn take(&mut self, key: &str) -> impl Future<Output = Result<Self::Held, CliError>> + Send;
    /// Gives the lock on `key` back.
    fn give_back(
        &mut self,
        key: &str,
        held: Self::Held,
    ) -> impl Future<Output = Result<(), CliError>> + Send;
}

/// Every client loops take → give back on `key` until `window` is over; a
/// take still waiting then is dropped.
pub(super) async fn contend<C: Contender>(
    workload: &'static str,
    key: &str,
    clients: Vec<C>,
    window: Duration,
) -> Result<ContentionRow, CliError> {
    let n = clients.len();
    let tally = Tally::new();
    let end = Instant::now() + window;
    let mut tasks = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (tally, key) = (tally.clone(), key.to_owned());
        tasks.spawn(async move {
            let mut counted = Counted::new();
            loop {
                let asked = Instant::now();
                let Ok(held) = tokio::time::timeout_at(end, client.take(&key)).await else {
                    break;
                };
                let held = held?;
                tally.granted(i);
                counted.granted(asked)?;
                tally.releasing();
                client.give_back(&key, held).await?;
                if Instant::now() >= end {
                    break;
                }
            }
            Ok::<_, CliError>(counted)
        });
    }
    collect(workload, n, window, &tally, tasks).await
}

/// A jetlock client; waiting in the coordinator's queue or watching.
struct Jetlock(jetlock::Client);

impl Contender for Jetlock {
    type Held = jetlock::LockGuard;

    async fn take(&mut self, name: &str) -> Result<jetlock::LockGuard, CliError> {
        Ok(self.0.lock(name).wait(ACQUIRE_WAIT).acquire().await?)
    }

    async fn give_back(&mut self, _: &str, guard: jetlock::LockGuard) -> Result<(), CliError> {
        Ok(guard.release().await?)
    }
}

/// The coordinator queue (`queue`) or the watch-and-race path, with
/// `clients` jetlock clients on the lock `name`.
pub(super) async fn jetlock(
    workload: &'static str,
    url: &str,
    bucket: &str,
    name: &str,
    clients: usize,
    window: Duration,
    queue: bool,
) -> Result<ContentionRow, CliError> {
    let connecting = (0..clients).map(|i| async move {
        let client = ClientOptions::new()
            .name(format!("jetlock-bench-w3-{i}"))
            .bucket(bucket)
            .queue(queue)
            .connect(url)
            .await?;
        Ok::<_, CliError>(Jetlock(client))
    });
    let connected = futures::future::try_join_all(connecting).await?;
    contend(workload, name, connected, window).await
}

/// async-nats alone: CAS expecting the revision of the last delete seen
/// (`create` for the first), watch for deletes, retry.
struct Raw {
    kv: kv::Store,
    watch: kv::Watch,
    value: Bytes,
    /// The revision to expect: 0 (create) for the first try, then the last
    /// delete marker seen.
    hint: Option<u64>,
}

impl Contender for Raw {
    type Held = u64;

    async fn take(&mut self, key: &str) -> Result<u64, CliError> {
        raw_acquire(&self.kv, &mut self.watch, key, &self.value, &mut self.hint).await
    }

    async fn give_back(&mut self, key: &str, revision: u64) -> Result<(), CliError> {
        self.kv.delete_expect_revision(key, Some(revision)).await?;
        Ok(())
    }
}

/// The raw baseline: async-nats clients, one connection each, on `key`.
pub(super) async fn raw(
    url: &str,
    bucket: &str,
    key: &str,
    value: &Bytes,
    clients: usize,
    window: Duration,
) -> Result<ContentionRow, CliError> {
    let connecting = (0..clients).map(|i| async move {
        let nats = async_nats::ConnectOptions::new()
            .name(format!("jetlock-bench-raw-{i}"))
            .connect(jetlock::client::server_list(url))
            .await?;
        let kv = jetstream::new(nats).get_key_value(bucket).await?;
        // Watching before the run starts: no delete can slip by.
        let watch = kv.watch(key).await?;
        Ok::<_, CliError>(Raw {
            kv,
            watch,
            value: value.clone(),
            hint: Some(0),
        })
    });
    let connected = futures::future::try_join_all(connecting).await?;
    contend("raw kv watch + CAS retry", key, connected, window).await
}

/// CAS until it wins; returns the revision written.
async fn raw_acquire(
    kv: &kv::Store,
    watch: &mut kv::Watch,
    key: &str,
    value: &Bytes,
    hint: &mut Option<u64>,
) -> Result<u64, CliError> {
    loop {
        let expected = match hint.take() {
            Some(revision) => revision,
            None => vacancy(watch).await?,
        };
        let written = if expected == 0 {
            kv.create(key, value.clone())
                .await
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.into()))
        } else {
            kv.update(key, value.clone(), expected)
                .await
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.into()))
        };
        match written {
            Ok(revision) => return Ok(revision),
            Err((true, _)) => {}
            Err((false, e)) => return Err(e),
        }
    }
}

/// Waits until the latest change the watch has delivered is a delete;
/// returns its revision.
async fn vacancy(watch: &mut kv::Watch) -> Result<u64, CliError> {
    loop {
        let mut last = watch.next().await.ok_or("the KV watch ended")??;
        // Skip to the newest change already delivered.
        while let Some(Some(entry)) = watch.next().now_or_never() {
            last = entry?;
        }
        if matches!(last.operation, kv::Operation::Delete | kv::Operation::Purge) {
            return Ok(last.revision);
        }
    }
}

async fn collect(
    workload: &'static str,
    clients: usize,
    window: Duration,
    tally: &Tally,
    mut tasks: JoinSet<Result<Counted, CliError>>,
) -> Result<ContentionRow, CliError> {
    let mut per_client = Vec::with_capacity(clients);
    let mut waits = Histogram::<u64>::new(3).expect("3 significant digits is a valid precision");
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(done) = tasks.join_next().await {
            let counted = done??;
            waits.add(&counted.waits_us)?;
            per_client.push(counted.grants);
        }
        Ok::<_, CliError>(())
    })
    .await;
    // Dropping the set aborts whatever still runs.
    drained.map_err(|_| format!("{workload}: clients did not stop within {DRAIN_LIMIT:?}"))??;
    let grants: u64 = per_client.iter().sum();
    let min = per_client.iter().copied().min().unwrap_or(0);
    let max = per_client.iter().copied().max().unwrap_or(0);
    let owner_changes = tally.owner_changes.load(Ordering::Relaxed);
    let ms = |q: f64| waits.value_at_quantile(q) as f64 / 1000.0;
    Ok(ContentionRow {
        workload,
        clients,
        seconds: window.as_secs_f64(),
        grants,
        owner_changes,
        owner_changes_per_sec: owner_changes as f64 / window.as_secs_f64(),
        min_grants: min,
        max_grants: max,
        min_max_ratio: if max == 0 {
            0.0
        } else {
            min as f64 / max as f64
        },
        wait_p50_ms: ms(0.5),
        wait_p99_ms: ms(0.99),
        overlaps: tally.overlaps.load(Ordering::Relaxed),
        consumers_left: 0,
        stored_per_change: None,
    })
}
