//! The streams and buckets beside the locks bucket: requests, events,
//! proof beats, settings, single-flight values.

use super::{jetstream_error, BucketError, MAX_CONSUMERS, REQUEST_MAX_AGE};
use async_nats::jetstream::{self, stream::StorageType};
use std::time::Duration;

/// Caps of the request stream when a coordinator creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestStreamLimits {
    /// Most requests stored at once.
    pub max_msgs: i64,
    /// Most bytes stored at once.
    pub max_bytes: i64,
}

impl Default for RequestStreamLimits {
    fn default() -> Self {
        RequestStreamLimits {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Creates the request stream (`JETLOCK_REQ`) coordinators read, or opens
/// an existing one. Requests are stored so an acknowledged request survives
/// a coordinator crash; `Nats-Msg-Id` de-duplication within
/// `duplicate_window` makes a retried publish safe; the coordinator deletes
/// each request once answered, and `max_age` bounds what a stream without
/// coordinators can accumulate.
pub async fn ensure_request_stream(
    js: &jetstream::Context,
    replicas: usize,
    limits: RequestStreamLimits,
    partitions: u32,
) -> Result<jetstream::stream::Stream, BucketError> {
    use crate::protocol::{MAX_REQUEST_BYTES, REQUEST_STREAM};
    let subjects = request_stream_subjects(partitions);
    let config = jetstream::stream::Config {
        name: REQUEST_STREAM.to_owned(),
        description: Some("jetlock lock requests (read by `jetlock serve`)".into()),
        subjects: subjects.clone(),
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: replicas,
        max_age: REQUEST_MAX_AGE,
        // Room for the body and the publisher's headers.
        max_message_size: (MAX_REQUEST_BYTES + 1024) as i32,
        duplicate_window: Duration::from_secs(120),
        allow_message_ttl: true,
        // Requests in progress are all the stream holds (finished ones are
        // deleted), so these caps bound what a flood of requests can pile
        // up. At the cap the server refuses the publish (the client's
        // error, JetStream 10077 / 10047) instead of dropping the oldest
        // request, which somebody still waits for.
        max_messages: limits.max_msgs,
        max_bytes: limits.max_bytes,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let err = |e: async_nats::Error| BucketError::JetStream {
        bucket: REQUEST_STREAM.to_owned(),
        source: e,
    };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| err(e.into()))?;
    // A stream made before the deployment's partitions (or by an older
    // jetlock) gains their subjects; nothing else of it changes.
    let have = &stream.cached_info().config;
    if subjects.iter().all(|s| have.subjects.contains(s)) {
        return Ok(stream);
    }
    let mut wanted = have.clone();
    for s in subjects {
        if !wanted.subjects.contains(&s) {
            wanted.subjects.push(s);
        }
    }
    js.update_stream(&wanted).await.map_err(|e| err(e.into()))?;
    js.get_stream(REQUEST_STREAM)
        .await
        .map_err(|e| err(e.into()))
}

/// The subjects of the request stream of a deployment with `partitions`
/// request partitions: every unpartitioned request, and one subject per
/// partition (so a request to a partition that does not exist is refused
/// when published).
pub fn request_stream_subjects(partitions: u32) -> Vec<String> {
    let mut subjects = vec![crate::protocol::REQUEST_SUBJECTS.to_owned()];
    if partitions > 1 {
        subjects.extend((0..partitions).map(crate::protocol::partition_subjects));
    }
    subjects
}

/// The stream of coordinators' proof beats (jetlock-coordinator's hearing.rs).
pub const PROOF_STREAM: &str = "JETLOCK_PROOF";
/// Subjects of the proof stream: `jetlock.proof.<coordinator id>`.
pub const PROOF_SUBJECTS: &str = "jetlock.proof.>";

/// Creates the proof stream, or opens it. A coordinator's proof beat is
/// acknowledged only once a quorum of the stream's replicas stored it,
/// which shows the coordinator reached the quorum. Memory storage: the
/// beats matter only as they are acknowledged, so no disk write is needed,
/// and one beat per coordinator is kept.
pub async fn ensure_proof_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, BucketError> {
    let config = jetstream::stream::Config {
        name: PROOF_STREAM.to_owned(),
        description: Some("jetlock coordinators' proof that they reach the quorum".into()),
        subjects: vec![PROOF_SUBJECTS.to_owned()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: StorageType::Memory,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(60),
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| BucketError::JetStream {
            bucket: PROOF_STREAM.to_owned(),
            source: e.into(),
        })
}

/// Creates the event stream `JETLOCK_EV` (every `jetlock.ev.>` event,
/// kept `max_age` and at most `max_bytes`), or opens it.
pub async fn ensure_event_stream(
    js: &jetstream::Context,
    replicas: usize,
    max_age: Duration,
    max_bytes: i64,
) -> Result<jetstream::stream::Stream, BucketError> {
    use crate::events::{EVENT_STREAM, EVENT_SUBJECTS};
    let config = jetstream::stream::Config {
        name: EVENT_STREAM.to_owned(),
        description: Some("jetlock lock and membership events (the audit trail)".into()),
        subjects: vec![EVENT_SUBJECTS.to_owned()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: replicas,
        max_age,
        max_bytes,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| BucketError::JetStream {
            bucket: EVENT_STREAM.to_owned(),
            source: e.into(),
        })
}

/// The config bucket (a KV bucket; one key per setting, JSON values).
pub const CONFIG_BUCKET: &str = "jetlock_config";

/// Creates the config bucket (live settings, `jetlock config`), or opens it.
pub async fn ensure_config_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::kv::Store, BucketError> {
    let name = CONFIG_BUCKET;
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: name.to_owned(),
        description: "jetlock live settings (jetlock config set)".into(),
        history: 10,
        num_replicas: replicas,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| BucketError::JetStream {
        bucket: name.to_owned(),
        source: e.into(),
    })
}

/// The single-flight bucket (`jetlock::recipes::SingleFlight`): one key
/// per cache key, holding its filler's claim or its result.
pub const SINGLE_FLIGHT_BUCKET: &str = "JETLOCK_SINGLE_FLIGHT";

/// Creates the single-flight bucket's stream, or opens it. Like the locks
/// bucket: one message per key, per-message TTL (a result lives for the
/// TTL its filler asked; there is no bucket-wide `max_age`, which would cut
/// every result to one length), and room for one waiter's consumer each.
pub async fn ensure_single_flight_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, BucketError> {
    let name = SINGLE_FLIGHT_BUCKET;
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some("jetlock single-flight results (do not write by hand)".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_message_ttl: true,
        max_consumers: MAX_CONSUMERS,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| jetstream_error(name, e))
}
