//! Several CAS writes that land together or not at all: one JetStream
//! atomic batch (ADR-50; nats-server 2.12+, on a stream with `allow_atomic`).
//!
//! What the server guarantees, as nats-server's source has it
//! (`server/stream.go`, `processJetStreamAtomicBatchMsg`;
//! `server/jetstream_batching.go`, `checkMsgHeadersPreClusteredProposal`):
//!
//! - messages carrying `Nats-Batch-Id` are staged, not stored, until the one
//!   with `Nats-Batch-Commit: 1`; a gap in `Nats-Batch-Sequence`, a batch
//!   idle for 10 s, or one over 1000 messages is dropped whole;
//! - at the commit, under the stream's locks, each staged message passes the
//!   checks a single publish would, `Nats-Expected-Last-Subject-Sequence`
//!   among them, against the stream as it was before the batch. The first
//!   failed check rejects the whole batch: nothing is stored and the
//!   commit's ack carries the error (`wrong last sequence`, 10071);
//! - a batch that passes is stored under the stream's isolation lock (one
//!   server) or as one multi-entry Raft proposal (a cluster), so no other
//!   write lands between its messages: they get consecutive sequences, and
//!   the ack's sequence is the last one's;
//! - `Nats-TTL` is checked and applied per message as outside a batch;
//!   `Nats-Msg-Id` is allowed since 2.14 (a duplicate rejects the batch);
//!   `Nats-Expected-Last-Msg-Id` is refused.
//!
//! `tests/atomic_batch.rs` shows each of these against a real server.
//!
//! async-nats 0.51 names the headers and reads the batch fields of the ack
//! but has no batch publisher, and the one in the `jetstream-extra` crate
//! is built on async-nats 0.48 (a second client library and connection),
//! so the few headers are written here.

use super::{cas_headers, is_conflict, server_ttl, ttl_header, LockStore, WriteId, Written};
use crate::name::LockName;
use crate::record::LockRecord;
use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::jetstream::{context::PublishError, ErrorCode};
use bytes::Bytes;
use std::time::Duration;

/// Most messages a server takes in one atomic batch by default (its
/// `max_batch_size` may be lower: [`BatchError::Unsupported`]).
pub const MAX_BATCH: usize = 1000;

/// One key's write in a batch: `record` if the key's last revision is
/// `expected` (0: the key has no message).
#[derive(Debug, Clone, Copy)]
pub struct BatchPut<'a> {
    pub name: &'a LockName,
    pub record: &'a LockRecord,
    pub expected: u64,
}

/// A failed batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Some key changed since its expected revision: nothing was written.
    #[error("a key changed since its expected revision; nothing was written")]
    Conflict,
    /// The server dropped the batch for now (too many batches in flight on
    /// the stream, 10210, or a message of it went missing, 10176): nothing
    /// was written; sending again may succeed.
    #[error("the server dropped the batch for now (nothing was written): {0}")]
    Dropped(#[source] PublishError),
    /// The keys are in different buckets of the deployment
    /// (`crate::shards`): no one write reaches them all.
    #[error("the locks are in different buckets of this deployment, so no one atomic write takes them all; name them with a common {{tag}} (as account:{{7}}:debit and account:{{7}}:credit) to keep them in one (docs/SCALING.md)")]
    Apart,
    /// The bucket does not take atomic batches (or not this large).
    #[error("the locks bucket does not take this atomic batch: {0}")]
    Unsupported(String),
    /// The batch may or may not have landed (timeout, disconnect).
    #[error("atomic batch publish to the locks bucket failed: {0}")]
    Transport(#[source] async_nats::Error),
}

impl LockStore {
    /// Whether the stream of `name`'s bucket takes atomic batches, as of
    /// the stream info read at open (and read again when that said no). A
    /// server before 2.12 never says yes: it would store a batch's messages
    /// one by one, so nothing may be sent as a batch there.
    pub async fn takes_atomic_batches(&self, name: &LockName) -> Result<bool, async_nats::Error> {
        let bucket = self.of(name);
        if bucket.stream.cached_info().config.allow_atomic_publish {
            return Ok(true);
        }
        let mut stream = self.js.get_stream(&bucket.kv.stream_name).await?;
        Ok(stream.info().await?.config.allow_atomic_publish)
    }

    /// Whether every one of `names` is in one bucket, so one atomic batch
    /// can write them all.
    pub fn in_one_bucket<'a>(&self, mut names: impl Iterator<Item = &'a LockName>) -> bool {
        let Some(first) = names.next() else {
            return true;
        };
        let bucket = self.bucket_index(first);
        names.all(|n| self.bucket_index(n) == bucket)
    }

    /// Writes every put, each with its own expected revision and the lease
    /// `lease` (server TTL [`server_ttl`]), in one atomic batch: all land or
    /// none does. On success the revisions are in `puts`' order.
    ///
    /// Every message carries `write.id`. A re-send (`write.resend`) that
    /// conflicts reads the keys: when each one's last message carries that
    /// id, the earlier send landed and those are its revisions.
    pub async fn put_all(
        &self,
        puts: &[BatchPut<'_>],
        lease: Duration,
        write: WriteId<'_>,
    ) -> Result<Vec<Written>, BatchError> {
        if puts.len() > MAX_BATCH {
            return Err(BatchError::Unsupported(format!(
                "{} keys; a batch holds at most {MAX_BATCH}",
                puts.len()
            )));
        }
        if !self.in_one_bucket(puts.iter().map(|p| p.name)) {
            return Err(BatchError::Apart);
        }
        let Some((commit, staged)) = puts.split_last() else {
            return Ok(Vec::new());
        };
        // Unique per send: the server keys staged messages by it, and a
        // re-send must not join what is left of an earlier send.
        let batch_id = nuid::next().to_string();
        let ttl = ttl_header(server_ttl(lease));
        let message = |i: usize, put: &BatchPut<'_>| {
            let mut headers = cas_headers(put.expected, write.id);
            headers.insert("Nats-TTL", ttl.as_str());
            headers.insert(NATS_BATCH_ID, batch_id.as_str());
            headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            (
                self.subject(put.name),
                headers,
                Bytes::from(put.record.encode()),
            )
        };
        for (i, put) in staged.iter().enumerate() {
            // Without a reply subject the server stages the message
            // silently: the batch costs one round trip, the commit's. One
            // connection keeps the messages in order.
            let (subject, headers, payload) = message(i, put);
            self.js
                .client()
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| BatchError::Transport(e.into()))?;
        }
        let (subject, mut headers, payload) = message(staged.len(), commit);
        headers.insert(NATS_BATCH_COMMIT, "1");
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| BatchError::Transport(e.into()))?
            .await;
        let n = puts.len() as u64;
        match ack {
            Ok(ack) if ack.batch_id.as_deref() == Some(&*batch_id) && ack.batch_size == Some(n) => {
                // Consecutive sequences, the last one acknowledged.
                Ok((ack.sequence + 1 - n..=ack.sequence)
                    .map(|revision| Written {
                        revision,
                        recovered: false,
                    })
                    .collect())
            }
            Ok(ack) => Err(BatchError::Transport(
                format!(
                    "the ack of batch {batch_id} names batch {:?} of {:?} messages, not {n}",
                    ack.batch_id, ack.batch_size
                )
                .into(),
            )),
            Err(e) if is_conflict(&e) => {
                if write.resend {
                    if let Some(written) = self.landed_all(puts, write.id).await? {
                        return Ok(written);
                    }
                }
                Err(BatchError::Conflict)
            }
            Err(e) => Err(match api_code(&e) {
                Some(
                    ErrorCode::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT
                    | ErrorCode::ATOMIC_PUBLISH_INCOMPLETE_BATCH,
                ) => BatchError::Dropped(e),
                Some(
                    ErrorCode::ATOMIC_PUBLISH_DISABLED
                    | ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH
                    | ErrorCode::ATOMIC_PUBLISH_UNSUPPORTED_HEADER,
                ) => BatchError::Unsupported(e.to_string()),
                _ => BatchError::Transport(e.into()),
            }),
        }
    }

    /// The revisions of a batch that landed: `Some` when every key's last
    /// message carries `write_id`. A batch lands whole, so a key without
    /// it means the batch never landed, or its lease ran out since.
    async fn landed_all(
        &self,
        puts: &[BatchPut<'_>],
        write_id: &str,
    ) -> Result<Option<Vec<Written>>, BatchError> {
        let found = futures::future::join_all(puts.iter().map(|p| self.landed(p.name, write_id)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                super::CasError::Transport(e) => BatchError::Transport(e),
                super::CasError::Conflict { .. } => BatchError::Conflict,
            })?;
        Ok(found
            .into_iter()
            .map(|revision| {
                revision.map(|revision| Written {
                    revision,
                    recovered: true,
                })
            })
            .collect())
    }
}

/// The JetStream error code of a refused publish, if it was refused.
fn api_code(e: &PublishError) -> Option<ErrorCode> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .map(|api| api.error_code())
}
