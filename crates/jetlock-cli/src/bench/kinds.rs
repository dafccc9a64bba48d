//! Lock kinds: a read/write lock under a 90/10 read/write mix, a semaphore
//! with 4 permits, and the measurement behind how readers sit in the
//! bucket (docs/ARCHITECTURE.md, "Read/write locks and semaphores"): 32
//! readers each with a key of their own against 32 readers adding
//! themselves to one record that lists the holders.
//!
//! Every client is its own session and connection; all loop acquire →
//! release on one name for the window, like W3. Counted: grants by kind,
//! holders at once (a semaphore's must stay at most its permits; a writer
//! with anyone else is an overlap, which must be 0) and, for the one
//! record, lost compare-and-swaps per grant.

use super::CliError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use jetlock::ClientOptions;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One run's numbers.
#[derive(Debug, Serialize)]
pub(super) struct KindsRow {
    pub(super) workload: &'static str,
    pub(super) clients: usize,
    pub(super) seconds: f64,
    pub(super) reads_per_sec: f64,
    pub(super) writes_per_sec: f64,
    /// Grants of any kind per second.
    pub(super) grants_per_sec: f64,
    /// Most holders seen at one moment.
    pub(super) most_at_once: usize,
    /// Compare-and-swaps lost per grant (the one-record layout only).
    pub(super) lost_cas_per_grant: Option<f64>,
    /// A writer together with anyone, or more permit holders than permits.
    pub(super) overlaps: u64,
}

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    writes: AtomicU64,
    holding: AtomicUsize,
    most: AtomicUsize,
    writer: AtomicBool,
    overlaps: AtomicU64,
    lost_cas: AtomicU64,
}

impl Tally {
    fn enter(&self, write: bool, limit: usize) {
        let now = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::Relaxed);
        let writer_in = if write {
            self.writer.swap(true, Ordering::SeqCst) || now > 1
        } else {
            self.writer.load(Ordering::SeqCst)
        };
        if writer_in || now > limit {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        let count = if write { &self.writes } else { &self.reads };
        count.fetch_add(1, Ordering::Relaxed);
    }

    fn leave(&self, write: bool) {
        if write {
            self.writer.store(false, Ordering::SeqCst);
        }
        self.holding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client of a read/write lock: jetlock's, or a peer's
/// (`peers/postgres.rs`).
pub(super) trait RwContender: Send + 'static {
    /// Takes `name` for writing or reading, waiting while it cannot.
    fn lock(
        &mut self,
        name: &str,
        write: bool,
    ) -> impl Future<Output = Result<(), CliError>> + Send;
    /// Gives back what `lock` took.
    fn unlock(
        &mut self,
        name: &str,
        write: bool,
    ) -> impl Future<Output = Result<(), CliError>> + Send;
}

/// Every client loops lock → unlock on `name`, one in `write_every` a
/// write (`None`: reads only), until `window` is over.
pub(super) async fn mix<C: RwContender>(
    workload: &'static str,
    name: &str,
    clients: Vec<C>,
    write_every: Option<u32>,
    window: Duration,
) -> Result<KindsRow, CliError> {
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + window;
    let n = clients.len();
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (tally, name) = (tally.clone(), name.to_owned());
        tasks.spawn(async move {
            while Instant::now() < end {
                let write = write_every.is_some_and(|n| fastrand::u32(..n) == 0);
                let Ok(took) = tokio::time::timeout_at(end, client.lock(&name, write)).await else {
                    break;
                };
                took?;
                tally.enter(write, usize::MAX);
                tally.leave(write);
                client.unlock(&name, write).await?;
            }
            Ok::<_, CliError>(())
        });
    }
    tally.finish(workload, n, window, tasks).await
}

/// jetlock's read/write lock.
struct JetlockRw {
    client: jetlock::Client,
    held: Option<jetlock::RwLockGuard>,
}

impl RwContender for JetlockRw {
    async fn lock(&mut self, name: &str, write: bool) -> Result<(), CliError> {
        let asked = if write {
            self.client.write_lock(name)
        } else {
            self.client.read_lock(name)
        };
        self.held = Some(asked.acquire().await?);
        Ok(())
    }

    async fn unlock(&mut self, _: &str, _: bool) -> Result<(), CliError> {
        match self.held.take() {
            Some(guard) => Ok(guard.release().await?),
            None => Ok(()),
        }
    }
}

/// What one run measures.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// Reads and writes on one read/write lock; one in `write_every` a
    /// write (`None`: reads only).
    ReadWrite {
        write_every: Option<u32>,
    },
    Semaphore {
        permits: u32,
    },
    /// Readers adding and removing themselves in one record of holders.
    OneRecord,
}

pub(super) async fn run(
    url: &str,
    bucket: &str,
    name: &str,
    kind: Kind,
    clients: usize,
    window: Duration,
) -> Result<KindsRow, CliError> {
    let connect = async |i: usize| {
        ClientOptions::new()
            .name(format!("jetlock-bench-kinds-{i}"))
            .bucket(bucket)
            .connect(url)
            .await
    };
    if let Kind::ReadWrite { write_every } = kind {
        let mut rw = Vec::with_capacity(clients);
        for i in 0..clients {
            rw.push(JetlockRw {
                client: connect(i).await?,
                held: None,
            });
        }
        let workload = match write_every {
            Some(_) => "read/write lock, 90% reads",
            None => "readers only: a key each (jetlock read locks)",
        };
        return mix(workload, name, rw, write_every, window).await;
    }
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + window;
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let (tally, name) = (tally.clone(), name.to_owned());
        let client = connect(i).await?;
        let kv = jetstream::new(client.nats().clone())
            .get_key_value(bucket)
            .await?;
        tasks.spawn(async move {
            let me = Bytes::from(format!("{i};"));
            while Instant::now() < end {
                match kind {
                    Kind::Semaphore { permits } => {
                        let asked = client.semaphore(&name, permits).acquire();
                        let Ok(permit) = tokio::time::timeout_at(end, asked).await else {
                            break;
                        };
                        let permit = permit?;
                        tally.enter(false, permits as usize);
                        tally.leave(false);
                        permit.release().await?;
                    }
                    Kind::OneRecord => one_record(&kv, &name, &me, &tally).await?,
                    // Returned above.
                    Kind::ReadWrite { .. } => break,
                }
            }
            Ok::<_, CliError>(())
        });
    }
    let workload = match kind {
        Kind::Semaphore { .. } => "semaphore, 4 permits",
        _ => "readers only: one record listing holders (raw CAS)",
    };
    tally.finish(workload, clients, window, tasks).await
}

impl Tally {
    /// Waits for the clients and counts.
    async fn finish(
        &self,
        workload: &'static str,
        clients: usize,
        window: Duration,
        mut tasks: JoinSet<Result<(), CliError>>,
    ) -> Result<KindsRow, CliError> {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let secs = window.as_secs_f64();
        let (reads, writes) = (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        );
        let lost_cas = self.lost_cas.load(Ordering::Relaxed);
        Ok(KindsRow {
            workload,
            clients,
            seconds: secs,
            reads_per_sec: reads as f64 / secs,
            writes_per_sec: writes as f64 / secs,
            grants_per_sec: (reads + writes) as f64 / secs,
            most_at_once: self.most.load(Ordering::Relaxed),
            lost_cas_per_grant: (lost_cas > 0).then(|| lost_cas as f64 / reads.max(1) as f64),
            overlaps: self.overlaps.load(Ordering::Relaxed),
        })
    }
}

/// A read as a record listing its holders would take it: add `me` to the
/// list by a compare-and-swap, then take it out by another, each retried
/// until it wins.
async fn one_record(kv: &kv::Store, key: &str, me: &Bytes, tally: &Tally) -> Result<(), CliError> {
    let key = format!("{}.one-record", key.replace(':', "."));
    for adding in [true, false] {
        loop {
            let (list, revision) = match kv.entry(&key).await? {
                Some(e) if e.operation == kv::Operation::Put => (e.value, e.revision),
                Some(e) => (Bytes::new(), e.revision),
                None => (Bytes::new(), 0),
            };
            let mut next = list.to_vec();
            if adding {
                next.extend_from_slice(me);
            } else if let Some(at) = list.windows(me.len()).position(|w| w == &me[..]) {
                next.drain(at..at + me.len());
            }
            let written = if revision == 0 {
                kv.create(&key, next.into()).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        CliError::from(e),
                    )
                })
            } else {
                kv.update(&key, next.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            CliError::from(e),
                        )
                    })
            };
            match written {
                Ok(()) => break,
                Err((true, _)) => {
                    tally.lost_cas.fetch_add(1, Ordering::Relaxed);
                }
                Err((false, e)) => return Err(e),
            }
        }
        if adding {
            tally.enter(false, usize::MAX);
            tally.leave(false);
        }
    }
    Ok(())
}
