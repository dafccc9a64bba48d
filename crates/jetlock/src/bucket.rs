//! The locks bucket: its required configuration, creation and verification.
//!
//! jetlock is only safe on a bucket with per-message TTL (so a dead holder's
//! lease expires on the server, with no coordinator alive) and limit markers
//! (so the expiry is a message that waiters' watchers see). An existing
//! bucket without them is refused with an error naming the setting, rather
//! than used in a way that silently never expires a lock.
//!
//! A new bucket's stream starts at a sequence taken from the wall clock
//! ([`first_sequence`]), because fencing tokens are its sequences: a bucket
//! deleted and created again must not issue tokens below the old one's.

use crate::shards;
use async_nats::jetstream::{self, kv, stream::StorageType};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

mod leaders;
mod streams;
pub use leaders::{leaders, spread_leaders};
pub use streams::*;

/// Default name of the locks bucket (KV stream `KV_JETLOCK_LOCKS`).
pub const DEFAULT_BUCKET: &str = "JETLOCK_LOCKS";

/// How long release markers and server expiry markers stay in the bucket.
/// Long enough for any watcher to see them, short enough that a million
/// once-used lock names do not leave a million markers behind.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(15 * 60);

/// The configuration jetlock wants for its locks bucket.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    /// 1 for a single dev node, 3 (or 5) in production.
    pub replicas: usize,
    pub storage: StorageType,
    /// TTL of delete markers (releases and server-side expiries).
    pub marker_ttl: Duration,
    /// How many buckets the locks spread over (`crate::shards`); used
    /// only when the deployment is created, fixed after.
    pub buckets: u32,
    /// How many partitions its requests are split into (`crate::shards`,
    /// [`shards::PARTITIONS_KEY`]; 1: not split); used only when the
    /// deployment is created, fixed after.
    pub partitions: u32,
}

impl BucketSpec {
    /// A bucket with `replicas` replicas and the defaults for everything else.
    pub fn new(name: impl Into<String>, replicas: usize) -> Self {
        BucketSpec {
            name: name.into(),
            replicas,
            storage: StorageType::File,
            marker_ttl: DEFAULT_MARKER_TTL,
            buckets: 1,
            // A new deployment's requests are partitioned: its coordinators
            // share the reading. An existing one keeps what it was made with.
            partitions: shards::DEFAULT_PARTITIONS,
        }
    }

    /// The stream config of bucket `index` of the deployment, as
    /// `create_key_value` would make it, plus the first sequence (async-nats'
    /// KV config has no field for it) and what says which bucket it is.
    fn stream_config(&self, index: u32, first_seq: u64) -> jetstream::stream::Config {
        let name = shards::bucket_name(&self.name, index);
        let mut metadata = HashMap::from([
            (FIRST_SEQ_RULE_KEY.to_owned(), FIRST_SEQ_RULE.to_owned()),
            (ATOMIC_SET_KEY.to_owned(), ATOMIC_SET.to_owned()),
            (LAYOUT_KEY.to_owned(), LAYOUT.to_owned()),
        ]);
        if self.buckets > 1 {
            metadata.insert(LAYOUT_KEY.to_owned(), LAYOUT_BUCKETS.to_owned());
            if index == 0 {
                metadata.insert(shards::BUCKETS_KEY.to_owned(), self.buckets.to_string());
            } else {
                metadata.insert(shards::SHARD_OF_KEY.to_owned(), self.name.clone());
            }
        }
        if self.partitions > 1 {
            metadata.insert(LAYOUT_KEY.to_owned(), LAYOUT_PARTITIONED.to_owned());
            if index == 0 {
                metadata.insert(
                    shards::PARTITIONS_KEY.to_owned(),
                    self.partitions.to_string(),
                );
            }
        }
        jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some("jetlock lock ownership records (do not write by hand)".into()),
            subjects: vec![format!("$KV.{name}.>")],
            // One record per lock: the history of holders lives in the event
            // stream, not here.
            max_messages_per_subject: 1,
            storage: self.storage,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_message_ttl: true,
            subject_delete_marker_ttl: Some(self.marker_ttl),
            first_sequence: Some(first_seq),
            metadata,
            max_consumers: MAX_CONSUMERS,
            // Atomic multi-key acquisition writes its keys in one atomic
            // batch (`store/batch.rs`); a server before 2.12 ignores this.
            allow_atomic_publish: true,
            ..Default::default()
        }
    }
}

/// Most consumers on the locks bucket's stream: every coordinator's watch,
/// one per client and key it waits for without a coordinator (deleted 2 s
/// after its last wait), `jetlock watch`. Set on the stream: since 2.15
/// nats-server gives a stream without a limit of its own 1000, and a burst
/// of waits that reached it kept a coordinator from watching the bucket.
pub const MAX_CONSUMERS: i32 = 10_000;

/// Stream metadata key saying jetlock turned atomic batches on for this
/// bucket, so an `allow_atomic` that is off again was turned off by an
/// operator, and stays off.
pub const ATOMIC_SET_KEY: &str = "jetlock.allow_atomic";
/// Its value.
pub const ATOMIC_SET: &str = "set";

/// Stream metadata key naming the bucket's key layout: how a lock name
/// becomes a key, and so which key a client writes and a coordinator
/// watches. Two processes that disagree would take the same lock under two
/// keys, both as its holder; so a process opens only a bucket of the layout
/// it speaks. Absent means [`LAYOUT`] (buckets made before the key existed).
pub const LAYOUT_KEY: &str = "jetlock.layout";
/// Key layout 1: the escaped name is the key (`crate::name`), one bucket
/// per deployment.
pub const LAYOUT: &str = "1";
/// Key layout 2: the escaped name is the key, in one of the K buckets
/// `crate::shards` routes it to. A process that speaks only layout 1 would
/// take every lock in bucket 0, beside the holders of the others.
pub const LAYOUT_BUCKETS: &str = "2";
/// Layout 3: keys as in layout 2, and requests partitioned
/// ([`shards::PARTITIONS_KEY`]): each coordinator reads only its
/// partitions' requests. A process that speaks only layouts 1 and 2 would
/// read (and, as a coordinator, delete as unreadable) requests it cannot
/// place, and act on keys another coordinator owns.
pub const LAYOUT_PARTITIONED: &str = "3";

/// Stream metadata key that records how the first sequence was chosen.
pub const FIRST_SEQ_RULE_KEY: &str = "jetlock.first_seq";
/// Its value for [`first_sequence`]'s rule.
pub const FIRST_SEQ_RULE: &str = "unix-micros";

/// No clock that creates a bucket may read earlier than this (2026-12-01
/// UTC, in µs): a machine whose clock was reset (a dead RTC battery reads
/// 1970) would otherwise start a bucket below the tokens of the one it
/// replaces.
const EARLIEST_CLOCK_US: u64 = 1_796_083_200_000_000;

/// Tokens stay below 2^53 so clients that read JSON numbers as doubles
/// (JavaScript) keep them exact. The clock reaches it in the year 2255.
pub const MAX_EXACT_TOKEN: u64 = 1 << 53;

/// The first sequence of a new locks bucket's stream: the wall clock in
/// microseconds since the Unix epoch.
///
/// Fencing tokens are the stream's sequences, and a new stream would start
/// at 1, below every token the bucket issued before it was deleted. The
/// clock needs no memory of the old stream: a stream created at time `t0`
/// with this rule holds sequences below `t0 + n` (µs) after `n` writes, so
/// as long as it stores fewer than one message per microsecond averaged
/// over its life (a JetStream stream stores at most a few hundred thousand
/// a second), its last sequence at any time `t` is below `t` in µs, and a
/// bucket created after it starts above every token it issued. A bucket
/// created before this rule started at 1 and stayed below the clock too.
/// That holds while the creating machine's clock is not behind the old
/// stream creator's by more than the old stream's unused headroom (its age
/// in µs minus its writes); a clock reset to the past is refused outright.
pub fn first_sequence(now: SystemTime) -> Result<u64, BucketError> {
    let us = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    if us < EARLIEST_CLOCK_US {
        return Err(BucketError::Clock {
            problem: format!(
                "the clock reads {us} µs since 1970, before this jetlock was released"
            ),
        });
    }
    if us >= MAX_EXACT_TOKEN {
        return Err(BucketError::Clock {
            problem: format!("{us} µs since 1970 is above 2^53, where JSON numbers lose precision"),
        });
    }
    Ok(us)
}

/// Whether a bucket's stream started at a sequence [`first_sequence`]
/// chose; `false` for one created before the rule, by hand, or by another
/// tool (its tokens started at 1).
pub fn first_sequence_derived(config: &jetstream::stream::Config) -> bool {
    config.metadata.get(FIRST_SEQ_RULE_KEY).map(String::as_str) == Some(FIRST_SEQ_RULE)
        && config
            .first_sequence
            .is_some_and(|seq| seq >= EARLIEST_CLOCK_US)
}

/// Why the locks bucket could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("locks bucket {bucket:?} does not exist; create it with `jetlock setup` (or run `jetlock dev`)")]
    NotFound { bucket: String },
    #[error("locks bucket {bucket:?} is configured unsafely for jetlock: {problem}; fix it with `nats stream edit KV_{bucket}` (never delete or rename a bucket while any client may hold a lock in it: see `docs/OPERATIONS.md`)")]
    Incompatible { bucket: String, problem: String },
    /// The clock of the machine creating a bucket cannot give it a safe
    /// first sequence (see [`first_sequence`]).
    #[error(
        "will not create a locks bucket: {problem}; fix this machine's clock (NTP) and try again"
    )]
    Clock { problem: String },
    /// The bucket's keys are laid out in a way this build does not speak
    /// ([`LAYOUT_KEY`]).
    #[error("locks bucket {bucket:?} uses key layout {layout:?} and this jetlock speaks only layouts \"1\", \"2\" and \"3\": it would take its locks under other keys than the bucket's clients and coordinators, so two of them could hold one lock; use a jetlock release that speaks layout {layout:?} (docs/PROTOCOL.md, \"Key layouts\")")]
    Layout { bucket: String, layout: String },
    /// The bucket is one of a deployment's buckets 1..K, not its bucket 0.
    #[error("locks bucket {bucket:?} is one of the buckets of deployment {first:?}: point jetlock at {first:?}, which names them all (docs/SCALING.md, \"Locks over several buckets\")")]
    NotFirst { bucket: String, first: String },
    /// Bucket 0 names a count of buckets this build cannot use.
    #[error("locks bucket {bucket:?} says its locks spread over {buckets:?} buckets; a deployment has 1 to {max}", max = shards::MAX_BUCKETS)]
    Buckets { bucket: String, buckets: String },
    /// Bucket 0 names a count of request partitions this build cannot use.
    #[error("locks bucket {bucket:?} says its requests are split into {partitions:?} partitions; a deployment has 1 to {max}", max = shards::MAX_PARTITIONS)]
    Partitions { bucket: String, partitions: String },
    #[error("could not reach JetStream for bucket {bucket:?}: {source}")]
    JetStream {
        bucket: String,
        #[source]
        source: async_nats::Error,
    },
}

/// Creates the deployment's buckets described by `spec` (bucket 0 last, so
/// a process that finds it finds the others), or verifies existing ones.
/// Returns bucket 0; [`crate::store::LockStore::new`] opens the others.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, BucketError> {
    if spec.buckets == 0 || spec.buckets > shards::MAX_BUCKETS {
        return Err(BucketError::Buckets {
            bucket: spec.name.clone(),
            buckets: spec.buckets.to_string(),
        });
    }
    if spec.partitions == 0 || spec.partitions > shards::MAX_PARTITIONS {
        return Err(BucketError::Partitions {
            bucket: spec.name.clone(),
            partitions: spec.partitions.to_string(),
        });
    }
    match open_bucket(js, &spec.name).await {
        Ok(store) => {
            let stream = js
                .get_stream(&store.stream_name)
                .await
                .map_err(|e| jetstream_error(&spec.name, e))?;
            let config = &stream.cached_info().config;
            if config.num_replicas != spec.replicas {
                warn!(bucket = %spec.name, have = config.num_replicas, want = spec.replicas,
                      "locks bucket replica count differs from the requested one; keeping it");
            }
            // Only a caller that asked for several is told: a coordinator
            // or client that opens an existing deployment asks for the
            // default.
            let have = buckets_of(&spec.name, config)?;
            if have != spec.buckets && spec.buckets > 1 {
                warn!(bucket = %spec.name, have, want = spec.buckets,
                      "the deployment spreads its locks over another number of buckets; keeping it (it is fixed when the deployment is made)");
            }
            upgrade(js, &spec.name, config).await;
            Ok(store)
        }
        Err(BucketError::NotFound { .. }) => {
            let first_seq = first_sequence(SystemTime::now())?;
            info!(bucket = %spec.name, replicas = spec.replicas, buckets = spec.buckets, first_seq,
                  "creating locks bucket");
            for index in (1..spec.buckets).chain([0]) {
                let name = shards::bucket_name(&spec.name, index);
                match js.create_stream(spec.stream_config(index, first_seq)).await {
                    Ok(_) => {}
                    // Another process created it first: verified below.
                    Err(e) if e.to_string().contains("already in use") => {}
                    Err(e) => return Err(jetstream_error(&name, e)),
                }
            }
            open_bucket(js, &spec.name).await
        }
        Err(e) => Err(e),
    }
}

/// How many buckets the deployment whose bucket 0 has this stream config
/// spreads its locks over ([`shards::BUCKETS_KEY`]; absent: one).
pub fn buckets_of(bucket: &str, config: &jetstream::stream::Config) -> Result<u32, BucketError> {
    count_of(config, shards::BUCKETS_KEY, shards::MAX_BUCKETS).map_err(|text| {
        BucketError::Buckets {
            bucket: bucket.to_owned(),
            buckets: text,
        }
    })
}

/// How many partitions the requests of the deployment whose bucket 0 has
/// this stream config are split into ([`shards::PARTITIONS_KEY`]; absent:
/// 1, not split).
pub fn partitions_of(bucket: &str, config: &jetstream::stream::Config) -> Result<u32, BucketError> {
    count_of(config, shards::PARTITIONS_KEY, shards::MAX_PARTITIONS).map_err(|text| {
        BucketError::Partitions {
            bucket: bucket.to_owned(),
            partitions: text,
        }
    })
}

/// A count from 1 to `max` under metadata `key` (absent: 1); the text when
/// it is not one.
fn count_of(config: &jetstream::stream::Config, key: &str, max: u32) -> Result<u32, String> {
    match config.metadata.get(key) {
        None => Ok(1),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(text.clone()),
        },
    }
}

/// Opens bucket `index` (1..K) of the deployment whose bucket 0 is `first`,
/// checking that it is one and that its configuration is safe.
pub async fn open_other_bucket(
    js: &jetstream::Context,
    first: &str,
    index: u32,
) -> Result<(kv::Store, jetstream::stream::Stream), BucketError> {
    let bucket = shards::bucket_name(first, index);
    let stream = get_bucket_stream(js, &bucket).await?;
    let config = &stream.cached_info().config;
    check_layout(&bucket, config)?;
    if config
        .metadata
        .get(shards::SHARD_OF_KEY)
        .map(String::as_str)
        != Some(first)
    {
        return Err(BucketError::Incompatible {
            bucket: bucket.clone(),
            problem: format!("it is not a bucket of deployment {first:?} (its stream metadata lacks {}: {first:?})", shards::SHARD_OF_KEY),
        });
    }
    check_config(&bucket, config)?;
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| jetstream_error(&bucket, e))?;
    Ok((kv, stream))
}

/// Gives a bucket made by an older jetlock what this one adds to new
/// buckets, leaving what an operator set: the consumer limit where there is
/// none (the server's default, 1000 since 2.15), and atomic batches where
/// jetlock never turned them on ([`ATOMIC_SET_KEY`]).
async fn upgrade(js: &jetstream::Context, bucket: &str, config: &jetstream::stream::Config) {
    let mut wanted = config.clone();
    if config.max_consumers <= 0 {
        wanted.max_consumers = MAX_CONSUMERS;
    }
    let atomic = !config.allow_atomic_publish && !config.metadata.contains_key(ATOMIC_SET_KEY);
    if atomic {
        wanted.allow_atomic_publish = true;
        wanted
            .metadata
            .insert(ATOMIC_SET_KEY.to_owned(), ATOMIC_SET.to_owned());
    }
    if wanted == *config {
        return;
    }
    match js.update_stream(&wanted).await {
        Ok(info) => {
            info!(
                bucket,
                max_consumers = info.config.max_consumers,
                allow_atomic = info.config.allow_atomic_publish,
                "locks bucket settings updated"
            );
            if atomic && !info.config.allow_atomic_publish {
                // A server before 2.12 ignored the setting: take the mark
                // back, so an upgraded server gets it next time.
                let mut unmarked = info.config.clone();
                unmarked.metadata.remove(ATOMIC_SET_KEY);
                let _ = js.update_stream(&unmarked).await;
            }
        }
        Err(e) => warn!(bucket, error = %e,
                        "cannot update the locks bucket's consumer limit or atomic batches (nats-server before 2.12 cannot change them); keeping them"),
    }
}

/// Opens an existing bucket 0 after checking that its configuration is safe.
pub async fn open_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, BucketError> {
    let stream = get_bucket_stream(js, bucket).await?;
    let config = &stream.cached_info().config;
    check_layout(bucket, config)?;
    if let Some(first) = config.metadata.get(shards::SHARD_OF_KEY) {
        return Err(BucketError::NotFirst {
            bucket: bucket.to_owned(),
            first: first.clone(),
        });
    }
    buckets_of(bucket, config)?;
    partitions_of(bucket, config)?;
    check_config(bucket, config)?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| jetstream_error(bucket, e))
}

async fn get_bucket_stream(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<jetstream::stream::Stream, BucketError> {
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(stream) => Ok(stream),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Err(BucketError::NotFound {
                bucket: bucket.to_owned(),
            })
        }
        Err(e) => Err(jetstream_error(bucket, e)),
    }
}

/// Requests older than this are dropped from the request stream unread
/// (longer than the longest wait a request may ask for).
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// Refuses a locks bucket whose stream is configured unsafely for jetlock,
/// naming the setting; logs the settings that only cost space or
/// durability ([`config_warnings`]).
pub fn check_config(bucket: &str, config: &jetstream::stream::Config) -> Result<(), BucketError> {
    if let Some(problem) = config_problem(config) {
        return Err(BucketError::Incompatible {
            bucket: bucket.to_owned(),
            problem,
        });
    }
    for warning in config_warnings(config) {
        warn!(bucket, "{warning}");
    }
    Ok(())
}

/// Refuses a bucket whose key layout ([`LAYOUT_KEY`]) is not this build's.
pub fn check_layout(bucket: &str, config: &jetstream::stream::Config) -> Result<(), BucketError> {
    match config.metadata.get(LAYOUT_KEY) {
        Some(layout)
            if layout != LAYOUT && layout != LAYOUT_BUCKETS && layout != LAYOUT_PARTITIONED =>
        {
            Err(BucketError::Layout {
                bucket: bucket.to_owned(),
                layout: layout.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Why jetlock cannot use a bucket with this stream config, if it cannot.
pub fn config_problem(config: &jetstream::stream::Config) -> Option<String> {
    if !config.allow_message_ttl {
        Some("per-message TTL is off (allow_msg_ttl: false), so a dead holder's lock would never expire".to_owned())
    } else if config.subject_delete_marker_ttl.is_none() {
        Some("limit markers are off (subject_delete_marker_ttl unset), so waiters would not see a lock expire".to_owned())
    } else if !config.max_age.is_zero() {
        Some(format!(
            "max_age is {:?}; jetlock sets a TTL per lock and a bucket-wide max_age would drop held locks",
            config.max_age
        ))
    } else if config.mirror.is_some() {
        Some("the bucket is a mirror and cannot take writes".to_owned())
    } else {
        None
    }
}

/// What is safe but costly in a usable bucket's stream config.
pub fn config_warnings(config: &jetstream::stream::Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.max_messages_per_subject != 1 {
        let kept = match config.max_messages_per_subject {
            n if n > 0 => format!("{n} messages"),
            _ => "every message".to_owned(),
        };
        warnings.push(format!(
            "locks bucket keeps {kept} per key (history): released records linger as history (space only; safety is unaffected)"
        ));
    }
    if config.storage == StorageType::Memory {
        warnings.push(
            "locks bucket uses memory storage: held locks are lost when every server restarts"
                .to_owned(),
        );
    }
    warnings
}

fn jetstream_error(bucket: &str, e: impl Into<async_nats::Error>) -> BucketError {
    BucketError::JetStream {
        bucket: bucket.to_owned(),
        source: e.into(),
    }
}
