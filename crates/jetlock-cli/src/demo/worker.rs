//! A payment worker: one child process of `jetlock demo`.
//!
//! It joins the run's partition group (`jetlock::recipes::Partitions`) as
//! its slot: `w2` for `w2.0`, `w2.1`, ..., so a replacement takes the place,
//! and the partitions, of the worker it replaces (its join waits until the
//! dead one's session is over) instead of moving them twice. Each partition
//! it is assigned is worked by a task of its own: pull one transfer from the
//! partition's consumer, run it through `ProcessOnce` (`transfer.rs`),
//! repeat, until the partition is asked back (`Change::Release`: the task
//! finishes the transfer in hand, then drops the lease, which releases the
//! partition to its next owner) or its lease is lost.
//!
//! One jetlock session holds the member lock, the partition leases and the
//! message and account locks, with the default 900 ms timeout. A worker
//! paused by chaos loses them all: its account locks move on (its late
//! write meets the fence), and its partitions go to the others until it
//! joins again under a new session and takes its share back. (A membership
//! on a second session with a longer timeout would keep the partitions
//! through a pause, but a killed worker's partitions would wait that
//! longer timeout for its replacement: runs with chaos were slower.)

use super::access::Access;
use super::CliError;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use jetlock::recipes::{Change, PartitionLease, Partitions, ProcessOnce, ProcessOnceOptions};
use jetlock::{Client, LockError};
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a worker keeps trying to start a session or open the
/// done-records before it gives up and exits.
const PATIENCE: Duration = Duration::from_secs(20);
/// The lease of each message's `ProcessOnce` lock. A holder lost without
/// the coordinators noticing keeps its message from being run until the
/// server frees the lock after its lease (plus a tenth and a second): 10 s
/// by default; a lost message lock costs one message a retry.
const ONCE_LEASE: Duration = Duration::from_secs(5);
/// The done-records bucket of every demo run (keys carry the run id).
const DONE_BUCKET: &str = "DEMO_DONE";
/// How long done-records are kept: longer than a run's messages (a day).
const DONE_KEEP: Duration = Duration::from_secs(2 * 24 * 60 * 60);
/// How long a worker waits for a transfer's `ProcessOnce` lock that
/// another worker holds (a redelivery while the first still works on it)
/// before handing the message back.
const ONCE_WAIT: Duration = Duration::from_secs(2);

/// What a worker needs to know of its run, passed on its command line.
#[derive(Debug, Clone)]
pub struct Layout {
    pub run: String,
    pub partitions: u32,
    /// Replicas of the done-records bucket, if a worker must create it.
    pub replicas: usize,
}

impl Layout {
    /// The arguments that start worker `id` of this run.
    pub fn pass_to(&self, cmd: &mut Command, id: &str) {
        cmd.args(["demo", "--worker", id, "--run", &self.run]);
        cmd.args(["--partitions", &self.partitions.to_string()]);
        cmd.args(["--replicas", &self.replicas.to_string()]);
    }
}

/// The worker process: what its partition tasks share.
pub struct Worker {
    pub id: String,
    pub layout: Layout,
    pub nats: async_nats::Client,
    access: Access,
    /// The session, replaced when the coordinators declare it dead.
    work: tokio::sync::Mutex<Arc<WorkSession>>,
    /// Cancelled when the worker must exit, with the reason in `fatal`.
    exit: CancellationToken,
    fatal: Mutex<Option<String>>,
}

/// The session the worker holds its locks in, and its `ProcessOnce`.
pub struct WorkSession {
    pub client: Client,
    pub once: ProcessOnce,
}

/// Runs worker `id` until killed.
pub async fn run(id: String, layout: Layout, access: Access) -> Result<(), CliError> {
    let nats = access
        .connect_waiting(&format!("jetlock-demo-{id}"))
        .await?;
    let js = jetstream::new(nats.clone());
    let slot = id.split('.').next().unwrap_or(&id).to_owned();
    let work = WorkSession::start(&access, &id, &nats, layout.replicas).await?;
    let worker = Arc::new(Worker {
        id,
        layout,
        nats,
        access,
        work: tokio::sync::Mutex::new(Arc::new(work)),
        exit: CancellationToken::new(),
        fatal: Mutex::new(None),
    });
    loop {
        let session = worker.session().await;
        serve(&worker, &session.client, &js, &slot).await;
        if let Some(why) = worker.fatal.lock().expect("never poisoned").take() {
            return Err(why.into());
        }
        // The member lock goes with the session (or its lease ran out while
        // renewals failed): a new session, unless a partition task has
        // already started one.
        info!(worker = %worker.id, "membership over; joining again with a new session");
        worker.renew(&session).await;
    }
}

impl WorkSession {
    async fn start(
        access: &Access,
        id: &str,
        nats: &async_nats::Client,
        replicas: usize,
    ) -> Result<WorkSession, CliError> {
        let client = patiently("starting a session", || {
            access.client_options().name(id).with_nats(nats.clone())
        })
        .await?;
        let options = ProcessOnceOptions {
            bucket: DONE_BUCKET.to_owned(),
            replicas,
            keep: DONE_KEEP,
            wait: ONCE_WAIT,
            lock_ttl: ONCE_LEASE,
            retry_after: Duration::from_millis(500),
        };
        let once = patiently("opening the done-records", || {
            ProcessOnce::new(&client, options.clone())
        })
        .await?;
        Ok(WorkSession { client, once })
    }
}

impl Worker {
    /// The current session.
    pub async fn session(&self) -> Arc<WorkSession> {
        self.work.lock().await.clone()
    }

    /// Replaces `expired` with a new session, unless another task has
    /// already done so.
    pub async fn renew(&self, expired: &Arc<WorkSession>) {
        let mut current = self.work.lock().await;
        if !Arc::ptr_eq(&current, expired) {
            return;
        }
        debug!(worker = %self.id, "session over; starting a new one");
        match WorkSession::start(&self.access, &self.id, &self.nats, self.layout.replicas).await {
            Ok(session) => *current = Arc::new(session),
            Err(e) => self.exit(format!("could not start a new session: {e}")),
        }
    }

    /// Makes the worker exit (it is counted as a crash).
    pub fn exit(&self, why: String) {
        *self.fatal.lock().expect("never poisoned") = Some(why);
        self.exit.cancel();
    }
}

/// Works the partitions the group assigns while the membership lasts.
async fn serve(worker: &Arc<Worker>, membership: &Client, js: &jetstream::Context, slot: &str) {
    let group = super::partition_group(&worker.layout.run);
    // The join waits for the slot's member lock, which the worker this one
    // replaces, or this one's own last session, holds until the
    // coordinators declare that session dead (or its lease runs out, while
    // chaos has them all down): no bound here, the run judges a worker
    // that never gets going (nothing settles).
    let mut partitions = loop {
        let joined = tokio::time::timeout(
            PATIENCE,
            Partitions::join(membership, &group, worker.layout.partitions, slot),
        );
        tokio::select! {
            () = worker.exit.cancelled() => return,
            joined = joined => match joined {
                Ok(Ok(partitions)) => break partitions,
                Ok(Err(LockError::SessionExpired)) => return,
                Ok(Err(e)) => {
                    warn!(error = %e, "joining the partition group failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => warn!(%group, "not a member after {PATIENCE:?}; still trying"),
            },
        }
    };
    let over = worker.exit.child_token();
    let mut working: HashMap<u32, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    // Tasks asked to stop that may still finish the transfer in hand.
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let change = tokio::select! {
            change = partitions.next() => change,
            () = over.cancelled() => None,
        };
        match change {
            Some(Change::Assigned(lease)) => {
                let p = lease.partition();
                debug!(partition = p, token = lease.token().get(), "assigned");
                let stop = over.child_token();
                let task = tokio::spawn(work_partition(
                    worker.clone(),
                    js.clone(),
                    lease,
                    stop.clone(),
                ));
                if let Some((stop, task)) = working.insert(p, (stop, task)) {
                    // A lease given out again after the last was lost.
                    stop.cancel();
                    stopping.push(task);
                }
            }
            Some(Change::Release(p)) => {
                debug!(partition = p, "asked back");
                if let Some((stop, task)) = working.remove(&p) {
                    stop.cancel();
                    stopping.push(task);
                }
            }
            // The member lock is gone with the session.
            None => break,
        }
        stopping.retain(|task| !task.is_finished());
    }
    over.cancel();
    for task in working.into_values().map(|(_, task)| task).chain(stopping) {
        let _ = task.await;
    }
}

/// Pulls partition `lease`'s transfers one at a time and runs each, until
/// stopped or the lease is lost; then drops the lease, releasing it.
async fn work_partition(
    worker: Arc<Worker>,
    js: jetstream::Context,
    lease: PartitionLease,
    stop: CancellationToken,
) {
    let p = lease.partition();
    let lost = lease.lost();
    tokio::pin!(lost);
    let name = super::queue::consumer_name(&worker.layout.run, p);
    let consumer: PullConsumer = loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = &mut lost => return,
            found = js.get_consumer_from_stream(&name, super::queue::STREAM) => match found {
                Ok(consumer) => break consumer,
                // A node killed by chaos answers nothing until it is back.
                Err(e) => {
                    warn!(consumer = %name, error = %e, "looking up the consumer failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    };
    let partition = super::ledger::PartitionToken {
        partition: p,
        token: lease.token().get(),
    };
    loop {
        // One message at a time: a killed or paused worker strands at most
        // the transfer it is working on in each partition.
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            () = &mut lost => break,
            batch = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages() => batch,
        };
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "pulling a transfer failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(msg) => worker.handle(msg, partition, &stop).await,
                // A pull a node could not serve (no responders while a
                // stream leader is elected) fails every read of the batch:
                // a new pull, a moment later.
                Err(e) => {
                    warn!(error = %e, "pulling a transfer failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
    debug!(partition = p, lost = lease.is_lost(), "stopped");
    drop(lease);
}

/// Tries `what` for up to [`PATIENCE`]: a chaos-killed or paused node
/// fails JetStream requests until the client reconnects or the node wakes.
async fn patiently<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match attempt().await {
            Err(e) if Instant::now() < deadline => {
                warn!(error = %e, "{what} failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}
