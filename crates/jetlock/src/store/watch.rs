//! Watches of the bucket's keys: ordered push consumers from a revision on,
//! deleted with the watch.

use super::{current_from_message, Current};
use crate::record::RecordError;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use std::time::Duration;

/// A watch of one subject of a stream, raw messages in order: an ordered
/// push consumer from a revision on. Its consumer goes with the watch: it
/// is deleted when the watch is dropped, and the server removes it
/// [`WATCH_IDLE`] after nobody listens, which covers a delete that is lost
/// or refused (the worker role may not delete consumers). Left to
/// async-nats' 30 s, a burst of waits filled the stream's consumer limit
/// (see [`crate::bucket::MAX_CONSUMERS`]).
pub struct SubjectWatch {
    messages: jetstream::consumer::push::Ordered,
    stream: jetstream::stream::Stream,
    consumer: String,
}

/// How long the server keeps a watch's consumer once nobody listens on it.
/// Short, since a watch ends with its wait; a client reconnecting after
/// longer finds it gone and async-nats creates it again from where it was.
pub const WATCH_IDLE: Duration = Duration::from_secs(2);

/// One message a [`SubjectWatch`] delivered.
#[derive(Debug)]
pub struct Delivered {
    pub subject: String,
    /// Its stream sequence: the key's revision.
    pub revision: u64,
    /// How many messages the server had queued behind this one.
    pub pending: u64,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl SubjectWatch {
    /// Watches `subject` of `stream` from `revision` on (inclusive).
    pub async fn start(
        js: &jetstream::Context,
        stream: &jetstream::stream::Stream,
        subject: String,
        revision: u64,
    ) -> Result<Self, async_nats::Error> {
        let from = jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: revision.max(1),
        };
        Ok(Self::start_with(js, stream, subject, from).await?.0)
    }

    /// Watches the subjects `filter` matches, from `deliver` on; also
    /// returns how many messages the server holds for it at the start.
    pub async fn start_with(
        js: &jetstream::Context,
        stream: &jetstream::stream::Stream,
        filter: String,
        deliver: jetstream::consumer::DeliverPolicy,
    ) -> Result<(Self, u64), async_nats::Error> {
        // Unnamed: the server names it, and the name is read back for the
        // delete. async-nats recreates it after a leader change under the
        // name `<name>_<n>`, which puts the filter into the API subject
        // (`CONSUMER.CREATE.<stream>.<name>.<filter>`): roles that watch
        // need that form too (nats/cluster.conf).
        let ordered = jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            description: Some("jetlock wait".into()),
            filter_subject: filter,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: deliver,
            ..Default::default()
        };
        // async-nats' ordered config fixes the inactivity threshold at 30 s:
        // the consumer is created from the same config with ours, and read
        // as the ordered consumer it is. One that async-nats creates again
        // after a gap gets its 30 s (and no delete: see `Drop`).
        let mut config =
            jetstream::consumer::IntoConsumerConfig::into_consumer_config(ordered.clone());
        config.inactive_threshold = WATCH_IDLE;
        let created = stream.create_consumer(config).await?;
        let info = created.cached_info().clone();
        let (consumer, pending) = (info.name.clone(), info.num_pending);
        let ordered = jetstream::consumer::Consumer::new(ordered, info, js.clone());
        let watch = SubjectWatch {
            messages: ordered.messages().await?,
            stream: stream.clone(),
            consumer,
        };
        Ok((watch, pending))
    }

    /// The subject's next message; `None` once the watch ended, an error
    /// when it broke (a new one resumes).
    pub async fn next(&mut self) -> Option<Result<Delivered, async_nats::Error>> {
        use futures::StreamExt;
        let msg = match self.messages.next().await? {
            Ok(msg) => msg,
            Err(e) => return Some(Err(e.into())),
        };
        let (revision, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Some(Err(e)),
        };
        let msg = msg.message;
        Some(Ok(Delivered {
            subject: msg.subject.to_string(),
            revision,
            pending,
            headers: msg.headers,
            payload: msg.payload,
        }))
    }
}

impl Drop for SubjectWatch {
    fn drop(&mut self) {
        // Best effort: what a lost or refused delete leaves, the server
        // removes after `WATCH_IDLE`; a consumer async-nats created again
        // under another name after a gap, after its 30 s.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (stream, consumer) = (self.stream.clone(), std::mem::take(&mut self.consumer));
            rt.spawn(async move {
                let _ = stream.delete_consumer(&consumer).await;
            });
        }
    }
}

/// A watch of lock keys ([`LockStore::watch_from`], [`LockStore::watch_under`]),
/// its messages read as lock records.
pub struct KeyWatch {
    pub(super) watch: SubjectWatch,
    /// Length of `$KV.<bucket>.`, cut off subjects to give keys.
    pub(super) prefix_len: usize,
}

/// One change seen by a [`KeyWatch`].
#[derive(Debug)]
pub struct Change {
    /// The KV key changed.
    pub key: String,
    pub revision: u64,
    pub current: Result<Current, RecordError>,
    /// How many changes the server had queued behind this one when it was
    /// sent.
    pub pending: u64,
}

impl KeyWatch {
    /// The key's next change, `(revision, what it says)`; `None` once the
    /// watch ended, an error when it broke (a new one resumes).
    pub async fn next(
        &mut self,
    ) -> Option<Result<(u64, Result<Current, RecordError>), async_nats::Error>> {
        Some(self.change().await?.map(|c| (c.revision, c.current)))
    }

    /// The next change, with its key: for a watch of several keys
    /// ([`LockStore::watch_under`]).
    pub async fn change(&mut self) -> Option<Result<Change, async_nats::Error>> {
        Some(self.watch.next().await?.map(|m| Change {
            key: m.subject.get(self.prefix_len..).unwrap_or("").to_owned(),
            current: current_from_message(m.revision, m.headers.as_ref(), &m.payload),
            revision: m.revision,
            pending: m.pending,
        }))
    }
}
