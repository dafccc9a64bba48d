//! The work queue: the stream `DEMO_TRANSFERS` (shared by runs), one
//! subject and one durable pull consumer per partition of a run, the
//! publishing of the plan, and how many transfers are left.
//!
//! A transfer is published on `jetlock.demo.transfers.<run>.<p>`, `p` being
//! its paying account's partition (`from % partitions`), and consumed
//! through `demo-<run>-<p>`, filtered on that subject. The consumers are
//! made by the run, before any worker starts, and live as long as the run:
//! a worker that is assigned partition `p` pulls from `demo-<run>-<p>`, and
//! when `p` moves, the next owner pulls from the same consumer. So a
//! message one owner had pulled and not acknowledged is redelivered to the
//! next after the ack wait, and nothing is lost or starved while partitions
//! move (creating a consumer on assignment and deleting it on release
//! would hand the new owner every message of the partition again at once,
//! and cost a consumer creation per move).

use super::plan::Plan;
use super::CliError;
use async_nats::jetstream::{self, consumer, stream};
use futures::TryStreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The work-queue stream of every demo run.
pub const STREAM: &str = "DEMO_TRANSFERS";
const STREAM_SUBJECTS: &str = "jetlock.demo.transfers.>";
/// How long a worker may hold a transfer unacknowledged before JetStream
/// redelivers it: longer than a chaos pause, so a paused worker's transfer
/// waits for it, and its late write meets the fence, not a rival.
const ACK_WAIT: Duration = Duration::from_secs(4);
/// Publishes in flight before the run waits for their acks.
const PUBLISH_WINDOW: usize = 256;
/// How long one look at the backlog may wait for the stream's leader
/// (chaos may have killed or paused it) before it counts as failed.
const LOOK_LIMIT: Duration = Duration::from_secs(5);
/// How often the backlog is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The run's subject of partition `p`.
pub fn partition_subject(run: &str, p: u32) -> String {
    format!("jetlock.demo.transfers.{run}.{p}")
}

/// Every subject of the run.
fn run_subjects(run: &str) -> String {
    format!("jetlock.demo.transfers.{run}.>")
}

/// The run's consumer of partition `p`.
pub fn consumer_name(run: &str, p: u32) -> String {
    format!("demo-{run}-{p}")
}

/// Creates the stream if needed, and the run's consumer of each partition.
pub async fn create(
    js: &jetstream::Context,
    run: &str,
    partitions: u32,
    replicas: usize,
) -> Result<stream::Stream, CliError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![STREAM_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            // A run that died leaves messages behind; they go after a day.
            max_age: Duration::from_secs(24 * 60 * 60),
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    for p in 0..partitions {
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(consumer_name(run, p)),
                filter_subject: partition_subject(run, p),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                // Redeliver until acknowledged.
                max_deliver: -1,
                // A run that died leaves its consumers behind; they go
                // after this.
                inactive_threshold: Duration::from_secs(10 * 60),
                ..Default::default()
            })
            .await?;
    }
    Ok(stream)
}

/// Publishes every transfer on its partition's subject, in windows of
/// acknowledged publishes.
pub async fn publish(
    js: &jetstream::Context,
    run: &str,
    plan: &Plan,
    partitions: u32,
) -> Result<(), CliError> {
    for window in plan.transfers.chunks(PUBLISH_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for (msg_id, transfer) in window {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
            let body = serde_json::to_vec(transfer)?;
            let subject = partition_subject(run, transfer.from % partitions);
            acks.push(
                js.publish_with_headers(subject, headers, body.into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

/// Messages of the run still in the stream: published and not yet
/// acknowledged (a work queue drops a message once it is acknowledged).
pub async fn remaining(stream: &stream::Stream, run: &str) -> Result<u64, CliError> {
    let subjects = stream.info_with_subjects(run_subjects(run)).await?;
    Ok(subjects
        .try_fold(0, |sum, (_, count)| async move { Ok(sum + count as u64) })
        .await?)
}

/// The run's messages left in the queue, looked at again and again by a
/// task of its own: a look may wait seconds for a stream leader that chaos
/// killed, and the run's loop, which brings nodes and workers back, must
/// not wait with it. Dropping it stops the task.
pub struct Backlog {
    latest: watch::Receiver<Look>,
    task: JoinHandle<()>,
}

/// One look at the backlog.
#[derive(Debug, Clone)]
pub struct Look {
    /// Counts the looks: a new number is a new answer.
    pub number: u64,
    /// The messages left, or why the look failed.
    pub left: Result<u64, String>,
}

impl Backlog {
    pub fn watch(stream: stream::Stream, run: String) -> Backlog {
        let (tx, latest) = watch::channel(Look {
            number: 0,
            left: Err("not looked at yet".into()),
        });
        let task = tokio::spawn(async move {
            for number in 1.. {
                let left = match tokio::time::timeout(LOOK_LIMIT, remaining(&stream, &run)).await {
                    Ok(Ok(left)) => Ok(left),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {LOOK_LIMIT:?}")),
                };
                if tx.send(Look { number, left }).is_err() {
                    return;
                }
                tokio::time::sleep(LOOK_EVERY).await;
            }
        });
        Backlog { latest, task }
    }

    /// The last answer.
    pub fn latest(&self) -> Look {
        self.latest.borrow().clone()
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes the run's consumers and messages from a server that outlives
/// the run.
pub async fn remove(js: &jetstream::Context, run: &str, partitions: u32) -> Result<(), CliError> {
    let stream = js.get_stream(STREAM).await?;
    for p in 0..partitions {
        stream.delete_consumer(&consumer_name(run, p)).await?;
    }
    stream.purge().filter(run_subjects(run)).await?;
    Ok(())
}
