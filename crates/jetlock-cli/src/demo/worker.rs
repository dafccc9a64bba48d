//! A payment worker: one child process of `jetlock demo`.
//!
//! It pulls transfers one at a time from the run's work-queue consumer and,
//! for each: locks both accounts (`lock_all`, in one global order, so
//! transfers in opposite directions never deadlock), reads their balances
//! from the ledger with the locks' fencing tokens, writes the new balances
//! with the same tokens, releases the locks and acknowledges the message.
//!
//! It does not check `lost()` between the read and the write: that check
//! can always race with a pause, and the ledger's fence is what makes the
//! write safe. A fenced-off request, a lost lock or an unanswered request
//! means: try the transfer again under fresh locks (the ledger refuses it
//! as a duplicate if it was applied after all). A session the coordinators
//! declared dead (the worker was paused) is replaced by a new one.

use super::access::Access;
use super::ledger::{AccountToken, NewBalance, ReadRequest, Reply, Transfer, WriteRequest};
use super::CliError;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use jetlock::{Client, LockError, MultiLockGuard};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long one attempt waits for both locks.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long the ledger may take to answer (longer than a chaos pause, so a
/// paused worker reads its answer when it wakes).
const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker keeps trying to start (the consumer, a session)
/// before it gives up and exits.
const PATIENCE: Duration = Duration::from_secs(20);
/// Attempts per delivery before the message is handed back to the queue.
const MAX_ATTEMPTS: u32 = 20;

/// How one attempt at a transfer ended.
enum Outcome {
    /// Applied now or before: acknowledge the message.
    Settled,
    /// The ledger refused the transfer for good.
    Refused(String),
    /// Try again under fresh locks.
    Again(String),
    /// The coordinators declared the session dead: new session, try again.
    SessionExpired,
}

struct Worker {
    id: String,
    run: String,
    access: Access,
    nats: async_nats::Client,
    client: Client,
}

/// Runs worker `id` of run `run` until killed.
pub async fn run(id: String, run: String, access: Access) -> Result<(), CliError> {
    let nats = access
        .connect_waiting(&format!("jetlock-demo-{id}"))
        .await?;
    let js = jetstream::new(nats.clone());
    let consumer: PullConsumer = patiently("looking up the transfers consumer", || {
        js.get_consumer_from_stream(super::consumer_name(&run), super::STREAM)
    })
    .await
    .map_err(|e| format!("demo worker {id}: no transfers consumer: {e}"))?;
    let client = session(&access, &id, &nats).await?;
    let mut worker = Worker {
        id,
        run,
        access,
        nats,
        client,
    };
    loop {
        // One message at a time: a killed or paused worker strands at most
        // the transfer it is working on.
        let batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
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
                Ok(msg) => worker.process(msg).await?,
                Err(e) => warn!(error = %e, "pulling a transfer failed"),
            }
        }
    }
}

/// A new jetlock session on the worker's connection, under the prefix.
async fn session(access: &Access, id: &str, nats: &async_nats::Client) -> Result<Client, CliError> {
    Ok(patiently("starting a session", || {
        access.client_options().name(id).with_nats(nats.clone())
    })
    .await?)
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

impl Worker {
    async fn process(&mut self, msg: jetstream::Message) -> Result<(), CliError> {
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let transfer = serde_json::from_slice::<Transfer>(&msg.payload);
        let (Some(msg_id), Ok(transfer)) = (msg_id, transfer) else {
            warn!(subject = %msg.subject, "not a transfer; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return Ok(());
        };
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(&msg_id, &transfer).await? {
                Outcome::Settled => {
                    // If this ack is lost, the redelivery is refused as a
                    // duplicate.
                    if let Err(e) = msg.double_ack().await {
                        warn!(msg_id, error = %e, "ack failed");
                    }
                    return Ok(());
                }
                Outcome::Refused(why) => {
                    warn!(msg_id, why, "transfer refused");
                    let _ = msg.ack_with(AckKind::Term).await;
                    return Ok(());
                }
                Outcome::Again(why) => {
                    debug!(msg_id, attempt, why, "trying again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Outcome::SessionExpired => {
                    debug!(msg_id, "session declared dead; starting a new one");
                    self.client = session(&self.access, &self.id, &self.nats).await?;
                }
            }
        }
        let _ = msg
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        Ok(())
    }

    /// One attempt: lock, read, write, release.
    async fn attempt(&self, msg_id: &str, t: &Transfer) -> Result<Outcome, CliError> {
        let names = [t.from, t.to].map(|a| super::account_lock(&self.run, a));
        let started = Instant::now();
        let (guard, handoff) = match self.lock(&names).await {
            Ok(locked) => locked,
            Err(LockError::SessionExpired) => return Ok(Outcome::SessionExpired),
            Err(
                e @ (LockError::Timeout { .. }
                | LockError::Lost { .. }
                | LockError::Busy { .. }
                | LockError::Nats { .. }
                | LockError::Refused { .. }),
            ) => return Ok(Outcome::Again(e.to_string())),
            Err(e) => return Err(e.into()),
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
        };
        let written = self.ask("write", &write).await;
        Ok(settle(guard, written).await)
    }

    /// Both locks; tries first without waiting, so it knows whether it had
    /// to wait for another holder (a handoff).
    async fn lock(&self, names: &[String; 2]) -> Result<(MultiLockGuard, bool), LockError> {
        match self
            .client
            .lock_all(names)
            .wait(Duration::ZERO)
            .acquire()
            .await
        {
            Ok(guard) => Ok((guard, false)),
            Err(LockError::Busy { .. } | LockError::Timeout { .. }) => {
                let guard = self
                    .client
                    .lock_all(names)
                    .wait(LOCK_WAIT)
                    .acquire()
                    .await?;
                Ok((guard, true))
            }
            Err(e) => Err(e),
        }
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
            .send_request(super::ledger_subject(&self.run, op), request)
            .await?;
        Ok(serde_json::from_slice(&answer.payload)?)
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
        Ok(Reply::Refused { code, message }) => Outcome::Refused(format!("{code:?}: {message}")),
        Ok(Reply::Balances { .. }) => Outcome::Again("the ledger answered out of turn".into()),
        Err(e) => Outcome::Again(format!("the ledger did not answer: {e}")),
    }
}
