//! The runtime of one coordinator: reads the request stream and the
//! bucket, feeds the engine, carries out its actions, heartbeats.
//!
//! One task runs the loop; CAS writes and reads run concurrently in a
//! `JoinSet` the loop owns, so nothing outlives [`Coordinator::shutdown`].

use crate::admin::{self, LocksQuery, LocksView, MembersView};
use crate::config::{CoordinatorConfig, LiveSettings};
use crate::engine::{self, Applied, Engine, Stamp, Write, WriteKind, WriteResult};
use crate::health::Health;
use crate::hearing;
use crate::http::Endpoint;
use crate::metrics::Metrics;
use crate::request_age::RequestAge;
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, consumer, stream::Stream as JsStream};
use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use jetlock::bucket::{self, BucketSpec, DEFAULT_MARKER_TTL};
use jetlock::clock::unix_ms;
use jetlock::events::{Event, EventKind};
use jetlock::name::LockName;
use jetlock::protocol::{
    self, ConnId, CoordinatorBeat, DisconnectAdvisory, DoneNote, HeardQuery, HeardReply, Heartbeat,
    VERSION,
};
use jetlock::store::{self, CasError, LockStore, WriteId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, info, warn};

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Bucket(#[from] bucket::BucketError),
    #[error("coordinator could not {what}: {source}")]
    Nats {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

fn nats_err<E: Into<async_nats::Error>>(what: &'static str) -> impl FnOnce(E) -> CoordinatorError {
    move |e| CoordinatorError::Nats {
        what,
        source: e.into(),
    }
}

/// A running coordinator. Dropping it stops the loop; [`shutdown`]
/// (`Coordinator::shutdown`) also tells the others it is leaving, so they
/// take its keys over at once.
pub struct Coordinator {
    id: String,
    endpoint: Option<Endpoint>,
    health: Arc<Health>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Coordinator {
    /// Starts a coordinator on `nats`; returns once it has read the request
    /// stream and the bucket and serves. Its HTTP endpoint (metrics, health)
    /// is bound at `config.metrics_addr`, if set. A connection of its own
    /// may be made with `no_echo` (as `jetlock serve` does): it then does not
    /// hear its own heartbeats and notes, which it skips anyway.
    pub async fn start(
        nats: async_nats::Client,
        config: CoordinatorConfig,
    ) -> Result<Coordinator, CoordinatorError> {
        let endpoint = match &config.metrics_addr {
            Some(addr) => Some(
                Endpoint::bind(addr)
                    .await
                    .map_err(|e| CoordinatorError::Nats {
                        what: "serve metrics",
                        source: format!("{addr}: {e}").into(),
                    })?,
            ),
            None => None,
        };
        Self::start_on(nats, config, endpoint).await
    }

    /// [`Coordinator::start`] with an endpoint bound before (it answers
    /// `/readyz` with 503 until this returns); `config.metrics_addr` is
    /// not read.
    pub async fn start_on(
        nats: async_nats::Client,
        config: CoordinatorConfig,
        endpoint: Option<Endpoint>,
    ) -> Result<Coordinator, CoordinatorError> {
        let health = endpoint
            .as_ref()
            .map_or_else(Arc::default, Endpoint::health);
        health.connection(&nats);
        let metrics = endpoint
            .as_ref()
            .map_or_else(|| Arc::new(Metrics::new()), Endpoint::metrics);
        metrics.connection(&nats);
        let js = jetstream::new(nats.clone());
        let mut spec = BucketSpec::new(&config.bucket, config.replicas);
        spec.marker_ttl = DEFAULT_MARKER_TTL;
        spec.buckets = config.buckets;
        spec.partitions = config.partitions;
        let kv = bucket::ensure_bucket(&js, &spec).await?;
        let store = LockStore::new(js.clone(), kv)
            .await
            .map_err(nats_err("open the locks bucket"))?;
        let requests = bucket::ensure_request_stream(
            &js,
            config.replicas,
            config.request_stream,
            store.partitions(),
        )
        .await?;
        bucket::ensure_event_stream(
            &js,
            config.replicas,
            config.event_max_age,
            config.event_max_bytes,
        )
        .await?;
        let settings = bucket::ensure_config_bucket(&js, config.replicas).await?;
        bucket::ensure_proof_stream(&js, config.replicas).await?;

        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut runtime =
            Runtime::new(nats, store, config.clone(), metrics, health.clone()).await?;
        let feeds = runtime.feeds(requests, settings).await?;
        let task = tokio::spawn(runtime.run(feeds, stop.clone(), ready_tx));
        // The loop reports readiness once it caught up with both streams.
        if ready_rx.await.is_err() {
            return Err(CoordinatorError::Nats {
                what: "catch up with the request stream",
                source: "the coordinator loop stopped".into(),
            });
        }
        info!(coordinator = %config.id, "coordinator serving");
        Ok(Coordinator {
            id: config.id,
            endpoint,
            health,
            stop,
            task: Some(task),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) is
    /// served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(Endpoint::addr)
    }

    /// Stops serving: announces the departure (the others take over at
    /// once) and waits for the loop to end.
    pub async fn shutdown(mut self) {
        self.health.set_leaving();
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Resolves when the loop stops (it only stops when told to).
    pub async fn stopped(&mut self) {
        if let Some(task) = &mut self.task {
            let _ = task.await;
            self.task = None;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Runtime {
    nats: async_nats::Client,
    // Shared with every write and read in flight: a `LockStore` carries
    // the bucket stream's whole info, dozens of allocations to clone.
    store: Arc<LockStore>,
    config: CoordinatorConfig,
    engine: Engine,
    conn: Option<ConnId>,
    writes: JoinSet<(LockName, WriteResult)>,
    reads: JoinSet<(LockName, Option<(store::Current, Stamp)>)>,
    deletes: JoinSet<()>,
    /// The proof beats in flight: each one's send time and when the
    /// quorum's acknowledgement came, once it did.
    proofs: JoinSet<Option<(Instant, Instant)>>,
    /// When the last proof beat was sent.
    last_proof: Option<Instant>,
    /// The request stream's creation time (unix ms): request sequences
    /// named in `Jetlock-Applied` count only in the stream they came from.
    request_epoch: u64,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The live settings of the file and flags, and the config bucket's
    /// entries laid over them.
    base_settings: LiveSettings,
    overlay: BTreeMap<String, Vec<u8>>,
    /// Events of the runtime itself (config changes), published with the
    /// engine's.
    pending_events: Vec<Event>,
    /// (session, request id) of the final answers sent since the last
    /// [`DoneNote`].
    done: Vec<(String, String)>,
}

/// Header naming the coordinator that sent an answer.
const ANSWERED_BY: &str = "Jetlock-Coordinator";
/// Most requests one [`DoneNote`] lists (about 30 KB); a full list goes out
/// before the tick.
const MAX_DONE_PER_NOTE: usize = 512;
/// Most requests read from one note: only coordinators may publish them,
/// but a note is network input all the same.
const MAX_DONE_READ: usize = 4 * MAX_DONE_PER_NOTE;
/// Most request deletions in flight; beyond it the loop waits for one.
const MAX_DELETES_IN_FLIGHT: usize = 256;
/// The engine's clock resolution.
const TICK: Duration = Duration::from_millis(20);

impl Runtime {
    async fn new(
        nats: async_nats::Client,
        store: LockStore,
        config: CoordinatorConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, CoordinatorError> {
        let info = nats.server_info();
        let conn = (!info.server_id.is_empty()).then(|| ConnId {
            server_id: info.server_id.clone(),
            cid: info.client_id,
        });
        let mut engine = Engine::new(config.id.clone(), config.engine.clone());
        engine.set_partitions(store.partitions());
        Ok(Runtime {
            engine,
            nats,
            store: Arc::new(store),
            conn,
            writes: JoinSet::new(),
            reads: JoinSet::new(),
            deletes: JoinSet::new(),
            proofs: JoinSet::new(),
            last_proof: None,
            request_epoch: 0,
            metrics,
            health,
            pending_events: Vec::new(),
            done: Vec::new(),
            base_settings: LiveSettings::of(&config),
            overlay: BTreeMap::new(),
            config,
        })
    }

    async fn run(
        mut self,
        mut feeds: Feeds,
        stop: CancellationToken,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_beat = Instant::now();
        let mut next_gauges = Instant::now();
        let mut next_proof = Instant::now();
        let mut withheld_counted = 0;
        let kv_prefixes: Vec<String> = self
            .store
            .kvs()
            .map(|kv| format!("$KV.{}.", kv.name))
            .collect();
        // Listen for the other coordinators' heartbeats for two of their
        // intervals before acting: a coordinator that acted at once would
        // believe it owns every key and race the others.
        let listen_until = Instant::now() + self.config.heartbeat_interval * 2;
        // The partitions read up to the message just read, when that one
        // was the last pending.
        let mut caught_up: Option<u64> = None;
        loop {
            if ready.is_some()
                && feeds.requests_caught_up
                && feeds.bucket_caught_up
                && feeds.settings_caught_up
                && Instant::now() >= listen_until
            {
                self.engine.set_ready(Instant::now());
                self.health.set_ready();
                self.beat(false).await;
                let _ = ready.take().map(|tx| tx.send(()));
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                // Heartbeats first: a burst of requests must not keep their
                // answers past a client's deadline, which would end its
                // session (`LostReason::Unconfirmed`).
                Some(msg) = feeds.heartbeats.next() => self.heartbeat(msg).await,
                // Proof beats next: the answers of heartbeats wait for them,
                // and a stream of finishing writes must not hold them back.
                Some(done) = self.proofs.join_next(), if !self.proofs.is_empty() => {
                    match done {
                        Ok(Some((sent, acked))) => {
                            let late = acked.saturating_duration_since(sent) > hearing::BOUNDS[0].ack;
                            self.metrics.proof_beat(if late { "late" } else { "in_time" });
                            self.engine.proof_acked(sent, acked, Instant::now());
                        }
                        _ => self.metrics.proof_beat("failed"),
                    }
                }
                Some(done) = self.writes.join_next(), if !self.writes.is_empty() => {
                    if let Ok((name, result)) = done {
                        self.engine.written(&name, result, Instant::now());
                    }
                }
                Some(done) = self.reads.join_next(), if !self.reads.is_empty() => {
                    if let Ok((name, current)) = done {
                        self.engine.read_done(&name, current, Instant::now());
                    }
                }
                Some(_) = self.deletes.join_next(), if !self.deletes.is_empty() => {}
                Some(done) = feeds.partition_work.opening.join_next(),
                    if !feeds.partition_work.opening.is_empty() => {
                    self.partitions_opened(&mut feeds, done).await;
                }
                Some(done) = feeds.partition_work.checking.join_next(),
                    if !feeds.partition_work.checking.is_empty() => {
                    self.caught_up_checked(&mut feeds, done);
                }
                // The clock before the feeds: under a sustained burst of
                // requests, proof beats (which heartbeat answers wait for)
                // and timeouts must still come every tick.
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= next_proof {
                        next_proof = now + hearing::PROOF_INTERVAL;
                        self.prove();
                    }
                    self.engine.tick(now);
                    self.send_done().await;
                    self.partitions_tick(&mut feeds, now);
                    if now >= next_gauges {
                        next_gauges = now + Duration::from_secs(1);
                        let withheld = self.engine.confirmations_withheld();
                        if withheld > withheld_counted {
                            warn!(withheld = withheld - withheld_counted,
                                "heartbeat answers withheld: no proof beat was stored in time after them (their sessions' deadlines run on)");
                        }
                        self.metrics.confirmations_withheld(withheld - withheld_counted);
                        withheld_counted = withheld;
                        let (depths, held) = self.engine.served_load();
                        self.metrics.gauges(depths, held, self.engine.live_sessions(),
                            self.engine.ring().len());
                        let ring = self.engine.ring();
                        let owned = if ring.partitioned() { ring.owned_partitions().len() } else { 0 };
                        self.metrics.partitions(owned, self.engine.partitions_catching_up());
                    }
                    if ready.is_none() && now >= next_beat {
                        next_beat = now + self.config.heartbeat_interval;
                        self.beat(false).await;
                    }
                }
                // Before the bucket and the requests: a mirror forgets
                // what the others finished before it reads more.
                Some(msg) = feeds.done_notes.next() => self.done_note(&msg.payload),
                // Before the bucket and the request stream: a release here
                // is the next owner change of a contended lock.
                Some(msg) = feeds.unstored_releases.next() => {
                    let _span = debug_span!("unstored release", subject = msg.subject.as_str(),
                        lock = tracing::field::Empty).entered();
                    self.engine.unstored_release(msg.subject.as_str(), &msg.payload, Instant::now());
                }
                Some(msg) = feeds.partitioned_unstored.next() => {
                    let _span = debug_span!("unstored release", subject = msg.subject.as_str(),
                        lock = tracing::field::Empty).entered();
                    self.engine.unstored_release(msg.subject.as_str(), &msg.payload, Instant::now());
                }
                Some((index, msg)) = feeds.bucket.next() => match msg {
                    Ok(msg) => {
                        if let Ok(info) = msg.info() {
                            if info.pending == 0 && feeds.buckets_behind[index] {
                                feeds.buckets_behind[index] = false;
                                feeds.bucket_caught_up = !feeds.buckets_behind.contains(&true);
                            }
                            let seq = info.stream_sequence;
                            self.bucket_message(&kv_prefixes[index], seq, &msg);
                        }
                    }
                    Err(e) => warn!(error = %e, "bucket watch interrupted; it resumes"),
                },
                Some(msg) = feeds.requests.next() => match msg {
                    Ok(msg) => {
                        if let Some(generation) = self.request_message(&mut feeds, &msg) {
                            caught_up = Some(generation);
                        }
                    }
                    Err(e) => warn!(error = %e, "request stream interrupted; it resumes"),
                },
                Some(entry) = feeds.settings.next() => match entry {
                    Ok(entry) => {
                        if entry.delta == 0 {
                            feeds.settings_caught_up = true;
                        }
                        self.setting(entry, ready.is_none());
                    }
                    Err(e) => warn!(error = %e, "config bucket watch interrupted; it resumes"),
                },
                Some(req) = feeds.admin_locks.next() => self.admin_locks(req).await,
                Some(req) = feeds.admin_members.next() => self.admin_members(req).await,
                Some(req) = feeds.admin_settings.next() => self.admin_settings(req).await,
                Some(msg) = feeds.coordinators.next() => {
                    if let Ok(beat) = serde_json::from_slice::<CoordinatorBeat>(&msg.payload) {
                        if beat.v == VERSION {
                            self.engine.coordinator_beat(beat, Instant::now());
                        }
                    }
                }
                Some(msg) = feeds.heard_queries.next() => self.heard_query(msg).await,
                Some(msg) = feeds.heard_replies.next() => {
                    if let Ok(r) = serde_json::from_slice::<HeardReply>(&msg.payload) {
                        if r.v == VERSION {
                            self.engine.heard_reply(&r.by, r.round, &r.ages_ms, Instant::now());
                        }
                    }
                }
                Some(msg) = feeds.disconnects.next() => {
                    if let Ok(adv) = serde_json::from_slice::<DisconnectAdvisory>(&msg.payload) {
                        self.engine.disconnected(&adv.conn(), &adv.reason, Instant::now());
                    }
                }
            }
            if let Some(generation) = caught_up.take() {
                self.engine.partitions_caught_up(generation, Instant::now());
            }
            self.carry_out().await;
            if let Some((owned, generation)) = self.engine.take_partition_change() {
                self.read_partitions(&mut feeds, owned, generation);
            }
        }
        self.health.set_leaving();
        // Leaving: the others take our keys over now rather than after the
        // coordinator timeout. Writes in flight finish first.
        while self.writes.join_next().await.is_some() {}
        self.send_done().await;
        self.beat(true).await;
        let _ = self.nats.flush().await;
        info!(coordinator = %self.config.id, "coordinator stopped");
    }

    /// Tells the other coordinators which requests this one finished since
    /// its last note.
    async fn send_done(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let note = DoneNote {
            v: VERSION,
            from: self.config.id.clone(),
            done: std::mem::take(&mut self.done),
        };
        let body = serde_json::to_vec(&note).expect("notes serialize");
        let subject = protocol::done_subject(&self.config.id);
        let _ = self.nats.publish(subject, body.into()).await;
    }

    /// Another coordinator's [`DoneNote`]: forget what it finished.
    fn done_note(&mut self, payload: &[u8]) {
        let note = match serde_json::from_slice::<DoneNote>(payload) {
            Ok(note) if note.v == VERSION && note.from != self.config.id => note,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "unreadable done note; ignored");
                return;
            }
        };
        let now = Instant::now();
        for (session, re) in note.done.iter().take(MAX_DONE_READ) {
            self.engine.answered(session, re, now);
        }
    }

    /// A message of the request stream: fed to the engine unless the
    /// consumer it replaced delivered it already. Returns the partitions
    /// being caught up on when this was the last message pending.
    fn request_message(&mut self, feeds: &mut Feeds, msg: &jetstream::Message) -> Option<u64> {
        let info = msg.info().ok()?;
        let seq = info.stream_sequence;
        feeds.last_request_seq = seq;
        feeds.last_request_at = Instant::now();
        if !feeds.reading.fed(msg.subject.as_str(), seq) {
            let age = feeds.request_age.of(
                seq,
                info.published.unix_timestamp_nanos(),
                Instant::now(),
                std::time::SystemTime::now(),
            );
            let _span = debug_span!(
                "request",
                seq,
                subject = msg.subject.as_str(),
                lock = tracing::field::Empty
            )
            .entered();
            let dropped = self.engine.stats.dropped;
            let msg_id = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str());
            let subject = msg.subject.as_str();
            let now = Instant::now();
            self.engine
                .request_with_msg_id(seq, subject, msg_id, &msg.payload, age, now);
            if self.engine.stats.dropped > dropped {
                self.metrics.dropped();
            }
        }
        if info.pending > 0 {
            return None;
        }
        feeds.requests_caught_up = true;
        feeds.catching_up.take()
    }

    fn bucket_message(&mut self, prefix: &str, seq: u64, msg: &jetstream::Message) {
        let Some(key) = msg.subject.as_str().strip_prefix(prefix) else {
            return;
        };
        let Ok(name) = LockName::from_key(key) else {
            warn!(key, "bucket holds a key jetlock did not write; ignored");
            return;
        };
        // The server's marker for a lease that ran out.
        let expired = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Marker-Reason"))
            .is_some_and(|r| r.as_str() == "MaxAge");
        let stamp = stamp_of(msg.headers.as_ref(), self.request_epoch);
        match store::current_from_message(seq, msg.headers.as_ref(), &msg.payload) {
            Ok(current) => {
                self.engine
                    .observed_change(&name, current, expired, stamp, Instant::now())
            }
            Err(e) => warn!(key, error = %e, "unreadable lock record; ignored"),
        }
    }

    async fn carry_out(&mut self) {
        for event in std::mem::take(&mut self.pending_events) {
            self.publish_event(event).await;
        }
        for action in self.engine.take_actions() {
            match action {
                engine::Action::Answer { session, answer } => {
                    debug!(session, ?answer, "answer");
                    self.metrics.answer(&answer);
                    let done = answer
                        .is_final()
                        .then(|| answer.re().map(str::to_owned))
                        .flatten();
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(ANSWERED_BY, self.config.id.as_str());
                    let _ = self
                        .nats
                        .publish_with_headers(
                            protocol::answer_subject(&session),
                            headers,
                            answer.to_json().into(),
                        )
                        .await;
                    if let Some(re) = done {
                        self.done.push((session, re));
                        if self.done.len() >= MAX_DONE_PER_NOTE {
                            self.send_done().await;
                        }
                    }
                }
                engine::Action::Event(event) => self.publish_event(*event).await,
                engine::Action::Prove => self.prove(),
                engine::Action::AskHeard { round, sessions } => {
                    let query = HeardQuery {
                        v: VERSION,
                        from: self.config.id.clone(),
                        round,
                        sessions,
                    };
                    let body = serde_json::to_vec(&query).expect("queries serialize");
                    let subject = protocol::heard_query_subject(&self.config.id);
                    let _ = self.nats.publish(subject, body.into()).await;
                }
                engine::Action::HeartbeatAck { reply, ack } => {
                    if ack.refused.is_some() {
                        self.metrics.session_refused();
                    }
                    let body = serde_json::to_vec(&ack).expect("acks serialize");
                    let _ = self.nats.publish(reply, body.into()).await;
                }
                engine::Action::Write(write) => {
                    debug!(lock = %write.name, expected = write.expected, kind = ?write.kind,
                        id = write.id, "write");
                    let applied = applied_header(self.request_epoch, write.applied);
                    let store = self.store.clone();
                    self.writes.spawn(async move {
                        let result = run_write(&store, &write, applied.as_deref()).await;
                        (write.name, result)
                    });
                }
                engine::Action::Read { name } => {
                    let store = self.store.clone();
                    let epoch = self.request_epoch;
                    self.reads.spawn(async move {
                        let read = match store.read_with_headers(&name).await {
                            Ok((current, headers)) => {
                                Some((current, stamp_of(headers.as_ref(), epoch)))
                            }
                            Err(e) => {
                                debug!(lock = %name, error = %e, "read failed");
                                None
                            }
                        };
                        (name, read)
                    });
                }
                engine::Action::Delete { seq } => {
                    while self.deletes.len() >= MAX_DELETES_IN_FLIGHT {
                        self.deletes.join_next().await;
                    }
                    // `no_erase`: the default delete overwrites the message
                    // on disk first, several times slower; requests hold
                    // nothing secret.
                    let nats = self.nats.clone();
                    let subject = format!("$JS.API.STREAM.MSG.DELETE.{}", protocol::REQUEST_STREAM);
                    let body = format!(r#"{{"seq":{seq},"no_erase":true}}"#);
                    self.deletes.spawn(async move {
                        if let Err(e) = nats.request(subject, body.into()).await {
                            debug!(seq, error = %e, "could not delete a finished request");
                        }
                    });
                }
            }
        }
    }
}

mod beats;
mod feeds;
mod partitions;
mod services;
mod writes;
use feeds::Feeds;
use writes::{applied_header, run_write, stamp_of};
