//! A session that speaks the JSON protocol over a plain NATS connection,
//! as a service in another language would: no jetlock client involved.

use super::PATIENCE;
use futures::StreamExt;
use jetlock::protocol::{self, Answer};
use std::time::Duration;

pub struct JsonSession {
    pub session: String,
    pub nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    pub answers: async_nats::Subscriber,
    beat: tokio::task::JoinHandle<()>,
}

impl JsonSession {
    /// A new session `json.<nuid>`, subscribed to its answers and
    /// heartbeating (timeout 5 s) until it is dropped or leaves.
    pub async fn new(url: &str) -> JsonSession {
        let session = format!("json.{}", nuid::next());
        let nats = async_nats::connect(url).await.expect("connect");
        JsonSession::on(nats, session).await
    }

    /// Session `session` on an existing connection (logged in as a user
    /// whose permissions name the session's prefix).
    pub async fn on(nats: async_nats::Client, session: String) -> JsonSession {
        let answers = nats
            .subscribe(protocol::answer_subject(&session))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        let (n, s) = (nats.clone(), session.clone());
        let beat = tokio::spawn(async move {
            loop {
                let _ = n
                    .publish(
                        protocol::heartbeat_subject(&s),
                        r#"{"timeout_ms":5000}"#.into(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let js = async_nats::jetstream::new(nats.clone());
        JsonSession {
            session,
            nats,
            js,
            answers,
            beat,
        }
    }

    /// Publishes raw bytes as `op`; the stream's verdict.
    pub async fn publish(
        &self,
        op: &str,
        msg_id: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<async_nats::jetstream::publish::PublishAck, async_nats::Error> {
        let subject = format!("jetlock.req.{op}.{}", self.session);
        self.publish_on(subject, msg_id, body).await
    }

    /// Publishes raw bytes on `subject`; the stream's verdict.
    pub async fn publish_on(
        &self,
        subject: String,
        msg_id: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<async_nats::jetstream::publish::PublishAck, async_nats::Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        Ok(self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await?
            .await?)
    }

    /// Sends request `op` to request partition `partition`
    /// (`jetlock.preq.<partition>.<op>.<session>`).
    pub async fn send_to_partition(&self, partition: u32, op: &str, body: serde_json::Value) {
        let id = body["id"].as_str().unwrap_or("x").to_owned();
        let subject = format!("jetlock.preq.{partition}.{op}.{}", self.session);
        self.publish_on(subject, &format!("{}:{id}", self.session), body.to_string())
            .await
            .expect("stored");
    }

    /// Sends request `op` to its lock's partition in a deployment of
    /// `partitions` (as a client that reads `jetlock.partitions` does).
    pub async fn send_partitioned(&self, partitions: u32, op: &str, body: serde_json::Value) {
        let name = jetlock::name::LockName::new(body["key"].as_str().expect("a key"))
            .expect("a lock name");
        let p = jetlock::shards::partition_of(name.key(), partitions);
        self.send_to_partition(p, op, body).await;
    }

    pub async fn send(&self, op: &str, body: serde_json::Value) {
        let id = body["id"].as_str().unwrap_or("x").to_owned();
        self.publish(op, &format!("{}:{id}", self.session), body.to_string())
            .await
            .expect("stored");
    }

    /// The next answer that is not `queued` or a notice.
    pub async fn next_final(&mut self) -> Answer {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let msg = self.answers.next().await.expect("subscription open");
                let a: Answer = serde_json::from_slice(&msg.payload).expect("answers parse");
                if a.re().is_some() && a.is_final() {
                    return a;
                }
                if let Answer::Error { re: None, .. } = a {
                    return a;
                }
            }
        })
        .await
        .expect("an answer arrives")
    }

    /// No answer at all within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.answers.next())
            .await
            .is_err()
    }

    /// Ends the session: heartbeats stop and a `leaving` heartbeat is
    /// answered (the coordinator has declared it dead by then).
    pub async fn leave(&self) {
        self.beat.abort();
        let reply = self
            .nats
            .request(
                protocol::heartbeat_subject(&self.session),
                r#"{"leaving":true}"#.into(),
            )
            .await
            .expect("the leaving heartbeat is answered");
        let ack: protocol::HeartbeatAck = serde_json::from_slice(&reply.payload).unwrap();
        assert!(!ack.alive);
    }
}

impl Drop for JsonSession {
    fn drop(&mut self) {
        // The heartbeat task must not outlive the session.
        self.beat.abort();
    }
}
