//! The coordinator (`jetlock serve`): FIFO queues, sessions and failover
//! on top of the lock core.
//!
//! - `engine.rs` — the state machine: queues, holder operations, session
//!   deaths, revocations; decides writes and answers, does no I/O;
//! - `membership.rs` — live coordinators (the rendezvous-hash ring that
//!   splits keys) and live sessions;
//! - `mod.rs` — the runtime: reads the request stream and the bucket, feeds
//!   the engine, carries out its actions, heartbeats.
//!
//! One task runs the loop; CAS writes and reads run concurrently in a
//! `JoinSet` the loop owns, so nothing outlives [`Coordinator::shutdown`].

mod engine;
mod membership;

pub use engine::{Action, Engine, EngineConfig, Stats, Write, WriteKind, WriteResult};
pub use membership::Ring;

use crate::bucket::{self, BucketSpec, DEFAULT_BUCKET, DEFAULT_MARKER_TTL};
use crate::name::LockName;
use crate::protocol::{self, ConnId, CoordinatorBeat, DisconnectAdvisory, Heartbeat, VERSION};
use crate::store::{self, CasError, LockStore, WriteId};
use async_nats::jetstream::{self, consumer, stream::Stream as JsStream};
use futures::StreamExt;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Unique id of this coordinator (default: a random one).
    pub id: String,
    pub bucket: String,
    /// Create the bucket and the request stream with this many replicas
    /// when they do not exist.
    pub replicas: usize,
    /// How often this coordinator heartbeats.
    pub heartbeat_interval: Duration,
    pub engine: EngineConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            id: format!("c-{}", nuid::next()),
            bucket: DEFAULT_BUCKET.to_owned(),
            replicas: 1,
            heartbeat_interval: Duration::from_millis(250),
            engine: EngineConfig::default(),
        }
    }
}

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
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Coordinator {
    /// Starts a coordinator on `nats`; returns once it has read the request
    /// stream and the bucket and serves.
    pub async fn start(
        nats: async_nats::Client,
        config: CoordinatorConfig,
    ) -> Result<Coordinator, CoordinatorError> {
        let js = jetstream::new(nats.clone());
        let mut spec = BucketSpec::new(&config.bucket, config.replicas);
        spec.marker_ttl = DEFAULT_MARKER_TTL;
        let kv = bucket::ensure_bucket(&js, &spec).await?;
        let store = LockStore::new(js.clone(), kv)
            .await
            .map_err(nats_err("open the locks bucket"))?;
        let requests = bucket::ensure_request_stream(&js, config.replicas).await?;
        let kv_stream = js
            .get_stream(store.stream_name())
            .await
            .map_err(nats_err("open the bucket's stream"))?;

        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut runtime = Runtime::new(nats, store, config.clone()).await?;
        let feeds = runtime.feeds(requests, kv_stream).await?;
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
            stop,
            task: Some(task),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops serving: announces the departure (the others take over at
    /// once) and waits for the loop to end.
    pub async fn shutdown(mut self) {
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
    store: LockStore,
    config: CoordinatorConfig,
    engine: Engine,
    conn: Option<ConnId>,
    writes: JoinSet<(LockName, WriteResult)>,
    reads: JoinSet<(LockName, Option<store::Current>)>,
    deletes: JoinSet<()>,
    write_seq: u64,
}

/// Everything the loop reads.
struct Feeds {
    requests: consumer::push::Ordered,
    requests_caught_up: bool,
    bucket: consumer::push::Ordered,
    bucket_caught_up: bool,
    heartbeats: async_nats::Subscriber,
    coordinators: async_nats::Subscriber,
    disconnects: async_nats::Subscriber,
    answers: async_nats::Subscriber,
}

/// Header naming the coordinator that sent an answer.
const ANSWERED_BY: &str = "Jetlock-Coordinator";
/// Most request deletions in flight; beyond it the loop waits for one.
const MAX_DELETES_IN_FLIGHT: usize = 256;
/// The engine's clock resolution.
const TICK: Duration = Duration::from_millis(20);

impl Runtime {
    async fn new(
        nats: async_nats::Client,
        store: LockStore,
        config: CoordinatorConfig,
    ) -> Result<Self, CoordinatorError> {
        let info = nats.server_info();
        let conn = (!info.server_id.is_empty()).then(|| ConnId {
            server_id: info.server_id.clone(),
            cid: info.client_id,
        });
        Ok(Runtime {
            engine: Engine::new(config.id.clone(), config.engine.clone()),
            nats,
            store,
            config,
            conn,
            writes: JoinSet::new(),
            reads: JoinSet::new(),
            deletes: JoinSet::new(),
            write_seq: 0,
        })
    }

    async fn feeds(
        &mut self,
        mut requests: JsStream,
        mut kv_stream: JsStream,
    ) -> Result<Feeds, CoordinatorError> {
        let subscribe = |subject: &'static str| {
            let nats = self.nats.clone();
            async move {
                nats.subscribe(subject)
                    .await
                    .map_err(nats_err("subscribe to heartbeats"))
            }
        };
        // Subscribe before reading the streams so no heartbeat is missed.
        let heartbeats = subscribe(protocol::SESSION_HEARTBEATS).await?;
        let coordinators = subscribe(protocol::COORDINATOR_HEARTBEATS).await?;
        let disconnects = subscribe(protocol::DISCONNECT_EVENTS).await?;
        // Every final answer, whoever sent it: mirrors forget what is done.
        let answers = subscribe("jetlock.to.>").await?;

        let requests_empty = requests
            .info()
            .await
            .map_err(nats_err("read the request stream's state"))?
            .state
            .messages
            == 0;
        let bucket_empty = kv_stream
            .info()
            .await
            .map_err(nats_err("read the bucket's state"))?
            .state
            .messages
            == 0;
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
        let bucket_feed = kv_stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.nats.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: format!("$KV.{}.>", self.store.bucket()),
                ..Default::default()
            })
            .await
            .map_err(nats_err("watch the bucket"))?
            .messages()
            .await
            .map_err(nats_err("watch the bucket"))?;
        Ok(Feeds {
            requests: request_feed,
            requests_caught_up: requests_empty,
            bucket: bucket_feed,
            bucket_caught_up: bucket_empty,
            heartbeats,
            coordinators,
            disconnects,
            answers,
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
        let kv_prefix = format!("$KV.{}.", self.store.bucket());
        // Listen for the other coordinators' heartbeats for two of their
        // intervals before acting: a coordinator that acted at once would
        // believe it owns every key and race the others.
        let listen_until = Instant::now() + self.config.heartbeat_interval * 2;
        loop {
            if ready.is_some()
                && feeds.requests_caught_up
                && feeds.bucket_caught_up
                && Instant::now() >= listen_until
            {
                self.engine.set_ready(Instant::now());
                self.beat(false).await;
                let _ = ready.take().map(|tx| tx.send(()));
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
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
                Some(msg) = feeds.bucket.next() => match msg {
                    Ok(msg) => {
                        if let Ok(info) = msg.info() {
                            if info.pending == 0 {
                                feeds.bucket_caught_up = true;
                            }
                            let seq = info.stream_sequence;
                            self.bucket_message(&kv_prefix, seq, &msg);
                        }
                    }
                    Err(e) => warn!(error = %e, "bucket watch interrupted; it resumes"),
                },
                Some(msg) = feeds.requests.next() => match msg {
                    Ok(msg) => {
                        if let Ok(info) = msg.info() {
                            if info.pending == 0 {
                                feeds.requests_caught_up = true;
                            }
                            let age_ns = time_now_ns() - info.published.unix_timestamp_nanos();
                            let age = Duration::from_nanos(age_ns.clamp(0, u64::MAX as i128) as u64);
                            self.engine.request(
                                info.stream_sequence,
                                msg.subject.as_str(),
                                &msg.payload,
                                age,
                                Instant::now(),
                            );
                        }
                    }
                    Err(e) => warn!(error = %e, "request stream interrupted; it resumes"),
                },
                Some(msg) = feeds.heartbeats.next() => self.heartbeat(msg).await,
                Some(msg) = feeds.coordinators.next() => {
                    if let Ok(beat) = serde_json::from_slice::<CoordinatorBeat>(&msg.payload) {
                        if beat.v == VERSION {
                            self.engine.coordinator_beat(beat, Instant::now());
                        }
                    }
                }
                Some(msg) = feeds.answers.next() => {
                    let ours = msg.headers.as_ref().and_then(|h| h.get(ANSWERED_BY))
                        .is_some_and(|v| v.as_str() == self.config.id);
                    if ours {
                        continue;
                    }
                    let session = msg.subject.as_str().strip_prefix("jetlock.to.").unwrap_or_default();
                    if let Ok(answer) = serde_json::from_slice::<protocol::Answer>(&msg.payload) {
                        if let (true, Some(re)) = (answer.is_final(), answer.re()) {
                            self.engine.answered(session, re, Instant::now());
                        }
                    }
                }
                Some(msg) = feeds.disconnects.next() => {
                    if let Ok(adv) = serde_json::from_slice::<DisconnectAdvisory>(&msg.payload) {
                        self.engine.disconnected(&adv.conn(), &adv.reason, Instant::now());
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.engine.tick(now);
                    if ready.is_none() && now >= next_beat {
                        next_beat = now + self.config.heartbeat_interval;
                        self.beat(false).await;
                    }
                }
            }
            self.carry_out().await;
        }
        // Leaving: the others take our keys over now rather than after the
        // coordinator timeout. Writes in flight finish first.
        while self.writes.join_next().await.is_some() {}
        self.beat(true).await;
        let _ = self.nats.flush().await;
        info!(coordinator = %self.config.id, "coordinator stopped");
    }

    fn bucket_message(&mut self, prefix: &str, seq: u64, msg: &jetstream::Message) {
        let Some(key) = msg.subject.as_str().strip_prefix(prefix) else {
            return;
        };
        let Ok(name) = LockName::from_key(key) else {
            warn!(key, "bucket holds a key jetlock did not write; ignored");
            return;
        };
        match store::current_from_message(seq, msg.headers.as_ref(), &msg.payload) {
            Ok(current) => self.engine.observed(&name, current, Instant::now()),
            Err(e) => warn!(key, error = %e, "unreadable lock record; ignored"),
        }
    }

    async fn heartbeat(&mut self, msg: async_nats::Message) {
        let Some(session) = msg.subject.as_str().strip_prefix("jetlock.hb.") else {
            return;
        };
        if protocol::check_session(session).is_err()
            || msg.payload.len() > protocol::MAX_REQUEST_BYTES
        {
            return;
        }
        let hb = if msg.payload.is_empty() {
            Heartbeat::default()
        } else {
            match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                Ok(hb) => hb,
                Err(_) => return,
            }
        };
        let ack = self.engine.heartbeat(session, hb, Instant::now());
        if let (Some(ack), Some(reply)) = (ack, msg.reply) {
            let body = serde_json::to_vec(&ack).expect("acks serialize");
            let _ = self.nats.publish(reply, body.into()).await;
        }
    }

    async fn beat(&mut self, leaving: bool) {
        let beat = CoordinatorBeat {
            v: VERSION,
            id: self.config.id.clone(),
            conn: self.conn.clone(),
            leaving,
        };
        let body = serde_json::to_vec(&beat).expect("beats serialize");
        let _ = self
            .nats
            .publish(protocol::coordinator_subject(&self.config.id), body.into())
            .await;
    }

    async fn carry_out(&mut self) {
        for action in self.engine.take_actions() {
            match action {
                engine::Action::Answer { session, answer } => {
                    debug!(session, ?answer, "answer");
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
                }
                engine::Action::Event { kind, body } => {
                    let subject = format!("{}.{kind}", protocol::EVENTS);
                    let body = serde_json::to_vec(&body).expect("events serialize");
                    let _ = self.nats.publish(subject, body.into()).await;
                }
                engine::Action::Write(write) => {
                    debug!(lock = %write.name, expected = write.expected, kind = ?write.kind, "write");
                    self.write_seq += 1;
                    let id = format!("{}.{}", self.config.id, self.write_seq);
                    let store = self.store.clone();
                    self.writes.spawn(async move {
                        let result = run_write(&store, &write, &id).await;
                        (write.name, result)
                    });
                }
                engine::Action::Read { name } => {
                    let store = self.store.clone();
                    self.reads.spawn(async move {
                        let current = match store.read(&name).await {
                            Ok(c) => Some(c),
                            Err(e) => {
                                debug!(lock = %name, error = %e, "read failed");
                                None
                            }
                        };
                        (name, current)
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

async fn run_write(store: &LockStore, write: &Write, id: &str) -> WriteResult {
    let write_id = WriteId { id, resend: false };
    let result = match &write.kind {
        WriteKind::Put { record, ttl } => {
            store
                .put(&write.name, record, write.expected, *ttl, write_id)
                .await
        }
        WriteKind::Release => {
            store
                .release(&write.name, write.expected, DEFAULT_MARKER_TTL, write_id)
                .await
        }
    };
    match result {
        Ok(w) => WriteResult::Written {
            revision: w.revision,
        },
        Err(CasError::Conflict { .. }) => WriteResult::Conflict,
        Err(CasError::Transport(e)) => {
            debug!(lock = %write.name, error = %e, "coordinator write failed");
            WriteResult::Failed
        }
    }
}

fn time_now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
