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

use super::belief::{Answered, SessionBelief};
use super::Inner;
use crate::error::LostReason;
use crate::name::LockName;
use crate::protocol::{
    self, AcquireBody, Answer, CancelBody, ClientInfo, ConnId, Heartbeat, HeartbeatAck, LostCause,
    Op, ReleaseBody, VERSION,
};
use async_nats::HeaderMap;
use dashmap::DashMap;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
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
    /// Whether releases may go unstored (`via_coordinator.rs`).
    pub(crate) unstored: super::via_coordinator::Unstored,
    /// How long the session may be believed in (see [`SessionBelief`]).
    belief: Mutex<SessionBelief>,
    /// The session ended (declared dead, or given up): mirrors
    /// `belief.is_ended()` for the hot path.
    expired: AtomicBool,
    timeout: Duration,
    /// The deployment's request partitions (`crate::shards`; 1: requests
    /// are not partitioned).
    partitions: u32,
    /// Sent in every heartbeat, so a restarted coordinator learns it too.
    client: ClientInfo,
    /// What the connection's event callback saw.
    conn: watch::Receiver<ConnState>,
    stop: CancellationToken,
    /// Fires once the first heartbeat is answered or refused.
    settled: Mutex<Option<oneshot::Sender<()>>>,
}

/// The connection's drops and reconnects, as its event callback saw them
/// (a client made by [`crate::ClientOptions::connect`]; one given to
/// `with_nats` only shows a reconnect by its new connection id, at the next
/// heartbeat).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnState {
    /// When the connection last dropped.
    pub(crate) dropped: Option<Instant>,
    /// Reconnections so far.
    pub(crate) reconnects: u64,
}

/// Feeds [`ConnState`] from async-nats connection events.
pub(crate) fn conn_events() -> (
    impl Fn(&async_nats::Event) + Send + Sync + 'static,
    watch::Receiver<ConnState>,
) {
    let (tx, rx) = watch::channel(ConnState::default());
    let observe = move |event: &async_nats::Event| match event {
        // Taken here, not when the session task gets to it: the deadline
        // counts from the drop, and the task may be busy.
        async_nats::Event::Disconnected => {
            let at = Instant::now();
            tx.send_modify(|s| s.dropped = Some(at));
        }
        async_nats::Event::Connected => tx.send_modify(|s| s.reconnects += 1),
        _ => {}
    };
    (observe, rx)
}

/// A heartbeat sent, as its answers are matched to it.
struct Beat {
    n: u64,
    at: Instant,
    /// It named a connection made after the last drop.
    new_conn: bool,
    /// An answer or a refusal came.
    resolved: bool,
}

/// How long the answer to a request may take beyond its wait: a
/// coordinator failover (at most ~2 s) plus slack.
pub(crate) const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// Abandoned request ids remembered for releasing late grants.
const MAX_ABANDONED: usize = 4096;
/// Heartbeats whose answers are still matched to their send time.
const BEATS_REMEMBERED: u64 = 16;
/// The quickest two heartbeats follow each other (a probe, a reconnect).
const MIN_BEAT_GAP: Duration = Duration::from_millis(5);

impl SessionLink {
    pub(crate) fn new(
        session: String,
        timeout: Duration,
        partitions: u32,
        client: ClientInfo,
        conn: watch::Receiver<ConnState>,
    ) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (settled, settled_rx) = oneshot::channel();
        let link = Arc::new(SessionLink {
            session,
            pending: DashMap::new(),
            abandoned: DashMap::new(),
            contended: DashMap::new(),
            coordinators: AtomicU32::new(0),
            last_ack: Mutex::new(None),
            unstored: Default::default(),
            belief: Mutex::new(SessionBelief::new(timeout)),
            expired: AtomicBool::new(false),
            timeout,
            partitions,
            client,
            conn,
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
        // Every coordinator answers every heartbeat; all answers are read
        // (a request would keep only the first).
        let inbox = nats.new_inbox();
        let acks = nats.subscribe(format!("{inbox}.*")).await?;
        let link = link.clone();
        tokio::spawn(async move {
            let stop = link.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = link.run(answers, acks, &inbox, inner, nats.clone()) => {}
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
        mut acks: async_nats::Subscriber,
        inbox: &str,
        inner: Weak<Inner>,
        nats: async_nats::Client,
    ) {
        let mut beat = tokio::time::interval(self.timeout / 4);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conn = self.conn.clone();
        let mut seen = *conn.borrow_and_update();
        // The recent heartbeats, by number (the reply subject's last token).
        let mut sent: VecDeque<Beat> = VecDeque::new();
        let mut next_beat = 0u64;
        let mut beat_now = false;
        let mut last_conn: Option<ConnId> = None;
        // The connection named before the last drop: a heartbeat naming
        // another shows the coordinators the client reconnected.
        let mut dropped_conn: Option<Option<ConnId>> = None;
        // A connection given to `with_nats` has no event callback.
        let mut events = conn.has_changed().is_ok();
        loop {
            let deadline = self.belief.lock().expect("never poisoned").deadline();
            let since_last = sent.back().map(|b| b.at.elapsed());
            let may_beat = !self.is_expired() && since_last.is_none_or(|e| e >= MIN_BEAT_GAP);
            // In this order: a passed deadline before anything read after
            // it; heartbeat answers and heartbeats before request answers,
            // so a burst of answers (thousands of waits granted at once)
            // cannot keep a confirmation unread past the deadline.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.deadline_passed(&inner, &nats).await;
                }
                msg = acks.next() => {
                    let Some(msg) = msg else { return };
                    // Read after the deadline: the deadline goes first, so
                    // a session seen over stays over.
                    if self.ended() && !self.is_expired() {
                        self.deadline_passed(&inner, &nats).await;
                    }
                    if let Some(tx) = self.settled.lock().expect("never poisoned").take() {
                        let _ = tx.send(());
                    }
                    let n = msg.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok());
                    let Some(i) = sent.iter().position(|b| Some(b.n) == n) else {
                        continue;
                    };
                    sent[i].resolved = true;
                    let (at, new_conn) = (sent[i].at, sent[i].new_conn);
                    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                        // No coordinator heard it (none runs): no deadline
                        // from it. No answer at all is noted by the age of
                        // the last answer.
                        let next = sent.iter().skip(i + 1).find(|b| !b.resolved).map(|b| b.at);
                        self.belief.lock().expect("never poisoned").refused(at, next);
                    } else if let Ok(ack) = serde_json::from_slice::<HeartbeatAck>(&msg.payload) {
                        self.acked(&ack, at, new_conn, &inner);
                        // Every quarter of the timeout the coordinators
                        // apply (it may be below the one asked for): a
                        // loss of hearing shorter than three quarters of it
                        // cannot hide a death (docs/ARCHITECTURE.md).
                        let period = self.belief.lock().expect("never poisoned").timeout() / 4;
                        if period < beat.period() {
                            beat = tokio::time::interval_at(Instant::now() + period, period);
                            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        // A coordinator that missed the new connection's
                        // heartbeat ends the session at its grace: beat
                        // again until every one confirmed it.
                        if new_conn
                            && self.belief.lock().expect("never poisoned").reconnect_unconfirmed()
                        {
                            beat_now = true;
                        }
                    }
                }
                // A probe or a reconnect asks for a heartbeat at once; an
                // ended session beats no more (answers are still read: a
                // late grant is given back).
                _ = beat.tick(), if !self.is_expired() => beat_now = true,
                _ = tokio::time::sleep(MIN_BEAT_GAP), if beat_now && !may_beat => {}
                changed = conn.changed(), if events => {
                    if changed.is_err() {
                        events = false;
                        continue;
                    }
                    let now = *conn.borrow_and_update();
                    if let Some(at) = now.dropped.filter(|_| now.dropped != seen.dropped) {
                        self.belief.lock().expect("never poisoned").dropped(at);
                        dropped_conn = Some(last_conn.clone());
                    }
                    if now.reconnects != seen.reconnects {
                        beat_now = true;
                    }
                    seen = now;
                }
                msg = answers.next() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<Answer>(&msg.payload) {
                        Ok(Answer::Probe { .. }) => beat_now = true,
                        Ok(answer) => self.dispatch(answer, &inner, &nats).await,
                        Err(e) => debug!(error = %e, "unreadable answer ignored"),
                    }
                }
            }
            if self.is_expired() {
                beat_now = false;
            }
            if beat_now && may_beat {
                beat_now = false;
                let info = nats.server_info();
                let conn_id = (!info.server_id.is_empty()).then(|| ConnId {
                    server_id: info.server_id.clone(),
                    cid: info.client_id,
                });
                // After a drop, only a heartbeat that names the new
                // connection shows the coordinators the client reconnected.
                // Right after the reconnect event the client may not know
                // its new id yet: beat again until it does. (A connection
                // given to `with_nats` shows no drop: the client cannot
                // keep the reconnect rule there; see `with_nats`.)
                let new_conn = match &dropped_conn {
                    Some(old) if *old == conn_id => {
                        beat_now = true;
                        false
                    }
                    Some(_) => true,
                    None => false,
                };
                last_conn.clone_from(&conn_id);
                let hb = Heartbeat {
                    timeout_ms: Some(self.timeout.as_millis() as u64),
                    conn: conn_id,
                    leaving: false,
                    client: Some(self.client.clone()),
                };
                let body = serde_json::to_vec(&hb).expect("heartbeats serialize");
                let now = Instant::now();
                self.belief.lock().expect("never poisoned").sent(now);
                next_beat += 1;
                sent.push_back(Beat {
                    n: next_beat,
                    at: now,
                    new_conn,
                    resolved: false,
                });
                if sent.len() as u64 > BEATS_REMEMBERED {
                    sent.pop_front();
                }
                let _ = nats
                    .publish_with_reply(
                        protocol::heartbeat_subject(&self.session),
                        format!("{inbox}.{next_beat}"),
                        body.into(),
                    )
                    .await;
            }
        }
    }

    /// The deadline passed with no newer confirmation.
    async fn deadline_passed(&self, inner: &Weak<Inner>, nats: &async_nats::Client) {
        if self.unconfirmed(inner) {
            // Tell the coordinators now rather than after the timeout, so
            // they release what it held.
            let _ = nats
                .publish(protocol::heartbeat_subject(&self.session), leaving_beat())
                .await;
        }
    }

    /// The session's deadline (see [`SessionBelief::last_deadline`]), for
    /// `LockGuard::deadline`.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.belief.lock().expect("never poisoned").last_deadline()
    }

    /// The session is over: declared dead, or past its deadline without a
    /// newer confirmation (a coordinator may consider it dead, so a grant
    /// now may be handed on under it; the session ends on the spot, see
    /// [`SessionLink::unconfirmed`]).
    pub(crate) fn ended(&self) -> bool {
        self.is_expired()
            || self
                .belief
                .lock()
                .expect("never poisoned")
                .over_at(Instant::now())
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
    /// takes after. The holds are not released: the lease ends on the
    /// server anyway. A session no coordinator ever confirmed only gives its
    /// holds up ([`SessionBelief::give_up`]). True if the session ended
    /// here.
    fn unconfirmed(&self, inner: &Weak<Inner>) -> bool {
        if !self.belief.lock().expect("never poisoned").give_up() {
            warn!(session = %self.session,
                  "no coordinator answered this session's heartbeats in time; its locks are given up");
            lose_all(inner, LostReason::Unconfirmed);
            return false;
        }
        if self.expired.swap(true, Ordering::Relaxed) {
            return false;
        }
        warn!(session = %self.session,
              "no coordinator confirmed this session in time; it ends and its locks are given up (connect again for a new session)");
        lose_all(inner, LostReason::Unconfirmed);
        true
    }

    fn acked(&self, ack: &HeartbeatAck, sent: Instant, new_conn: bool, inner: &Weak<Inner>) {
        *self.last_ack.lock().expect("never poisoned") = Some(Instant::now());
        self.coordinators.store(ack.coordinators, Ordering::Relaxed);
        self.unstored.heard(ack.unstored_release);
        let answered = self.belief.lock().expect("never poisoned").answered_by(
            sent,
            ack.alive,
            ack.timeout_ms,
            ack.grace_ms,
            new_conn,
            ack.by.as_deref().map(|by| (by, ack.coordinators)),
        );
        if answered == Answered::Dead && !self.expired.swap(true, Ordering::Relaxed) {
            match ack.refused {
                Some(code) => warn!(
                    session = %self.session,
                    code = code.as_str(),
                    "a coordinator refused this session (its prefix has as many live sessions as max_sessions_per_prefix allows)"
                ),
                None => {
                    warn!(session = %self.session, "a coordinator declared this session dead; its locks are lost")
                }
            }
            lose_all(inner, LostReason::SessionExpired);
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
                        .filter(|h| h.key().name.key() == k)
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
                            // A coordinator that restarted can answer an old
                            // acquire of ours with the grant we hold now
                            // (waiters are matched to the holder by session
                            // and owner): releasing it would take off one of
                            // our live holds.
                            if holds_token(inner, key, *token) {
                                debug!(key, token, "a late grant of a hold we have: kept");
                            } else {
                                debug!(key, token, "releasing a grant nobody waits for");
                                let _ = self.send_release(nats, key, *token).await;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The subject of request `op` about lock `name`: its partition's, in a
    /// deployment whose requests are partitioned.
    fn request_subject(&self, op: Op, name: &str) -> String {
        if self.partitions > 1 {
            if let Ok(name) = crate::name::LockName::new(name) {
                let p = crate::shards::partition_of(name.key(), self.partitions);
                return protocol::partitioned_request_subject(p, op, &self.session);
            }
        }
        // A name that is not one goes where every coordinator reads, to be
        // refused.
        protocol::request_subject(op, &self.session)
    }

    /// The subject of an unstored release of lock `name`: its partition's,
    /// in a deployment whose requests are partitioned.
    pub(crate) fn unstored_release_subject(&self, name: &crate::name::LockName) -> String {
        if self.partitions > 1 {
            let p = crate::shards::partition_of(name.key(), self.partitions);
            return protocol::partitioned_unstored_release_subject(p, &self.session);
        }
        protocol::unstored_release_subject(&self.session)
    }

    /// Publishes `body` as request `op` about lock `name` to the request
    /// stream; returns once JetStream stored it.
    pub(crate) async fn send(
        &self,
        js: &async_nats::jetstream::Context,
        op: Op,
        name: &str,
        id: &str,
        body: Vec<u8>,
    ) -> Result<(), async_nats::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            protocol::message_id(&self.session, id).as_str(),
        );
        js.publish_with_headers(self.request_subject(op, name), headers, body.into())
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
        self.send(&js, Op::Release, key, &id, serde_json::to_vec(&body)?)
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
        if let Err(e) = self.send(js, Op::Cancel, key, &id, body).await {
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

/// Whether a live hold of the client on lock `name` has `token`.
fn holds_token(inner: &Weak<Inner>, name: &str, token: u64) -> bool {
    let (Some(inner), Ok(name)) = (inner.upgrade(), LockName::new(name)) else {
        return false;
    };
    let held = inner
        .holds
        .iter()
        .filter(|h| h.key().name.key() == name.key())
        .filter_map(|h| h.value().upgrade())
        .any(|hold| hold.token().get() == token);
    held
}

/// Every hold of the client is lost for `reason`.
fn lose_all(inner: &Weak<Inner>, reason: LostReason) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    // Collected first: losing a hold removes it from `holds`, which must
    // not happen while iterating it (a shard's write lock under its own
    // read lock never comes).
    let holds: Vec<_> = inner
        .holds
        .iter()
        .filter_map(|h| h.value().upgrade())
        .collect();
    for hold in holds {
        hold.lose(reason, true);
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
