//! Cache single-flight: one filler of a key across the cluster, the
//! others wait and read its result.
//!
//! The filler is elected by the lock `sf:<key>`; its result lands in the
//! single-flight bucket ([`SINGLE_FLIGHT_BUCKET`]) under the key, with a
//! per-message TTL. Three kinds of message live there, told apart by the
//! [`KIND`] header: nothing (or an expiry), a filler's **claim**, a
//! **value**. Each write is a CAS on the key's last revision, which fences
//! off a stale filler without trusting any clock:
//!
//! 1. a requester reads the key: a value is the answer;
//! 2. otherwise it watches the key for a value and, at the same time,
//!    waits for the lock (in arrival order with a coordinator);
//! 3. granted, it reads the key again and writes its claim, carrying its
//!    fencing token, over what it read: never over a value, nor over a
//!    claim with a higher token (then it is the stale one);
//! 4. it fills, and writes the value expecting its claim's revision.
//!
//! A filler whose lock was lost (it paused past its lease, its session
//! died) and was granted to another finds that filler's claim on top: its
//! late value is refused, so exactly one value lands per flight. A filler
//! that dies before writing leaves the lock to the next waiter.

use crate::bucket::{ensure_single_flight_bucket, BucketError};
use crate::client::{Client, LockGuard};
use crate::error::LockError;
use crate::fence::FencingToken;
use crate::name::LockName;
use crate::store::{cas_headers, is_conflict, ttl_header, SubjectWatch};
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tracing::debug;

pub use crate::bucket::SINGLE_FLIGHT_BUCKET;

/// The lock electing the filler of `<key>` is `<SINGLE_FLIGHT_PREFIX><key>`.
pub const SINGLE_FLIGHT_PREFIX: &str = "sf:";

/// Header saying what a message of the bucket is: [`CLAIM`] or [`VALUE`].
pub const KIND: &str = "Jetlock-Flight";
/// [`KIND`] of a filler's claim (empty body).
pub const CLAIM: &str = "claim";
/// [`KIND`] of a result (the body is the value).
pub const VALUE: &str = "value";
/// Header carrying the writer's fencing token (its `sf:<key>` grant).
pub const TOKEN: &str = "Jetlock-Token";

/// How long a claim stays: a fill that takes longer finds its claim
/// expired and its value refused (the next requester fills again).
const CLAIM_TTL: Duration = Duration::from_secs(60 * 60);

impl Client {
    /// [`SingleFlight::run`] on a handle opened for this call (one more
    /// round trip; keep a [`SingleFlight`] for repeated use).
    pub async fn single_flight<F, Fut, V, E>(
        &self,
        key: &str,
        ttl: Duration,
        fill: F,
    ) -> Result<Filled, SingleFlightError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        V: Into<Bytes>,
    {
        SingleFlight::open(self).await?.run(key, ttl, fill).await
    }
}

/// A result of [`SingleFlight::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    /// The value, as its filler's `fill` returned it.
    pub value: Bytes,
    /// The fencing token of the filler that wrote it.
    pub token: FencingToken,
    /// Whether this call's `fill` produced it.
    pub filled_here: bool,
}

/// Why [`SingleFlight::run`] returned no value.
#[derive(Debug, thiserror::Error)]
pub enum SingleFlightError<E> {
    /// This call was the filler and its `fill` failed. Nothing was
    /// written: the next requester fills.
    #[error("filling failed: {0}")]
    Fill(#[source] E),
    /// The filler's lock could not be taken (bad name, session over, ...).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The single-flight bucket could not be created or opened.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// Reading, watching or writing the bucket failed.
    #[error("single-flight {op} of {key:?} failed: {source}")]
    Nats {
        key: String,
        op: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

/// The single-flight bucket, opened for one client. Cheap to clone.
///
/// ```no_run
/// # async fn run(client: jetlock::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let flights = jetlock::SingleFlight::open(&client).await?;
/// let report = flights
///     .run("report:2026-12", Duration::from_secs(60), || async {
///         Ok::<_, std::io::Error>(b"the expensive report".to_vec())
///     })
///     .await?;
/// assert_eq!(report.value, "the expensive report");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SingleFlight {
    client: Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

/// What the bucket holds for a key.
#[derive(Debug)]
enum Slot {
    /// No claim and no value: `revision` is the key's last (0: none).
    Empty {
        revision: u64,
    },
    Claimed {
        revision: u64,
        token: FencingToken,
    },
    Filled(Filled),
}

/// A write to the bucket that did not land.
enum WriteError {
    /// Somebody else wrote since the expected revision.
    Conflict,
    Transport(async_nats::Error),
}

impl SingleFlight {
    /// Opens the single-flight bucket, creating it (with as many replicas
    /// as the locks bucket) if it does not exist.
    pub async fn open(client: &Client) -> Result<Self, BucketError> {
        let js = jetstream::new(client.nats().clone());
        let locks = client.store().stream_name();
        let replicas = js
            .get_stream(locks)
            .await
            .map_err(|e| BucketError::JetStream {
                bucket: client.store().bucket().to_owned(),
                source: e.into(),
            })?
            .cached_info()
            .config
            .num_replicas;
        let stream = ensure_single_flight_bucket(&js, replicas).await?;
        Ok(SingleFlight {
            client: client.clone(),
            js,
            stream,
        })
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The value of `key`: the one in the bucket, or the one `fill`
    /// produces if this call is elected filler, or the one another
    /// requester's filler writes while this call waits. It stays in the
    /// bucket for `ttl` (whole seconds, at least 1). `fill` runs once per
    /// election of this call as filler, which is once unless a newer filler
    /// refused its value (this call had lost its lock meanwhile).
    pub async fn run<F, Fut, V, E>(
        &self,
        key: &str,
        ttl: Duration,
        mut fill: F,
    ) -> Result<Filled, SingleFlightError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        V: Into<Bytes>,
    {
        let slot_key = LockName::new(key).map_err(LockError::from)?;
        let lock = format!("{SINGLE_FLIGHT_PREFIX}{key}");
        LockName::new(&lock).map_err(LockError::from)?;
        let subject = format!("$KV.{SINGLE_FLIGHT_BUCKET}.{}", slot_key.key());
        loop {
            let revision = match self.read(&subject, key).await? {
                Slot::Filled(filled) => return Ok(filled),
                Slot::Empty { revision } | Slot::Claimed { revision, .. } => revision,
            };
            let guard = tokio::select! {
                filled = self.watch_for_value(&subject, key, revision + 1) => return filled,
                guard = self.client.lock(&lock).acquire() => guard?,
            };
            if let Some(filled) = self.fill_as(guard, &subject, key, ttl, &mut fill).await? {
                return Ok(filled);
            }
        }
    }

    /// Waits until a value lands on the key after `from`.
    async fn watch_for_value<E>(
        &self,
        subject: &str,
        key: &str,
        mut from: u64,
    ) -> Result<Filled, SingleFlightError<E>> {
        let mut failures = 0u32;
        loop {
            let mut watch =
                match SubjectWatch::start(&self.js, &self.stream, subject.to_owned(), from).await {
                    Ok(watch) => watch,
                    Err(source) if failures < 10 => {
                        failures += 1;
                        debug!(key, error = %source, "single-flight watch failed; again");
                        tokio::time::sleep(Duration::from_millis(25 << failures.min(6))).await;
                        continue;
                    }
                    Err(source) => return Err(nats_error(key, "watch", source)),
                };
            // A broken watch (a server restart) resumes after the last
            // message seen.
            while let Some(Ok(message)) = watch.next().await {
                failures = 0;
                from = message.revision + 1;
                let slot = slot(message.revision, message.headers.as_ref(), message.payload);
                if let Slot::Filled(filled) = slot {
                    return Ok(filled);
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(25 << failures.min(6))).await;
        }
    }

    /// This call holds the lock: claim the key, fill, write the value.
    /// `None` when a value is still to come from another filler.
    async fn fill_as<F, Fut, V, E>(
        &self,
        guard: LockGuard,
        subject: &str,
        key: &str,
        ttl: Duration,
        fill: &mut F,
    ) -> Result<Option<Filled>, SingleFlightError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        V: Into<Bytes>,
    {
        let token = guard.token();
        let claimed = loop {
            let expected = match self.read(subject, key).await? {
                // Filled while this call waited for the lock.
                Slot::Filled(filled) => return finish(guard, Some(filled)).await,
                // A newer filler claimed: this grant is stale.
                Slot::Claimed { token: newer, .. } if newer > token => {
                    return finish(guard, None).await
                }
                Slot::Empty { revision } | Slot::Claimed { revision, .. } => revision,
            };
            if guard.is_lost() {
                return finish(guard, None).await;
            }
            match self
                .write(subject, CLAIM, token, expected, CLAIM_TTL, Bytes::new())
                .await
            {
                Ok(revision) => break revision,
                // A stale filler's claim landed between the read and this
                // write: read again (its token is lower).
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Transport(source)) => return Err(nats_error(key, "claim", source)),
            }
        };
        debug!(key, %token, claimed, "filling");
        // A failed fill drops the guard: the lock goes to the next waiter.
        let value: Bytes = fill().await.map_err(SingleFlightError::Fill)?.into();
        match self
            .write(subject, VALUE, token, claimed, ttl, value.clone())
            .await
        {
            Ok(_) => {
                let filled = Filled {
                    value,
                    token,
                    filled_here: true,
                };
                finish(guard, Some(filled)).await
            }
            // A newer filler claimed the key: this value is refused, and the
            // newer filler's is the answer.
            Err(WriteError::Conflict) => {
                debug!(key, %token, "value refused: a newer filler claimed the key");
                finish(guard, None).await
            }
            Err(WriteError::Transport(source)) => Err(nats_error(key, "write", source)),
        }
    }

    /// The key's last message, read from the stream leader.
    async fn read<E>(&self, subject: &str, key: &str) -> Result<Slot, SingleFlightError<E>> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(slot(m.sequence, Some(&m.headers), m.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok(Slot::Empty { revision: 0 })
            }
            Err(e) => Err(nats_error(key, "read", e.into())),
        }
    }

    /// Writes a `kind` message with the writer's `token` if the key's last
    /// revision is `expected`; it expires after `ttl`.
    async fn write(
        &self,
        subject: &str,
        kind: &str,
        token: FencingToken,
        expected: u64,
        ttl: Duration,
        payload: Bytes,
    ) -> Result<u64, WriteError> {
        let write_id = format!("{}.{kind}", nuid::next());
        let mut headers = cas_headers(expected, &write_id);
        headers.insert(KIND, kind);
        headers.insert(TOKEN, token.get().to_string().as_str());
        headers.insert("Nats-TTL", ttl_header(ttl).as_str());
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| WriteError::Transport(e.into()))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if is_conflict(&e) => Err(WriteError::Conflict),
            Err(e) => Err(WriteError::Transport(e.into())),
        }
    }
}

/// Releases the filler's lock, whatever became of it (a lost lock has
/// nothing to release), and returns `result`.
async fn finish<E>(
    guard: LockGuard,
    result: Option<Filled>,
) -> Result<Option<Filled>, SingleFlightError<E>> {
    let _ = guard.release().await;
    Ok(result)
}

/// Reads one message of the bucket. Anything jetlock did not write (a
/// missing or unknown kind, a token that is no number) counts as empty: a
/// filler overwrites it.
fn slot(revision: u64, headers: Option<&HeaderMap>, payload: Bytes) -> Slot {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let token = header(TOKEN).and_then(|t| t.parse().ok()).map(FencingToken);
    match (header(KIND), token) {
        (Some(VALUE), Some(token)) => Slot::Filled(Filled {
            value: payload,
            token,
            filled_here: false,
        }),
        (Some(CLAIM), Some(token)) => Slot::Claimed { revision, token },
        _ => Slot::Empty { revision },
    }
}

fn nats_error<E>(key: &str, op: &'static str, source: async_nats::Error) -> SingleFlightError<E> {
    SingleFlightError::Nats {
        key: key.to_owned(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(kind: &str, token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(KIND, kind);
        h.insert(TOKEN, token);
        h
    }

    #[test]
    fn messages_read_as_claims_values_or_nothing() {
        let value = slot(7, Some(&headers(VALUE, "42")), Bytes::from_static(b"v"));
        assert!(
            matches!(value, Slot::Filled(Filled { token: FencingToken(42), ref value, .. })
            if value == "v")
        );
        let claim = slot(8, Some(&headers(CLAIM, "43")), Bytes::new());
        assert!(matches!(
            claim,
            Slot::Claimed {
                revision: 8,
                token: FencingToken(43)
            }
        ));
        // Written by hand, expired, or garbled: a filler overwrites it.
        for h in [
            None,
            Some(headers("other", "1")),
            Some(headers(VALUE, "x")),
            Some(headers(VALUE, "-1")),
        ] {
            let s = slot(9, h.as_ref(), Bytes::from_static(b"junk"));
            assert!(matches!(s, Slot::Empty { revision: 9 }), "{s:?}");
        }
    }
}
