//! Process-once consumption of a JetStream stream: each message (or each
//! business key, such as a payment id that may arrive in several messages)
//! is processed by one worker, once, across redeliveries, worker crashes
//! and duplicate messages.
//!
//! For each message, [`ProcessOnce::handle`]:
//!
//! 1. takes the lock `once:<key>` (waiting at most [`ProcessOnceOptions::wait`];
//!    a message whose key another worker is processing is handed back with
//!    a delay, `Busy`);
//! 2. reads the key's done-record; one there means the work was done: the
//!    message is acknowledged and nothing runs (`AlreadyDone`);
//! 3. runs the work with the lock's fencing token;
//! 4. writes the done-record by create-if-absent, carrying the token, only
//!    while the lock is still held (a worker that lost its lock mid-work
//!    writes nothing and hands the message back);
//! 5. acknowledges the message (waiting for the server's confirmation),
//!    then releases the lock.
//!
//! Done-records live in their own KV bucket for [`ProcessOnceOptions::keep`]
//! (default 7 days): keep them longer than any message can still be
//! redelivered or published again.
//!
//! What it does not do: make the work and the done-record one transaction.
//! A worker that crashes after the work and before the done-record leaves
//! the message to be redelivered, and the next worker runs the work again
//! with a higher token. Work whose effect must happen once either records
//! the key in the same transaction as the effect, or checks the token the
//! way [`crate::Fence`] does (a write with the old token is refused once the
//! new holder wrote): docs/RECIPES.md, "Process-once".

use crate::client::Client;
use crate::error::LockError;
use crate::fence::FencingToken;
use crate::name::LockName;
use async_nats::jetstream::{self, kv, AckKind};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// The done-records bucket by default.
pub const DEFAULT_DONE_BUCKET: &str = "JETLOCK_DONE";

/// Settings of a [`ProcessOnce`].
#[derive(Debug, Clone)]
pub struct ProcessOnceOptions {
    /// The KV bucket of done-records (created if missing).
    pub bucket: String,
    /// Replicas of that bucket when it is created.
    pub replicas: usize,
    /// How long a done-record is kept.
    pub keep: Duration,
    /// The lease of each message's lock (renewed while the work runs).
    pub lock_ttl: Duration,
    /// How long to wait for a key another worker is processing before
    /// handing the message back.
    pub wait: Duration,
    /// The redelivery delay asked for when a message is handed back.
    pub retry_after: Duration,
}

impl Default for ProcessOnceOptions {
    fn default() -> Self {
        ProcessOnceOptions {
            bucket: DEFAULT_DONE_BUCKET.to_owned(),
            replicas: 1,
            keep: Duration::from_secs(7 * 24 * 3600),
            lock_ttl: Duration::from_secs(30),
            wait: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What became of one message.
#[derive(Debug)]
pub enum Handled<E> {
    /// The work ran and its done-record was written; the message is acked.
    Processed { token: FencingToken },
    /// The key was done before; the message is acked, nothing ran.
    AlreadyDone,
    /// Another worker holds the key: handed back for redelivery.
    Busy,
    /// The work failed: handed back for redelivery.
    Failed(E),
    /// The lock was lost while the work ran: no done-record was written,
    /// and the message is handed back (the next worker runs the work with a
    /// higher token).
    Lost,
}

/// The done-record of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Done {
    /// The token of the lock the work ran under.
    pub token: u64,
    /// Who did it (the client's session).
    pub session: String,
    pub at_ms: u64,
}

/// Errors of [`ProcessOnce`] itself (the work's errors are [`Handled::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum ProcessOnceError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("done-record bucket {bucket}: {source}")]
    Done {
        bucket: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("acknowledging the message failed: {0}")]
    Ack(#[source] async_nats::Error),
}

/// Processes messages once each; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct ProcessOnce {
    client: Client,
    done: kv::Store,
    options: ProcessOnceOptions,
}

impl ProcessOnce {
    /// Opens (or creates) the done-records bucket.
    pub async fn new(
        client: &Client,
        options: ProcessOnceOptions,
    ) -> Result<Self, ProcessOnceError> {
        let js = jetstream::new(client.nats().clone());
        let bucket = &options.bucket;
        let done_error = |source: async_nats::Error| ProcessOnceError::Done {
            bucket: bucket.clone(),
            source,
        };
        let done = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: options.keep,
                    num_replicas: options.replicas,
                    storage: jetstream::stream::StorageType::File,
                    description: "jetlock process-once done-records".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| done_error(e.into()))?,
        };
        Ok(ProcessOnce {
            client: client.clone(),
            done,
            options,
        })
    }

    /// Processes `msg` under `key` once: see the module docs. `work` gets
    /// the fencing token to pass to what it writes.
    pub async fn handle<F, Fut, E>(
        &self,
        msg: &jetstream::Message,
        key: &str,
        work: F,
    ) -> Result<Handled<E>, ProcessOnceError>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let done_key = LockName::new(key)
            .map_err(LockError::from)?
            .key()
            .to_owned();
        let lock = self
            .client
            .lock(&format!("once:{key}"))
            .ttl(self.options.lock_ttl)
            .wait(self.options.wait)
            .acquire()
            .await;
        let guard = match lock {
            Ok(guard) => guard,
            Err(LockError::Timeout { .. }) => {
                self.hand_back(msg).await?;
                return Ok(Handled::Busy);
            }
            Err(e) => return Err(e.into()),
        };
        if self.is_done(&done_key).await? {
            ack(msg).await?;
            let _ = guard.release().await;
            return Ok(Handled::AlreadyDone);
        }
        let token = guard.token();
        if let Err(e) = work(token).await {
            self.hand_back(msg).await?;
            let _ = guard.release().await;
            return Ok(Handled::Failed(e));
        }
        if guard.is_lost() {
            self.hand_back(msg).await?;
            return Ok(Handled::Lost);
        }
        let record = Done {
            token: token.get(),
            session: self.client.session().to_owned(),
            at_ms: crate::clock::unix_ms(),
        };
        let body = serde_json::to_vec(&record).expect("a done-record serializes");
        let handled = match self.done.create(&done_key, body.into()).await {
            Ok(_) => Handled::Processed { token },
            // Written by a worker that had the key after us: ours lost its
            // lock and that one ran the work too (module docs).
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Handled::Lost,
            Err(e) => {
                self.hand_back(msg).await?;
                let _ = guard.release().await;
                return Err(ProcessOnceError::Done {
                    bucket: self.options.bucket.clone(),
                    source: e.into(),
                });
            }
        };
        ack(msg).await?;
        let _ = guard.release().await;
        Ok(handled)
    }

    /// The done-record of `key`, if the work was done.
    pub async fn done(&self, key: &str) -> Result<Option<Done>, ProcessOnceError> {
        let done_key = LockName::new(key)
            .map_err(LockError::from)?
            .key()
            .to_owned();
        let entry = self
            .done
            .entry(&done_key)
            .await
            .map_err(|e| ProcessOnceError::Done {
                bucket: self.options.bucket.clone(),
                source: e.into(),
            })?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    async fn is_done(&self, done_key: &str) -> Result<bool, ProcessOnceError> {
        let entry = self
            .done
            .entry(done_key)
            .await
            .map_err(|e| ProcessOnceError::Done {
                bucket: self.options.bucket.clone(),
                source: e.into(),
            })?;
        Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put))
    }

    async fn hand_back(&self, msg: &jetstream::Message) -> Result<(), ProcessOnceError> {
        msg.ack_with(AckKind::Nak(Some(self.options.retry_after)))
            .await
            .map_err(ProcessOnceError::Ack)
    }
}

/// Acknowledges and waits for the server to confirm: a lost ack means a
/// redelivery, which the done-record then answers.
async fn ack(msg: &jetstream::Message) -> Result<(), ProcessOnceError> {
    msg.double_ack().await.map_err(ProcessOnceError::Ack)
}
