//! What the loop reads: the request stream, the bucket, heartbeats,
//! advisories, settings and the admin endpoints, subscribed at start.

use super::partitions::{PartitionWork, Reading};
use super::*;

/// One bucket's watch, its messages with the bucket's index.
pub(super) type BucketFeed = futures::stream::BoxStream<
    'static,
    (
        usize,
        Result<jetstream::Message, consumer::push::OrderedError>,
    ),
>;

/// Everything the loop reads.
pub(super) struct Feeds {
    pub(super) requests: consumer::push::Ordered,
    pub(super) requests_caught_up: bool,
    /// The request stream, to read other partitions from.
    pub(super) request_stream: JsStream,
    /// What was read of each partition.
    pub(super) reading: Reading,
    /// The partitions the engine waits to hear read (`Engine::
    /// partitions_caught_up`): read once the current consumer has
    /// delivered what was pending.
    pub(super) catching_up: Option<u64>,
    /// The consumers and subscriptions of the partitions to read being
    /// made, and the server asked whether they are read: off the loop.
    pub(super) partition_work: PartitionWork,
    /// The name the request consumer was made under, and the last request
    /// it delivered (fed or skipped) and when: see [`Runtime::partitions_tick`].
    pub(super) request_consumer: String,
    pub(super) last_request_seq: u64,
    pub(super) last_request_at: Instant,
    /// Judges how long ago each request was stored.
    pub(super) request_age: RequestAge,
    /// Every bucket's changes (`jetlock::shards`), each with its bucket's
    /// index.
    pub(super) bucket: futures::stream::SelectAll<BucketFeed>,
    /// The buckets whose watch has not yet caught up.
    pub(super) buckets_behind: Vec<bool>,
    pub(super) bucket_caught_up: bool,
    pub(super) heartbeats: async_nats::Subscriber,
    pub(super) coordinators: async_nats::Subscriber,
    /// Other coordinators' questions before a death, and the answers to
    /// ours (`engine/deaths.rs`).
    pub(super) heard_queries: async_nats::Subscriber,
    pub(super) heard_replies: async_nats::Subscriber,
    pub(super) disconnects: async_nats::Subscriber,
    /// The other coordinators' lists of the requests they finished.
    pub(super) done_notes: async_nats::Subscriber,
    /// Releases sent on core NATS (`jetlock.now.release.>`).
    pub(super) unstored_releases: async_nats::Subscriber,
    /// Those sent to the request partitions this coordinator reads
    /// (`jetlock.now.<p>.release.>`; all of them until it is first told).
    pub(super) partitioned_unstored: futures::stream::SelectAll<async_nats::Subscriber>,
    pub(super) settings: kv::Watch,
    pub(super) settings_caught_up: bool,
    /// Keeps the NATS service registered (`$SRV.*`).
    pub(super) _service: service::Service,
    pub(super) admin_locks: service::endpoint::Endpoint,
    pub(super) admin_members: service::endpoint::Endpoint,
    pub(super) admin_settings: service::endpoint::Endpoint,
}

impl Runtime {
    pub(super) async fn feeds(
        &mut self,
        mut requests: JsStream,
        settings: kv::Store,
    ) -> Result<Feeds, CoordinatorError> {
        let subscribe = |subject: &str| {
            let (nats, subject) = (self.nats.clone(), subject.to_owned());
            async move {
                nats.subscribe(subject)
                    .await
                    .map_err(nats_err("subscribe to heartbeats"))
            }
        };
        // Subscribe before reading the streams so no heartbeat is missed.
        let heartbeats = subscribe(protocol::SESSION_HEARTBEATS).await?;
        let coordinators = subscribe(protocol::COORDINATOR_HEARTBEATS).await?;
        let heard_queries = subscribe(protocol::HEARD_QUERIES).await?;
        let heard_replies = subscribe(&protocol::heard_reply_subject(&self.config.id)).await?;
        let disconnects = subscribe(protocol::DISCONNECT_EVENTS).await?;
        // What the others finished: mirrors forget it.
        let done_notes = subscribe(protocol::DONE_NOTES).await?;
        let unstored_releases = subscribe(protocol::UNSTORED_RELEASES).await?;
        let mut partitioned_unstored = futures::stream::SelectAll::new();
        partitioned_unstored.push(subscribe(protocol::PARTITIONED_UNSTORED_RELEASES).await?);

        let asked = Instant::now();
        let request_info = requests
            .info()
            .await
            .map_err(nats_err("read the request stream's state"))?;
        let requests_empty = request_info.state.messages == 0;
        self.request_epoch = (request_info.created.unix_timestamp_nanos() / 1_000_000) as u64;
        let request_age = RequestAge::new(asked, request_info.state.last_sequence);
        let request_stream = requests.clone();
        let request_feed = requests
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.nats.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(nats_err("read the request stream"))?
            .messages()
            .await
            .map_err(nats_err("read the request stream"))?;
        let mut bucket = futures::stream::SelectAll::new();
        let mut buckets_behind = Vec::new();
        for (index, (stream, kv)) in self.store.streams().zip(self.store.kvs()).enumerate() {
            let mut stream = stream.clone();
            let empty = stream
                .info()
                .await
                .map_err(nats_err("read the bucket's state"))?
                .state
                .messages
                == 0;
            buckets_behind.push(!empty);
            let feed = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: self.nats.new_inbox(),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    filter_subject: format!("$KV.{}.>", kv.name),
                    ..Default::default()
                })
                .await
                .map_err(nats_err("watch the bucket"))?
                .messages()
                .await
                .map_err(nats_err("watch the bucket"))?;
            bucket.push(feed.map(move |msg| (index, msg)).boxed());
        }
        let settings_empty = settings
            .status()
            .await
            .map_err(nats_err("read the config bucket"))?
            .values()
            == 0;
        let settings = settings
            .watch_with_history(">")
            .await
            .map_err(nats_err("watch the config bucket"))?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("coordinator".to_owned(), self.config.id.clone());
        metadata.insert("bucket".to_owned(), self.config.bucket.clone());
        metadata.insert(
            "protocol_revision".to_owned(),
            protocol::REVISION.to_string(),
        );
        let service = self
            .nats
            .service_builder()
            .description("jetlock coordinator: FIFO lock queues, sessions, failover")
            .metadata(metadata)
            .start(admin::SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(nats_err("register the NATS service"))?;
        let endpoint = |name: &'static str, subject: &'static str| {
            let builder = service.endpoint_builder().name(name);
            async move {
                builder
                    .add(subject)
                    .await
                    .map_err(nats_err("add a service endpoint"))
            }
        };
        let admin_locks = endpoint("locks", admin::LOCKS).await?;
        let admin_members = endpoint("members", admin::MEMBERS).await?;
        // A queue group of its own: every coordinator answers, so a caller
        // sees coordinators whose settings differ.
        let admin_settings = service
            .endpoint_builder()
            .name("settings")
            .queue_group(format!("jetlock.settings.{}", self.config.id))
            .add(admin::SETTINGS)
            .await
            .map_err(nats_err("add a service endpoint"))?;
        Ok(Feeds {
            settings,
            settings_caught_up: settings_empty,
            _service: service,
            admin_locks,
            admin_members,
            admin_settings,
            requests: request_feed,
            requests_caught_up: requests_empty,
            request_stream,
            reading: Reading::new(self.store.partitions()),
            catching_up: None,
            partition_work: PartitionWork::default(),
            request_consumer: String::new(),
            last_request_seq: 0,
            last_request_at: Instant::now(),
            request_age,
            bucket,
            bucket_caught_up: !buckets_behind.contains(&true),
            buckets_behind,
            heartbeats,
            coordinators,
            heard_queries,
            heard_replies,
            disconnects,
            done_notes,
            unstored_releases,
            partitioned_unstored,
        })
    }
}
