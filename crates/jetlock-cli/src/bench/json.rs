//! A client of the JSON protocol written the way a service in another
//! language would write it: a plain NATS connection, `serde_json::json!`
//! bodies, nothing from jetlock's client. It follows the steps of
//! `tests/python/jetlock_json.py`: subscribe to `jetlock.to.<session>`
//! first, heartbeat on `jetlock.hb.<session>`, publish requests to the
//! request stream with `Nats-Msg-Id`, match answers by `re`. Releases go
//! unstored (`jetlock.now.release.<session>`, protocol 1.8) when the
//! coordinator's heartbeat answer says it serves them, stored again when
//! one goes unanswered, as docs/PROTOCOL.md tells a client to.

use super::CliError;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use jetlock::protocol::{self, Answer, ErrorCode};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The session timeout this client asks for; it beats every quarter of it.
const SESSION_TIMEOUT_MS: u64 = 5000;
/// How long an answer may take.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// How long an unstored release may take before it is sent stored.
const UNSTORED_LIMIT: Duration = Duration::from_millis(500);

pub(super) struct JsonSession {
    session: String,
    js: jetstream::Context,
    answers: async_nats::Subscriber,
    beats: tokio::task::JoinHandle<()>,
    next_id: u64,
    /// The coordinator serves unstored releases, and none went unanswered.
    unstored: bool,
    /// The deployment's request partitions (1: not partitioned), as bucket
    /// 0's stream metadata says: requests go to their lock's partition.
    partitions: u32,
}

impl JsonSession {
    /// Connects, then [`JsonSession::start`]s a session on the connection.
    pub(super) async fn connect(url: &str) -> Result<JsonSession, CliError> {
        let nats = async_nats::ConnectOptions::new()
            .name("jetlock-bench-json")
            .connect(jetlock::client::server_list(url))
            .await?;
        JsonSession::start(nats).await
    }

    /// Starts a session on `nats` (which other sessions may share):
    /// subscribes to its answers and heartbeats once in the foreground, an
    /// error if no coordinator answers.
    pub(super) async fn start(nats: async_nats::Client) -> Result<JsonSession, CliError> {
        JsonSession::start_as(nats, "bench").await
    }

    /// [`JsonSession::start`] with a session id under `prefix`: a user of
    /// the shipped cluster config may only use its own (`restricted.…`).
    pub(super) async fn start_as(
        nats: async_nats::Client,
        prefix: &str,
    ) -> Result<JsonSession, CliError> {
        let session = format!("{prefix}.{}", nuid::next());
        let answers = nats.subscribe(format!("jetlock.to.{session}")).await?;
        nats.flush().await?;
        let subject = format!("jetlock.hb.{session}");
        let body = Bytes::from(json!({ "timeout_ms": SESSION_TIMEOUT_MS }).to_string());
        let ack = tokio::time::timeout(
            Duration::from_secs(2),
            nats.request(subject.clone(), body.clone()),
        )
        .await;
        let unstored = match ack {
            Ok(Ok(msg)) => {
                let ack: serde_json::Value = serde_json::from_slice(&msg.payload)?;
                if ack["alive"] != json!(true) {
                    return Err(format!("the coordinator refused the JSON session: {ack}").into());
                }
                ack["unstored_release"] == json!(true)
            }
            _ => {
                return Err(
                    "no coordinator answered the JSON client's heartbeat (is one serving?)".into(),
                )
            }
        };
        let beater = nats.clone();
        let beats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(SESSION_TIMEOUT_MS / 4));
            loop {
                tick.tick().await;
                // A missed beat is not fatal; the timeout has room for three.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    beater.request(subject.clone(), body.clone()),
                )
                .await;
            }
        });
        let js = jetstream::new(nats);
        let partitions = match js
            .get_stream(format!("KV_{}", jetlock::bucket::DEFAULT_BUCKET))
            .await
        {
            Ok(stream) => jetlock::bucket::partitions_of(
                jetlock::bucket::DEFAULT_BUCKET,
                &stream.cached_info().config,
            )?,
            // Not readable by this user: the unpartitioned subjects serve.
            Err(_) => 1,
        };
        Ok(JsonSession {
            session,
            js,
            answers,
            beats,
            next_id: 0,
            unstored,
            partitions,
        })
    }

    /// One uncontended pair: `acquire` (try-lock) answered `granted`, then
    /// `release` with its token answered `released`.
    pub(super) async fn pair(&mut self, key: &str) -> Result<(), CliError> {
        let token = match self.try_acquire(key, Duration::from_secs(10)).await? {
            Answer::Granted { token, .. } => token,
            other => return Err(format!("JSON acquire of {key} answered {other:?}").into()),
        };
        let id = self.id();
        let body = json!({"v": 1, "id": id, "key": key, "token": token});
        let mut fell_back = false;
        if self.unstored {
            let subject = match jetlock::name::LockName::new(key) {
                Ok(name) if self.partitions > 1 => {
                    let p = jetlock::shards::partition_of(name.key(), self.partitions);
                    protocol::partitioned_unstored_release_subject(p, &self.session)
                }
                _ => protocol::unstored_release_subject(&self.session),
            };
            let nats = self.js.client();
            nats.publish(subject, serde_json::to_vec(&body)?.into())
                .await?;
            match self.answer("release", &id, UNSTORED_LIMIT).await {
                Ok(Answer::Released { .. }) => return Ok(()),
                Ok(other) => return Err(format!("JSON release of {key} answered {other:?}").into()),
                // Unanswered: stored from now on, under a new id.
                Err(_) => (self.unstored, fell_back) = (false, true),
            }
        }
        let id = self.id();
        let body = json!({"v": 1, "id": id, "key": key, "token": token});
        match self.call("release", &id, body).await? {
            Answer::Released { .. } => Ok(()),
            // The unstored release was carried out after all.
            Answer::Error {
                code: ErrorCode::NotHolder | ErrorCode::StaleToken,
                ..
            } if fell_back => Ok(()),
            other => Err(format!("JSON release of {key} answered {other:?}").into()),
        }
    }

    /// `acquire` of `key` for `ttl`, not waiting: its final answer.
    pub(super) async fn try_acquire(
        &mut self,
        key: &str,
        ttl: Duration,
    ) -> Result<Answer, CliError> {
        let id = self.id();
        let body = json!({"v": 1, "id": id, "key": key, "ttl_ms": ttl.as_millis() as u64,
            "wait_ms": 0});
        self.call("acquire", &id, body).await
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("r{}", self.next_id)
    }

    /// Asks to wait up to `wait` for `key`, without waiting for any answer
    /// (the memory workload queues many waiters this way); the future
    /// resolves once the request stream stored the request.
    pub(super) async fn enqueue(
        &mut self,
        key: &str,
        wait: Duration,
    ) -> Result<jetstream::context::PublishAckFuture, CliError> {
        let id = self.id();
        let body = json!({"v": 1, "id": id, "key": key, "ttl_ms": 10_000,
            "wait_ms": wait.as_millis() as u64});
        self.publish("acquire", &id, body).await
    }

    /// Publishes a request; the future resolves once the request stream
    /// stored it.
    async fn publish(
        &self,
        op: &str,
        id: &str,
        body: serde_json::Value,
    ) -> Result<jetstream::context::PublishAckFuture, CliError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}:{id}", self.session).as_str());
        let subject = match body["key"].as_str().map(jetlock::name::LockName::new) {
            Some(Ok(name)) if self.partitions > 1 => {
                let p = jetlock::shards::partition_of(name.key(), self.partitions);
                format!("jetlock.preq.{p}.{op}.{}", self.session)
            }
            _ => format!("jetlock.req.{op}.{}", self.session),
        };
        Ok(self
            .js
            .publish_with_headers(subject, headers, serde_json::to_vec(&body)?.into())
            .await?)
    }

    /// Publishes a request (returns once the request stream stored it) and
    /// waits for its final answer.
    async fn call(
        &mut self,
        op: &str,
        id: &str,
        body: serde_json::Value,
    ) -> Result<Answer, CliError> {
        self.publish(op, id, body).await?.await?;
        self.answer(op, id, ANSWER_LIMIT).await
    }

    /// The final answer to request `id`, within `limit`.
    async fn answer(&mut self, op: &str, id: &str, limit: Duration) -> Result<Answer, CliError> {
        let deadline = Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.answers.next())
                .await
                .map_err(|_| format!("no answer to JSON {op} {id} within {limit:?}"))?
                .ok_or("the answer subscription ended")?;
            let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) else {
                continue;
            };
            if answer.re() == Some(id) && answer.is_final() {
                return Ok(answer);
            }
        }
    }
}

impl Drop for JsonSession {
    fn drop(&mut self) {
        // The session holds nothing; the coordinator times it out.
        self.beats.abort();
    }
}
