//! One transfer, once: a message of a partition the worker owns, run
//! through `jetlock::recipes::ProcessOnce` under the key of its message id.
//!
//! `ProcessOnce` takes the message's lock, skips it if its done-record is
//! there, runs the work below, writes the done-record while it still holds
//! the lock, acknowledges, releases. The work: lock both accounts
//! (`lock_all`, in one global order, so transfers in opposite directions
//! never deadlock, whatever partitions the accounts are in), read their
//! balances from the ledger with the locks' fencing tokens and the
//! partition lease's, write the new balances with the same tokens, release
//! the accounts.
//!
//! It does not check `lost()` between the read and the write: that check
//! can always race with a pause, and the ledger's fences are what make the
//! write safe. A fenced-off request, a lost lock or an unanswered request
//! means: try again under fresh locks (the ledger refuses the transfer as a
//! duplicate if it was applied after all, the unique constraint that
//! `ProcessOnce` needs beside it when a worker dies between the ledger's
//! commit and the done-record).

use super::ledger::{
    AccountToken, NewBalance, OnceNote, PartitionToken, ReadRequest, Reply, Transfer, WriteRequest,
};
use super::worker::{WorkSession, Worker};
use async_nats::jetstream::{self, AckKind};
use jetlock::recipes::{Handled, ProcessOnceError};
use jetlock::{Client, LockError, MultiLockGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long one attempt waits for both locks.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long the ledger may take to answer (longer than a chaos pause, so a
/// paused worker reads its answer when it wakes).
const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per delivery before the message is handed back to the queue.
const MAX_ATTEMPTS: u32 = 20;
/// How long the attempts at one delivery may take before the message is
/// handed back: the partition's other transfers wait behind it.
const WORK_LIMIT: Duration = Duration::from_secs(15);

/// How one attempt at a transfer ended.
enum Outcome {
    /// Applied now or before.
    Settled,
    /// The ledger refused the transfer for good.
    Refused(String),
    /// Try again under fresh locks.
    Again(String),
    /// A newer owner of the partition has used it: this worker's lease is
    /// over, and the transfer is the new owner's.
    Deposed,
    /// The coordinators declared the session dead.
    SessionExpired,
}

/// Why the work handed its message back (`ProcessOnce` naks it).
#[derive(Debug)]
pub enum WorkError {
    /// The partition was asked back, lost, or fenced off in the ledger.
    Stopped,
    /// Every attempt had to be tried again, or they took too long.
    GaveUp,
    /// The session is over: the worker joins again under a new one.
    SessionOver,
    /// Something no retry fixes: the worker exits (and is counted as a
    /// crash).
    Fatal(String),
}

impl Worker {
    /// Runs transfer `msg` of `partition` once.
    pub async fn handle(
        &self,
        msg: jetstream::Message,
        partition: PartitionToken,
        stop: &CancellationToken,
    ) {
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let transfer = serde_json::from_slice::<Transfer>(&msg.payload);
        let (Some(msg_id), Ok(transfer)) = (msg_id, transfer) else {
            warn!(subject = %msg.subject, "not a transfer; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let key = super::once_key(&self.layout.run, &msg_id);
        let session = self.session().await;
        let handled = session
            .once
            .handle(&msg, &key, |_| {
                self.transfer(&session, &msg_id, &transfer, partition, stop)
            })
            .await;
        debug!(msg_id, partition = partition.partition, ?handled, "handled");
        let note = match handled {
            Ok(Handled::Processed { .. }) => return,
            Ok(Handled::AlreadyDone) => OnceNote::AlreadyDone,
            Ok(Handled::Busy) => OnceNote::Busy,
            Ok(Handled::Lost) => OnceNote::Lost,
            Ok(Handled::Failed(WorkError::SessionOver))
            | Err(ProcessOnceError::Lock(LockError::SessionExpired)) => {
                self.renew(&session).await;
                return;
            }
            Ok(Handled::Failed(WorkError::Fatal(why))) => {
                self.exit(why);
                return;
            }
            Ok(Handled::Failed(why)) => {
                debug!(msg_id, ?why, "handed back");
                return;
            }
            // The message comes back after the ack wait.
            Err(e) => {
                warn!(msg_id, error = %e, "process-once failed; the message will be redelivered");
                return;
            }
        };
        // For the summary; a note lost with a killed worker is only a count.
        if let Ok(body) = serde_json::to_vec(&note) {
            let subject = super::ledger_subject(&self.layout.run, "once");
            let _ = self.nats.publish(subject, body.into()).await;
        }
    }

    /// The work: attempts until the transfer is settled in the ledger.
    async fn transfer(
        &self,
        session: &WorkSession,
        msg_id: &str,
        t: &Transfer,
        partition: PartitionToken,
        stop: &CancellationToken,
    ) -> Result<(), WorkError> {
        let deadline = Instant::now() + WORK_LIMIT;
        for attempt in 1..=MAX_ATTEMPTS {
            if stop.is_cancelled() {
                return Err(WorkError::Stopped);
            }
            if Instant::now() > deadline {
                break;
            }
            match self.attempt(session, msg_id, t, partition).await? {
                Outcome::Settled => return Ok(()),
                // Settled for good: the done-record says so.
                Outcome::Refused(why) => {
                    warn!(msg_id, why, "transfer refused");
                    return Ok(());
                }
                Outcome::Again(why) => {
                    debug!(msg_id, attempt, why, "trying again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Outcome::Deposed => return Err(WorkError::Stopped),
                Outcome::SessionExpired => return Err(WorkError::SessionOver),
            }
        }
        Err(WorkError::GaveUp)
    }

    /// One attempt: lock, read, write, release.
    async fn attempt(
        &self,
        session: &WorkSession,
        msg_id: &str,
        t: &Transfer,
        partition: PartitionToken,
    ) -> Result<Outcome, WorkError> {
        let names = [t.from, t.to].map(|a| super::account_lock(&self.layout.run, a));
        let started = Instant::now();
        let (guard, handoff) = match lock(&session.client, &names).await {
            Ok(locked) => locked,
            Err(LockError::SessionExpired) => return Ok(Outcome::SessionExpired),
            Err(
                e @ (LockError::Timeout { .. }
                | LockError::Lost { .. }
                | LockError::Busy { .. }
                | LockError::Nats { .. }
                | LockError::Refused { .. }),
            ) => return Ok(Outcome::Again(e.to_string())),
            Err(e) => return Err(WorkError::Fatal(e.to_string())),
        };
        let lock_wait = started.elapsed();
        let tokens = [0, 1].map(|i| guard.token(&names[i]).map_or(0, |t| t.get()));
        let read = ReadRequest {
            msg_id: msg_id.to_owned(),
            worker: self.id.clone(),
            tokens: [0, 1].map(|i| AccountToken {
                account: [t.from, t.to][i],
                token: tokens[i],
            }),
            lock_wait_us: lock_wait.as_micros() as u64,
            handoff,
            partition,
        };
        let balances = match self.ask("read", &read).await {
            Ok(Reply::Balances { balances }) => balances,
            other => return Ok(settle(guard, other).await),
        };
        // A chaos pause lands here: the locks move on while this process
        // sleeps, and the write below carries their old tokens.
        let write = WriteRequest {
            msg_id: msg_id.to_owned(),
            worker: self.id.clone(),
            set: [
                NewBalance {
                    account: t.from,
                    token: tokens[0],
                    balance: balances[0] - t.amount,
                },
                NewBalance {
                    account: t.to,
                    token: tokens[1],
                    balance: balances[1] + t.amount,
                },
            ],
            partition,
        };
        let written = self.ask("write", &write).await;
        Ok(settle(guard, written).await)
    }

    async fn ask<T: serde::Serialize>(
        &self,
        op: &str,
        body: &T,
    ) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        let request = async_nats::Request::new()
            .payload(serde_json::to_vec(body)?.into())
            .timeout(Some(LEDGER_TIMEOUT));
        let answer = self
            .nats
            .send_request(super::ledger_subject(&self.layout.run, op), request)
            .await?;
        Ok(serde_json::from_slice(&answer.payload)?)
    }
}

/// Both locks; tries first without waiting, so it knows whether it had
/// to wait for another holder (a handoff).
async fn lock(client: &Client, names: &[String; 2]) -> Result<(MultiLockGuard, bool), LockError> {
    match client.lock_all(names).wait(Duration::ZERO).acquire().await {
        Ok(guard) => Ok((guard, false)),
        Err(LockError::Busy { .. } | LockError::Timeout { .. }) => {
            let guard = client.lock_all(names).wait(LOCK_WAIT).acquire().await?;
            Ok((guard, true))
        }
        Err(e) => Err(e),
    }
}

/// Releases the locks and says what the ledger's answer means.
async fn settle(
    guard: MultiLockGuard,
    answer: Result<Reply, Box<dyn std::error::Error + Send + Sync>>,
) -> Outcome {
    // A release that finds the locks lost is expected after a pause.
    let _ = guard.release().await;
    match answer {
        Ok(Reply::Applied | Reply::Duplicate) => Outcome::Settled,
        Ok(Reply::Fenced {
            account,
            presented,
            highest,
        }) => Outcome::Again(format!(
            "fenced off on account {account}: token {presented} < {highest}"
        )),
        Ok(Reply::PartitionFenced { .. }) => Outcome::Deposed,
        Ok(Reply::Refused { code, message }) => Outcome::Refused(format!("{code:?}: {message}")),
        Ok(Reply::Balances { .. }) => Outcome::Again("the ledger answered out of turn".into()),
        Err(e) => Outcome::Again(format!("the ledger did not answer: {e}")),
    }
}
