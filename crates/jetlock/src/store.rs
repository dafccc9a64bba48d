//! Compare-and-swap operations on the locks bucket.
//!
//! Every ownership change is one JetStream publish to the key's subject with
//! `Nats-Expected-Last-Subject-Sequence` (the CAS) and, for grants and
//! renewals, `Nats-TTL` (the lease, enforced by the server). async-nats'
//! `kv.create_with_ttl` cannot be used: on a key holding a delete marker it
//! falls back to an update without the TTL, so a reused lock name would never
//! expire. Reads are only hints for the next CAS; they never decide ownership.
//!
//! Each write also carries a `Jetlock-Write-Id` header, unique per (writer,
//! expected revision), stored with the message. A re-send after a lost ack
//! cannot rely on `Nats-Msg-Id` de-duplication: the server checks the
//! expected sequence *before* de-duplication, so a re-send of a write that
//! landed only sees "wrong last sequence". Instead, a re-send that conflicts
//! reads the key: if the last message carries the same write id, the first
//! send landed, and its revision is the answer.
//!
//! Writes to several keys at once, all or none, are one atomic batch:
//! `store/batch.rs`.

use crate::name::LockName;
use crate::record::{LockRecord, RecordError};
use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream::LastRawMessageErrorKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use std::time::Duration;

mod batch;
mod watch;
mod write_id;
pub use batch::{BatchError, BatchPut, MAX_BATCH};
pub use watch::{Change, Delivered, KeyWatch, SubjectWatch, WATCH_IDLE};
pub(crate) use write_id::Nonce;
pub use write_id::{WriteId, WRITE_ID};

/// What the bucket holds for a key right now (as of a read: a hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// Nobody holds the lock. `revision` is the CAS precondition that takes
    /// it: the delete or expiry marker's revision, or 0 when the key has no
    /// message at all.
    Vacant { revision: u64 },
    /// Somebody holds the lock.
    Held { revision: u64, record: LockRecord },
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The key changed since the expected revision: somebody else wrote.
    #[error("the lock changed since revision {expected}")]
    Conflict { expected: u64 },
    /// The write may or may not have happened (timeout, disconnect).
    #[error("publish to the locks bucket failed: {0}")]
    Transport(#[source] async_nats::Error),
}

/// A failed read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the locks bucket failed: {0}")]
    Transport(#[source] async_nats::Error),
    #[error("lock record under key {key:?} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: RecordError,
    },
}

/// The result of a successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The revision (stream sequence) of the write.
    pub revision: u64,
    /// True when this was a re-send and the write found is the earlier
    /// send's, which had landed without its ack reaching us.
    pub recovered: bool,
}

/// The locks bucket (or the deployment's buckets, `crate::shards`), for
/// CAS writes and reads of single keys, each in the bucket its key routes to.
#[derive(Clone)]
pub struct LockStore {
    js: jetstream::Context,
    /// Bucket 0 first. Shared: a stream handle carries the stream's whole
    /// info, dozens of allocations to clone.
    buckets: std::sync::Arc<[Bucket]>,
    /// How many partitions the deployment's requests are split into
    /// (`crate::shards`; 1: not split).
    partitions: u32,
}

struct Bucket {
    kv: kv::Store,
    stream: jetstream::stream::Stream,
    /// `$KV.<bucket>.`
    prefix: String,
}

impl Bucket {
    fn new(kv: kv::Store, stream: jetstream::stream::Stream) -> Self {
        Bucket {
            prefix: format!("$KV.{}.", kv.name),
            kv,
            stream,
        }
    }
}

impl LockStore {
    /// Wraps an opened bucket 0 (see [`crate::bucket::open_bucket`]) and
    /// opens the deployment's other buckets, if its metadata names any.
    pub async fn new(js: jetstream::Context, kv: kv::Store) -> Result<Self, async_nats::Error> {
        let stream = js.get_stream(&kv.stream_name).await?;
        let count = crate::bucket::buckets_of(&kv.name, &stream.cached_info().config)?;
        let partitions = crate::bucket::partitions_of(&kv.name, &stream.cached_info().config)?;
        let first = kv.name.clone();
        let mut buckets = vec![Bucket::new(kv, stream)];
        for index in 1..count {
            let (kv, stream) = crate::bucket::open_other_bucket(&js, &first, index).await?;
            buckets.push(Bucket::new(kv, stream));
        }
        Ok(LockStore {
            js,
            buckets: buckets.into(),
            partitions,
        })
    }

    /// The name of bucket 0, the deployment's name.
    pub fn bucket(&self) -> &str {
        &self.buckets[0].kv.name
    }

    /// The name of bucket 0's stream (`KV_<bucket>`).
    pub fn stream_name(&self) -> &str {
        &self.buckets[0].kv.stream_name
    }

    /// Bucket 0's async-nats KV handle.
    pub fn kv(&self) -> &kv::Store {
        &self.buckets[0].kv
    }

    /// Every bucket's async-nats KV handle, bucket 0 first (for listings
    /// and watches of every key).
    pub fn kvs(&self) -> impl Iterator<Item = &kv::Store> {
        self.buckets.iter().map(|b| &b.kv)
    }

    /// Every bucket's stream, bucket 0 first.
    pub fn streams(&self) -> impl Iterator<Item = &jetstream::stream::Stream> {
        self.buckets.iter().map(|b| &b.stream)
    }

    /// How many buckets the locks spread over.
    pub fn bucket_count(&self) -> u32 {
        self.buckets.len() as u32
    }

    /// How many partitions the deployment's requests are split into (1:
    /// not split).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Which bucket holds `name` (an index into [`LockStore::kvs`]).
    pub fn bucket_index(&self, name: &LockName) -> u32 {
        crate::shards::bucket_of(name.key(), self.bucket_count())
    }

    /// The async-nats KV handle of the bucket holding `name`.
    pub fn kv_of(&self, name: &LockName) -> &kv::Store {
        &self.of(name).kv
    }

    fn of(&self, name: &LockName) -> &Bucket {
        &self.buckets[self.bucket_index(name) as usize]
    }

    fn subject(&self, name: &LockName) -> String {
        let prefix = &self.of(name).prefix;
        let mut s = String::with_capacity(prefix.len() + name.key().len());
        s.push_str(prefix);
        s.push_str(name.key());
        s
    }

    /// Writes `record` if the key's last revision is `expected` (0: the key
    /// has no message), for a lease of `lease`: the server-side TTL is
    /// [`server_ttl`]`(lease)`, longer than the lease the writer believes in.
    pub async fn put(
        &self,
        name: &LockName,
        record: &LockRecord,
        expected: u64,
        lease: Duration,
        write: WriteId<'_>,
    ) -> Result<Written, CasError> {
        self.put_applied(name, record, expected, lease, write, None)
            .await
    }

    /// [`LockStore::put`], stamped with what a coordinator's write applied
    /// (the [`APPLIED`] header's value).
    pub async fn put_applied(
        &self,
        name: &LockName,
        record: &LockRecord,
        expected: u64,
        lease: Duration,
        write: WriteId<'_>,
        applied: Option<&str>,
    ) -> Result<Written, CasError> {
        let mut headers = cas_headers(expected, write.id);
        headers.insert(NATS_TTL, HeaderValue::from(ttl_header(server_ttl(lease))));
        if let Some(applied) = applied {
            headers.insert(APPLIED, applied);
        }
        let subject = self.subject(name);
        self.publish(
            subject,
            name,
            headers,
            record.encode_bytes(),
            expected,
            write,
        )
        .await
    }

    /// Releases the key if its last revision is `expected`: writes a delete
    /// marker (which replaces the record: history is 1) that itself expires after
    /// `marker_ttl`. Returns the marker's revision, the CAS precondition for
    /// the next acquirer.
    pub async fn release(
        &self,
        name: &LockName,
        expected: u64,
        marker_ttl: Duration,
        write: WriteId<'_>,
    ) -> Result<Written, CasError> {
        self.release_applied(name, expected, marker_ttl, write, None)
            .await
    }

    /// [`LockStore::release`], stamped with what a coordinator's write
    /// applied (the [`APPLIED`] header's value).
    pub async fn release_applied(
        &self,
        name: &LockName,
        expected: u64,
        marker_ttl: Duration,
        write: WriteId<'_>,
        applied: Option<&str>,
    ) -> Result<Written, CasError> {
        let mut headers = cas_headers(expected, write.id);
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(NATS_TTL, HeaderValue::from(ttl_header(marker_ttl)));
        if let Some(applied) = applied {
            headers.insert(APPLIED, applied);
        }
        let subject = self.subject(name);
        self.publish(subject, name, headers, Bytes::new(), expected, write)
            .await
    }

    /// A write that can never land: it expects the key's last revision to be
    /// 2^63-1, which no key reaches (the server reads the header as a signed
    /// 64-bit number). JetStream refuses it as a conflict when this
    /// connection may write the bucket; the server's permissions drop it
    /// (no answer, and a permissions error on the connection) when it may
    /// not. The client sends it at connect to learn which. It goes to the
    /// deployment's last bucket: a user may write all of them or none, and
    /// a refusal there is one a client must know as the bucket's.
    pub async fn probe_write(&self) -> Result<Written, CasError> {
        let name = LockName::new("jetlock:write-probe").expect("a valid name");
        let expected = i64::MAX as u64;
        let write = WriteId {
            id: "write-probe",
            resend: false,
        };
        let headers = cas_headers(expected, write.id);
        let last = self.buckets.last().expect("a store has a bucket");
        let subject = format!("{}{}", last.prefix, name.key());
        self.publish(subject, &name, headers, Bytes::new(), expected, write)
            .await
    }

    /// Whether the last message under `filter` (its key, or with `under`
    /// every key below it) is still revision `expected` (0: none), decided
    /// by a write the stream's quorum must accept. A read, even from the
    /// stream leader, can be stale: a leader that was paused answers with
    /// what it had until it learns it was deposed (`tests/stale_reads.rs`).
    /// A write cannot: only the current leader commits, and it checks
    /// `Nats-Expected-Last-Subject-Sequence` against the subjects of
    /// `Nats-Expected-Last-Subject-Sequence-Subject`. The write is a
    /// delete marker on `mark` (one message: history is 1) that expires
    /// after `marker_ttl`, so it holds nothing and leaves nothing behind.
    pub async fn confirm(
        &self,
        mark: &LockName,
        filter: &LockName,
        under: bool,
        expected: u64,
        marker_ttl: Duration,
    ) -> Result<bool, async_nats::Error> {
        if self.bucket_index(mark) != self.bucket_index(filter) {
            return Err(format!(
                "{mark} and {filter} are in different buckets, so no write can check one against the other"
            )
            .into());
        }
        let mut subject = self.subject(filter);
        if under {
            subject.push_str(".>");
        }
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_SEQUENCE, HeaderValue::from(expected.to_string()));
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            subject.as_str(),
        );
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(NATS_TTL, HeaderValue::from(ttl_header(marker_ttl)));
        let ack = self
            .js
            .publish_with_headers(self.subject(mark), headers, Bytes::new())
            .await?
            .await;
        match ack {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish(
        &self,
        subject: String,
        name: &LockName,
        headers: HeaderMap,
        payload: Bytes,
        expected: u64,
        write: WriteId<'_>,
    ) -> Result<Written, CasError> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| CasError::Transport(e.into()))?
            .await;
        match ack {
            Ok(ack) => Ok(Written {
                revision: ack.sequence,
                recovered: false,
            }),
            Err(e) if is_conflict(&e) => {
                if write.resend {
                    if let Some(revision) = self.landed(name, write.id).await? {
                        return Ok(Written {
                            revision,
                            recovered: true,
                        });
                    }
                }
                Err(CasError::Conflict { expected })
            }
            Err(e) => Err(CasError::Transport(e.into())),
        }
    }

    /// The revision of the key's last message if `write_id` wrote it.
    async fn landed(&self, name: &LockName, write_id: &str) -> Result<Option<u64>, CasError> {
        let last = self.last_message(name).await.map_err(CasError::Transport)?;
        Ok(last.and_then(|m| {
            (m.headers.get(WRITE_ID).map(|v| v.as_str()) == Some(write_id)).then_some(m.sequence)
        }))
    }

    /// The key's last message, from the stream leader (`None`: no message).
    async fn last_message(
        &self,
        name: &LockName,
    ) -> Result<Option<jetstream::message::StreamMessage>, async_nats::Error> {
        match self
            .of(name)
            .stream
            .get_last_raw_message_by_subject(&self.subject(name))
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the key's last message from the stream leader. The answer is a
    /// hint for the next CAS, not a decision.
    pub async fn read(&self, name: &LockName) -> Result<Current, ReadError> {
        Ok(self.read_with_headers(name).await?.0)
    }

    /// [`LockStore::read`], with the headers of the key's last message
    /// (none when the key has no message): who wrote it ([`WRITE_ID`]) and
    /// what it applied ([`APPLIED`]).
    pub async fn read_with_headers(
        &self,
        name: &LockName,
    ) -> Result<(Current, Option<HeaderMap>), ReadError> {
        let Some(message) = self
            .last_message(name)
            .await
            .map_err(ReadError::Transport)?
        else {
            return Ok((Current::Vacant { revision: 0 }, None));
        };
        let current =
            current_from_message(message.sequence, Some(&message.headers), &message.payload)
                .map_err(|source| ReadError::Corrupt {
                    key: name.key().to_owned(),
                    source,
                })?;
        Ok((current, Some(message.headers)))
    }

    /// Watches one key from `revision` on (inclusive): every later write,
    /// release and expiry of the key, in order.
    pub async fn watch_from(
        &self,
        name: &LockName,
        revision: u64,
    ) -> Result<KeyWatch, async_nats::Error> {
        let bucket = self.of(name);
        let subject = format!("{}{}", bucket.prefix, name.key());
        let watch = SubjectWatch::start(&self.js, &bucket.stream, subject, revision).await?;
        Ok(KeyWatch {
            watch,
            prefix_len: bucket.prefix.len(),
        })
    }

    /// Watches every key under `name` (`<key>.>`): first the last message
    /// of each, then every later change. Returns the watch and how many
    /// keys the first part holds (a change with `pending` 0 ends it). Read
    /// and write locks and semaphores keep one key per holder under their
    /// name, and wait on all of them at once.
    pub async fn watch_under(&self, name: &LockName) -> Result<(KeyWatch, u64), async_nats::Error> {
        let bucket = self.of(name);
        let filter = format!("{}{}.>", bucket.prefix, name.key());
        let (watch, pending) = SubjectWatch::start_with(
            &self.js,
            &bucket.stream,
            filter,
            jetstream::consumer::DeliverPolicy::LastPerSubject,
        )
        .await?;
        let watch = KeyWatch {
            watch,
            prefix_len: bucket.prefix.len(),
        };
        Ok((watch, pending))
    }
}

/// Whether JetStream refused a publish because its expected last sequence
/// did not hold: code 10071 (`wrong last sequence: N`), or 10164 (the same
/// without the number, which a clustered stream sends in some paths and
/// async-nats 0.51 reports as `Other`; the fault suite saw it after a
/// partition healed).
pub(crate) fn is_conflict(e: &jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::{Error as ApiError, ErrorCode};
    e.kind() == PublishErrorKind::WrongLastSequence
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<ApiError>())
            .is_some_and(|api| {
                [
                    ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
                    ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
                ]
                .contains(&api.error_code())
            })
}

/// Interprets a raw message of the bucket's stream: a release or expiry
/// marker means vacant, anything else must be a record.
pub fn current_from_message(
    sequence: u64,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Current, RecordError> {
    let is_marker = headers
        .is_some_and(|h| h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some());
    if is_marker {
        return Ok(Current::Vacant { revision: sequence });
    }
    Ok(Current::Held {
        revision: sequence,
        record: LockRecord::decode(payload)?,
    })
}

/// Header on a coordinator's write naming the requests it applied, so the
/// write is never applied twice (`docs/PROTOCOL.md`, "Messages on a key").
pub const APPLIED: &str = "Jetlock-Applied";

// Header names as constants: a name given as a string is looked up among
// the standard ones, and one that is not standard is copied, on every
// write. Values are moved in as the strings they were built as.
const EXPECTED_SEQUENCE: HeaderName =
    HeaderName::from_static("Nats-Expected-Last-Subject-Sequence");
const NATS_TTL: HeaderName = HeaderName::from_static("Nats-TTL");
const KV_OPERATION: HeaderName = HeaderName::from_static("KV-Operation");
const WRITE_ID_HEADER: HeaderName = HeaderName::from_static(WRITE_ID);

pub(crate) fn cas_headers(expected: u64, write_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(EXPECTED_SEQUENCE, HeaderValue::from(expected.to_string()));
    headers.insert(WRITE_ID_HEADER, HeaderValue::from(write_id.to_owned()));
    headers
}

/// How far a server's wall clock may step forward while a holder's belief
/// stays inside the key's life on the server (see [`server_ttl`]).
pub const SERVER_CLOCK_STEP: Duration = Duration::from_secs(1);

/// The `Nats-TTL` written for a lease: the lease, plus a tenth of it, plus
/// [`SERVER_CLOCK_STEP`], rounded up to whole seconds.
///
/// The server expires a key when its own wall clock passes the write's
/// timestamp plus the TTL; the holder believes for the lease on its own
/// monotonic clock, counted from when it sent the write (before the
/// timestamp). A step forward of the server's clock, or a stream leader
/// change to a server whose clock is ahead, ends every key early by the
/// step; a server clock that runs fast ends it early by its rate error.
/// With this TTL a holder stops believing before the server frees the key
/// as long as the server's clock runs at most 10% faster than the
/// holder's (the session contract's rate bound) and steps forward at most
/// one second. NTP keeps clock offsets of a cluster in milliseconds and
/// ntpd steps only offsets above 128 ms; chrony's default steps only at
/// start. The price: a holder that dies with no coordinator running keeps
/// its lock for the TTL, up to 1 s plus a tenth longer than its lease.
pub fn server_ttl(lease: Duration) -> Duration {
    lease + lease / 10 + SERVER_CLOCK_STEP
}

/// `Nats-TTL` takes whole seconds (the server's minimum is one second);
/// sub-second parts round up so a lease is never shorter than asked.
pub(crate) fn ttl_header(ttl: Duration) -> String {
    format!("{}s", whole_seconds(ttl))
}

/// A lease rounded up to whole seconds, at least one.
pub fn whole_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_wrong_last_sequence_codes_are_conflicts() {
        use async_nats::jetstream::context::PublishError;
        let api = |code: u64| -> async_nats::jetstream::Error {
            serde_json::from_value(serde_json::json!(
                {"code": 400, "err_code": code, "description": "wrong last sequence"}
            ))
            .unwrap()
        };
        for code in [10071, 10164] {
            let e = PublishError::with_source(PublishErrorKind::Other, api(code));
            assert!(is_conflict(&e), "{code}");
        }
        let e = PublishError::with_source(PublishErrorKind::WrongLastSequence, api(10071));
        assert!(is_conflict(&e));
        // Another refusal is not a conflict.
        let e = PublishError::with_source(PublishErrorKind::Other, api(10077));
        assert!(!is_conflict(&e));
        assert!(!is_conflict(&PublishError::new(PublishErrorKind::TimedOut)));
    }

    use super::*;

    #[test]
    fn the_server_ttl_outlasts_the_lease_by_a_tenth_and_a_second() {
        assert_eq!(ttl_header(server_ttl(Duration::from_secs(1))), "3s");
        assert_eq!(ttl_header(server_ttl(Duration::from_secs(10))), "12s");
        assert_eq!(ttl_header(server_ttl(Duration::from_secs(30))), "34s");
        for secs in [1, 2, 3, 10, 59, 3600, 24 * 3600] {
            let lease = Duration::from_secs(secs);
            let ttl = Duration::from_secs(whole_seconds(server_ttl(lease)));
            // A server clock 10% fast that also stepped a second forward
            // still frees the key after the holder stopped believing.
            assert!(
                ttl.mul_f64(1.0 / 1.1) >= lease + SERVER_CLOCK_STEP.mul_f64(1.0 / 1.1),
                "{lease:?}"
            );
        }
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_header(Duration::from_millis(1)), "1s");
        assert_eq!(ttl_header(Duration::from_secs(10)), "10s");
        assert_eq!(ttl_header(Duration::from_millis(10_001)), "11s");
        assert_eq!(ttl_header(Duration::ZERO), "1s");
    }
}
