//! What the coordinator hears and sends about liveness: session
//! heartbeats, its own beat, the other coordinators' questions before a
//! death, and proof beats (`hearing.rs`).

use super::*;

/// A proof beat not stored by then shows nothing to any class of session
/// timeout (`hearing::BOUNDS`).
const PROOF_TIMEOUT: Duration = hearing::MAX_ACK_DELAY;
/// Most proof beats in flight (one every `hearing::PROOF_INTERVAL` until
/// `PROOF_TIMEOUT` would be 20): a server that stores none shows the gap
/// long before.
const MAX_PROOFS_IN_FLIGHT: usize = 8;
/// The least time between two proof beats: the engine asks for one between
/// the regular beats when it waits for proof.
const MIN_PROOF_SPACING: Duration = Duration::from_millis(10);

impl Runtime {
    pub(super) async fn heartbeat(&mut self, msg: async_nats::Message) {
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
        match msg.reply {
            Some(reply) => self
                .engine
                .heartbeat_to(session, hb, reply.to_string(), Instant::now()),
            None => {
                self.engine.heartbeat(session, hb, Instant::now());
            }
        }
    }

    pub(super) async fn beat(&mut self, leaving: bool) {
        let beat = CoordinatorBeat {
            v: VERSION,
            id: self.config.id.clone(),
            conn: self.conn.clone(),
            now_ms: Some(unix_ms()),
            leaving,
        };
        let body = serde_json::to_vec(&beat).expect("beats serialize");
        let _ = self
            .nats
            .publish(protocol::coordinator_subject(&self.config.id), body.into())
            .await;
    }

    /// Another coordinator asks when this one last heard some sessions.
    pub(super) async fn heard_query(&mut self, msg: async_nats::Message) {
        let Ok(q) = serde_json::from_slice::<HeardQuery>(&msg.payload) else {
            return;
        };
        // Answered on the subject the question came from (one token, as the
        // subscription matches), never on one the body names.
        let from = msg.subject.rsplit('.').next().unwrap_or_default();
        if q.v != VERSION || q.from != from || from == self.config.id {
            return;
        }
        let reply = HeardReply {
            v: VERSION,
            by: self.config.id.clone(),
            round: q.round,
            ages_ms: self.engine.heard_query(&q.sessions, Instant::now()),
        };
        let body = serde_json::to_vec(&reply).expect("replies serialize");
        let subject = protocol::heard_reply_subject(from);
        let _ = self.nats.publish(subject, body.into()).await;
    }

    /// Sends a proof beat, unless one went out a moment ago or too many
    /// are in flight (the server stores none of them: the gap shows in the
    /// send times of those acknowledged). Each is judged by its own send
    /// and acknowledgement, so one whose acknowledgement is lost holds up
    /// none of the others.
    pub(super) fn prove(&mut self) {
        let now = Instant::now();
        if self.proofs.len() >= MAX_PROOFS_IN_FLIGHT
            || self
                .last_proof
                .is_some_and(|t| now.duration_since(t) < MIN_PROOF_SPACING)
        {
            return;
        }
        self.last_proof = Some(now);
        let js = jetstream::new(self.nats.clone());
        let subject = format!("jetlock.proof.{}", self.config.id);
        self.proofs.spawn(async move {
            let sent = Instant::now();
            let stored = async { js.publish(subject, bytes::Bytes::new()).await?.await };
            match tokio::time::timeout(PROOF_TIMEOUT, stored).await {
                Ok(Ok(_)) => Some((sent, Instant::now())),
                Ok(Err(e)) => {
                    debug!(error = %e, "proof beat not stored");
                    None
                }
                Err(_) => None,
            }
        });
    }
}
