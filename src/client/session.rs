//! The client's session with the coordinators: heartbeats, answers,
//! notices, and the queue path of a contended acquire.
//!
//! One task per client (owned by [`SessionLink`], stopped on drop):
//! heartbeats on `jetlock.hb.<session>` every quarter of the session
//! timeout, and reads `jetlock.to.<session>`: answers go to the request that
//! waits for them (by request id), notices (`contended`, `revoke_notice`,
//! `lost`) to the holds they name. A grant for a request nobody waits for
//! any more (the caller gave up or dropped the future) is released at once,
//! so an abandoned request never leaves a lock held.
//!
//! When no coordinator answers heartbeats, the client works without one:
//! contended acquires watch the key and CAS on each release marker (the
//! foundation's path), which is safe but not FIFO.

use super::Inner;
use crate::error::LostReason;
use crate::name::LockName;
use crate::protocol::{
    self, AcquireBody, Answer, CancelBody, ConnId, Heartbeat, HeartbeatAck, LostCause, Op,
    ReleaseBody, VERSION,
};
use async_nats::HeaderMap;
use dashmap::DashMap;
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The link's shared state.
pub(crate) struct SessionLink {
    session: String,
    /// Requests waiting for their final answer, by request id.
    pending: DashMap<String, oneshot::Sender<Answer>>,
    /// Requests whose caller stopped waiting before the answer came.
    abandoned: DashMap<String, ()>,
    /// Tokens of holds that someone waits behind (from `contended`
    /// notices and grants with waiters): those release through the
    /// coordinator, so the lock is handed to the next waiter.
    contended: DashMap<String, u64>,
    /// Live coordinators in the last heartbeat answer.
    coordinators: AtomicU32,
    last_ack: Mutex<Option<Instant>>,
    /// When the newest heartbeat that a coordinator answered `alive` was
    /// sent: no coordinator can declare the session dead before this plus
    /// the session timeout (they count from when they last heard it).
    confirmed: Mutex<Option<Instant>>,
    /// The session timeout the coordinators apply (from their answers).
    applied_timeout: Mutex<Duration>,
    /// The coordinators declared this session dead.
    expired: AtomicBool,
    timeout: Duration,
    stop: CancellationToken,
    /// Fires once the first heartbeat is answered or refused.
    settled: Mutex<Option<oneshot::Sender<()>>>,
}

/// How long the answer to a request may take beyond its wait: a
/// coordinator failover (at most ~2 s) plus slack.
pub(crate) const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// Abandoned request ids remembered for releasing late grants.
const MAX_ABANDONED: usize = 4096;

impl SessionLink {
    pub(crate) fn new(session: String, timeout: Duration) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (settled, settled_rx) = oneshot::channel();
        let link = Arc::new(SessionLink {
            session,
            pending: DashMap::new(),
            abandoned: DashMap::new(),
            contended: DashMap::new(),
            coordinators: AtomicU32::new(0),
            last_ack: Mutex::new(None),
            confirmed: Mutex::new(None),
            applied_timeout: Mutex::new(timeout),
            expired: AtomicBool::new(false),
            timeout,
            stop: CancellationToken::new(),
            settled: Mutex::new(Some(settled)),
        });
        (link, settled_rx)
    }

    /// Subscribes to the session's answers and starts heartbeating.
    pub(crate) async fn start(
        link: &Arc<Self>,
        inner: Weak<Inner>,
        nats: async_nats::Client,
    ) -> Result<(), async_nats::SubscribeError> {
        let answers = nats
            .subscribe(protocol::answer_subject(&link.session))
            .await?;
        let link = link.clone();
        tokio::spawn(async move {
            let stop = link.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = link.run(answers, inner, nats.clone()) => {}
            }
            // Tell the coordinators now rather than after the timeout.
            let _ = nats
                .publish(protocol::heartbeat_subject(&link.session), leaving_beat())
                .await;
            let _ = nats.flush().await;
        });
        Ok(())
    }

    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// A coordinator answered a heartbeat recently.
    pub(crate) fn coordinated(&self) -> bool {
        let recent = self
            .last_ack
            .lock()
            .expect("never poisoned")
            .is_some_and(|at| at.elapsed() < self.timeout * 2);
        recent && self.coordinators.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// Whether the hold of `key` with `token` has waiters behind it.
    pub(crate) fn is_contended(&self, key: &str, token: u64) -> bool {
        self.contended.get(key).is_some_and(|t| *t == token)
    }

    pub(crate) fn set_contended(&self, key: &str, token: u64) {
        self.contended.insert(key.to_owned(), token);
    }

    pub(crate) fn forget_contended(&self, key: &str, token: u64) {
        self.contended.remove_if(key, |_, t| *t == token);
    }

    /// Registers a request before it is sent; the receiver gets its final
    /// answer.
    pub(crate) fn expect(&self, id: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id.to_owned(), tx);
        rx
    }

    /// The caller stopped waiting for `id`; a late grant is released.
    pub(crate) fn abandon(&self, id: &str) {
        if self.pending.remove(id).is_some() {
            if self.abandoned.len() >= MAX_ABANDONED {
                // Only a late grant's release depends on this; its lease
                // ends on the server anyway.
                self.abandoned.clear();
            }
            self.abandoned.insert(id.to_owned(), ());
        }
    }

    async fn run(
        self: &Arc<Self>,
        mut answers: async_nats::Subscriber,
        inner: Weak<Inner>,
        nats: async_nats::Client,
    ) {
        let interval = self.timeout / 4;
        let mut beat = tokio::time::interval(interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks = futures::stream::FuturesUnordered::new();
        // The confirmation whose jeopardy has been dealt with.
        let mut given_up: Option<Instant> = None;
        loop {
            let jeopardy = self.jeopardy_at().filter(|_| {
                given_up.is_none() || *self.confirmed.lock().expect("never poisoned") != given_up
            });
            tokio::select! {
                _ = tokio::time::sleep_until(jeopardy.unwrap_or_else(Instant::now)), if jeopardy.is_some() => {
                    given_up = *self.confirmed.lock().expect("never poisoned");
                    if self.unconfirmed(&inner) {
                        // Tell the coordinators now rather than after the
                        // timeout, so they release what it held.
                        let _ = nats
                            .publish(protocol::heartbeat_subject(&self.session), leaving_beat())
                            .await;
                    }
                }
                // An ended session beats no more; answers are still read
                // (a late grant is given back).
                _ = beat.tick(), if !self.is_expired() => {
                    let info = nats.server_info();
                    let hb = Heartbeat {
                        timeout_ms: Some(self.timeout.as_millis() as u64),
                        conn: (!info.server_id.is_empty()).then(|| ConnId {
                            server_id: info.server_id.clone(),
                            cid: info.client_id,
                        }),
                        leaving: false,
                    };
                    let body = serde_json::to_vec(&hb).expect("heartbeats serialize");
                    let request = nats.request(protocol::heartbeat_subject(&self.session), body.into());
                    // Answers are awaited concurrently: a slow answer never
                    // delays the next heartbeat.
                    if acks.len() < 8 {
                        let sent = Instant::now();
                        let answer = tokio::time::timeout(self.timeout, request);
                        acks.push(async move { (sent, answer.await) });
                    }
                }
                Some((sent, ack)) = acks.next(), if !acks.is_empty() => {
                    if let Some(tx) = self.settled.lock().expect("never poisoned").take() {
                        let _ = tx.send(());
                    }
                    // No answer (no coordinator, or none answering) is
                    // noted by the age of the last answer.
                    if let Ok(Ok(msg)) = ack {
                        if let Ok(ack) = serde_json::from_slice::<HeartbeatAck>(&msg.payload) {
                            self.acked(&ack, sent, &inner);
                        }
                    }
                }
                msg = answers.next() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<Answer>(&msg.payload) {
                        Ok(answer) => self.dispatch(answer, &inner, &nats).await,
                        Err(e) => debug!(error = %e, "unreadable answer ignored"),
                    }
                }
            }
        }
    }

    /// When this session's holds must be given up unless a newer
    /// heartbeat is answered first: a tenth of the timeout before the
    /// earliest moment a coordinator may declare the session dead. `None`
    /// before any coordinator confirmed it (no coordinator tracks it).
    fn jeopardy_at(&self) -> Option<Instant> {
        let confirmed = (*self.confirmed.lock().expect("never poisoned"))?;
        let timeout = *self.applied_timeout.lock().expect("never poisoned");
        Some(confirmed + timeout - timeout / 10)
    }

    /// The session is over: declared dead, or past
    /// [`SessionLink::jeopardy_at`] without a newer confirmation (a
    /// coordinator may consider it dead, so a grant now may be handed on
    /// under it; the session ends on the spot, see
    /// [`SessionLink::unconfirmed`]).
    pub(crate) fn ended(&self) -> bool {
        self.is_expired() || self.jeopardy_at().is_some_and(|at| Instant::now() >= at)
    }

    /// No answer confirmed the session in time, so a coordinator may
    /// declare it dead from now on, and one that was cut off from us may
    /// have done so already: the session ends here, as if declared dead.
    /// Every hold is given up (`lost()` fires) before a coordinator could
    /// hand it on, and new acquisitions fail with `SessionExpired`.
    ///
    /// The session does not go on. A coordinator that was cut off along
    /// with this client (both connected to a server that lost the network)
    /// holds off declaring anybody dead and confirms the session again once
    /// healed, while the others declared it dead and release every lock it
    /// takes after: a
    /// session that carried on then held locks that were handed on (the
    /// fault suite's server-isolation partition). The holds are not
    /// released: the lease ends on the server anyway. True if the session
    /// was live until now.
    fn unconfirmed(&self, inner: &Weak<Inner>) -> bool {
        if self.expired.swap(true, Ordering::Relaxed) {
            return false;
        }
        let Some(inner) = inner.upgrade() else {
            return true;
        };
        let holds: Vec<_> = inner
            .holds
            .iter()
            .filter_map(|h| h.value().upgrade())
            .collect();
        warn!(session = %self.session, holds = holds.len(),
              "no coordinator confirmed this session within its timeout; it ends and its locks are given up (connect again for a new session)");
        for hold in holds {
            hold.lose(LostReason::Unconfirmed, true);
        }
        true
    }

    fn acked(&self, ack: &HeartbeatAck, sent: Instant, inner: &Weak<Inner>) {
        *self.last_ack.lock().expect("never poisoned") = Some(Instant::now());
        self.coordinators.store(ack.coordinators, Ordering::Relaxed);
        if self.is_expired() {
            // Over: a late `alive` confirms nothing.
            return;
        }
        if ack.alive {
            let mut confirmed = self.confirmed.lock().expect("never poisoned");
            *confirmed = Some(confirmed.map_or(sent, |c| c.max(sent)));
            // A shorter timeout than asked for (the coordinators clamp it)
            // moves the deadline closer; never further than asked.
            let applied = Duration::from_millis(ack.timeout_ms).min(self.timeout);
            *self.applied_timeout.lock().expect("never poisoned") = applied;
        }
        if !ack.alive && !self.expired.swap(true, Ordering::Relaxed) {
            warn!(session = %self.session, "the coordinators declared this session dead; its locks are lost");
            if let Some(inner) = inner.upgrade() {
                // Collected first: losing a hold removes it from `holds`,
                // which must not happen while iterating it (a shard's
                // write lock under its own read lock never comes).
                let holds: Vec<_> = inner
                    .holds
                    .iter()
                    .filter_map(|h| h.value().upgrade())
                    .collect();
                for hold in holds {
                    hold.lose(LostReason::SessionExpired, true);
                }
            }
        }
    }

    async fn dispatch(&self, answer: Answer, inner: &Weak<Inner>, nats: &async_nats::Client) {
        // Answers name locks; the client's tables are keyed by KV key.
        let kv_key = |name: &str| LockName::new(name).ok().map(|n| n.key().to_owned());
        match &answer {
            Answer::Contended { key, token, .. } => {
                if let Some(k) = kv_key(key) {
                    self.set_contended(&k, *token);
                }
            }
            Answer::RevokeNotice { key, token, .. } | Answer::Lost { key, token, .. } => {
                // A notice gives a grace period; `lost` means it is over.
                let (reason, over) = match &answer {
                    Answer::Lost {
                        cause: LostCause::SessionExpired,
                        ..
                    } => (LostReason::SessionExpired, true),
                    Answer::Lost { .. } => (LostReason::Revoked, true),
                    _ => (LostReason::Revoked, false),
                };
                if let (Some(inner), Some(k)) = (inner.upgrade(), kv_key(key)) {
                    let holds: Vec<_> = inner
                        .holds
                        .iter()
                        .filter(|h| h.key().0 == k)
                        .filter_map(|h| h.value().upgrade())
                        .collect();
                    for hold in holds {
                        if hold.token().get() == *token {
                            hold.lose(reason, over);
                        }
                    }
                }
            }
            Answer::Queued { .. } => {}
            _ => {
                let Some(re) = answer.re() else { return };
                match self.pending.remove(re) {
                    Some((_, tx)) => {
                        let _ = tx.send(answer);
                    }
                    None => {
                        // A grant for a request its caller gave up on must
                        // not stay held: give it back. Any other unexpected
                        // answer (a repeat after a coordinator takeover) is
                        // ignored: the request was already answered.
                        let abandoned = self.abandoned.remove(re).is_some();
                        if let (Answer::Granted { key, token, .. }, true) = (&answer, abandoned) {
                            debug!(key, token, "releasing a grant nobody waits for");
                            let _ = self.send_release(nats, key, *token).await;
                        }
                    }
                }
            }
        }
    }

    /// Publishes `body` as request `op` to the request stream; returns once
    /// JetStream stored it.
    pub(crate) async fn send(
        &self,
        js: &async_nats::jetstream::Context,
        op: Op,
        id: &str,
        body: Vec<u8>,
    ) -> Result<(), async_nats::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            protocol::message_id(&self.session, id).as_str(),
        );
        js.publish_with_headers(
            protocol::request_subject(op, &self.session),
            headers,
            body.into(),
        )
        .await?
        .await?;
        Ok(())
    }

    async fn send_release(
        &self,
        nats: &async_nats::Client,
        key: &str,
        token: u64,
    ) -> Result<(), async_nats::Error> {
        let js = async_nats::jetstream::new(nats.clone());
        let id = protocol::new_request_id();
        let body = ReleaseBody {
            v: VERSION,
            id: id.clone(),
            key: key.to_owned(),
            token,
        };
        self.send(&js, Op::Release, &id, serde_json::to_vec(&body)?)
            .await
    }

    /// Sends a cancel for a waiting acquire (best effort: a grant that
    /// still arrives is released by the dispatcher).
    pub(crate) async fn cancel(
        &self,
        js: &async_nats::jetstream::Context,
        key: &str,
        target: &str,
    ) {
        let id = protocol::new_request_id();
        let body = CancelBody {
            v: VERSION,
            id: id.clone(),
            key: key.to_owned(),
            target: target.to_owned(),
        };
        let body = serde_json::to_vec(&body).expect("requests serialize");
        if let Err(e) = self.send(js, Op::Cancel, &id, body).await {
            debug!(key, error = %e, "cancel not sent");
        }
    }

    /// The body of an acquire request.
    pub(crate) fn acquire_body(
        id: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Vec<u8> {
        let body = AcquireBody {
            v: VERSION,
            id: id.to_owned(),
            key: key.to_owned(),
            owner: Some(owner.to_owned()),
            ttl_ms: Some(ttl.as_millis() as u64),
            wait_ms: wait.as_millis() as u64,
            preempt: None,
        };
        serde_json::to_vec(&body).expect("requests serialize")
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The heartbeat that ends a session at once.
fn leaving_beat() -> bytes::Bytes {
    let bye = Heartbeat {
        leaving: true,
        ..Heartbeat::default()
    };
    serde_json::to_vec(&bye)
        .expect("heartbeats serialize")
        .into()
}
