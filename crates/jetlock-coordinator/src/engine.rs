//! The coordinator's state machine: per-key FIFO queues, holder operations,
//! session deaths and revocations, turned into CAS writes and answers.
//!
//! It is synchronous and does no I/O: the runtime (`mod.rs`) feeds it what
//! NATS delivers (requests in stream order, KV changes, heartbeats, write
//! results, the clock) and carries out the [`Action`]s it returns. That
//! keeps every decision testable without a server.
//!
//! Every coordinator runs the same machine over *all* keys (it reads the
//! whole request stream and watches the whole bucket), but only the ring's
//! owner of a key *acts* on it: writes, answers, deletes finished requests.
//! The others keep a mirror, so when the ring moves a key to them they
//! already know its queue. Safety never rests on this: each ownership change
//! is one CAS write expecting the revision the machine last saw, and a stale
//! machine's write simply loses.
//!
//! Fairness: a key's waiters are granted in stream order. A released lock
//! with waiters goes to the head waiter by one write (holder → waiter), so
//! the key is never vacant while anyone waits and a newcomer cannot barge in.

use super::hearing::{Hearing, HeldAcks, Verdict};
use super::membership::{self, owner_among, Ring, Sessions, Touch};
use super::HashMap;
use crate::admin::{CoordinatorView, HolderView, LockInfo, SessionView};
use crate::limits::PrefixLimits as Policy;
use jetlock::clock::unix_ms;
use jetlock::events::{Event, EventKind};
use jetlock::name::LockName;
use jetlock::protocol::{
    self, Answer, ConnId, CoordinatorBeat, ErrorCode, Heartbeat, HeartbeatAck, HolderInfo, Limits,
    LostCause, Request, WireError, VERSION,
};
use jetlock::record::LockRecord;
use jetlock::store::Current;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

mod replay;
use replay::{adopt_reentries, next_applied, Sent};
pub use replay::{Applied, Stamp};

/// Settings of the state machine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    /// How long a preempted holder has to give up the lock.
    pub preempt_grace: Duration,
    /// A coordinator silent this long is out of the ring.
    pub coordinator_timeout: Duration,
    /// Session timeout when the session does not choose one.
    pub session_timeout: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// How long a session whose connection the client closed has to
    /// heartbeat on a new one (see `Sessions::closed`).
    pub reconnect_grace: Duration,
    /// How long request ids are remembered for de-duplication (the request
    /// stream's duplicate window).
    pub dedup_window: Duration,
    /// Most waiters per lock (0: no limit).
    pub max_waiters: u32,
    /// Most locks one session may hold (0: no limit); an acquire beyond
    /// it is `too_many_locks`.
    pub max_locks_per_session: u32,
    /// Most acquires one session may have waiting (0: no limit); beyond it
    /// `too_many_waits`.
    pub max_waits_per_session: u32,
    /// Most live sessions under one prefix (0: no limit): a new session
    /// beyond it is refused, `too_many_sessions`.
    pub max_sessions_per_prefix: u32,
    /// Whether an `alive` heartbeat answer waits for proof of hearing
    /// (`hearing::HeldAcks`). Off by default: under a burst of requests on
    /// a loaded machine and while the proof stream's leader moves, proof
    /// beats come late and confirmations stop, so sessions end (see
    /// docs/RELIABILITY.md, "Deterministic simulation"). The simulation
    /// runs with it on.
    pub confirm_with_proof: bool,
    /// Per-prefix limits; the longest matching prefix applies.
    pub policies: Vec<(LockName, Policy)>,
}

impl EngineConfig {
    /// The policy for `name`, if a prefix of it has one.
    fn policy(&self, name: &LockName) -> Option<&Policy> {
        self.policies
            .iter()
            .filter(|(p, _)| {
                let (p, k) = (p.key(), name.key());
                k == p || k.strip_prefix(p).is_some_and(|r| r.starts_with('.'))
            })
            .max_by_key(|(p, _)| p.key().len())
            .map(|(_, policy)| policy)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            preempt_grace: Duration::from_secs(5),
            coordinator_timeout: Duration::from_millis(1500),
            session_timeout: Duration::from_millis(900),
            min_session_timeout: Duration::from_millis(300),
            max_session_timeout: Duration::from_secs(300),
            reconnect_grace: super::membership::DEFAULT_RECONNECT_GRACE,
            dedup_window: Duration::from_secs(120),
            max_waiters: 10_000,
            max_locks_per_session: 10_000,
            max_waits_per_session: 20_000,
            max_sessions_per_prefix: 10_000,
            confirm_with_proof: false,
            policies: Vec::new(),
        }
    }
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish `answer` on `jetlock.to.<session>`.
    Answer { session: String, answer: Answer },
    /// Carry out a CAS write and report it with [`Engine::written`].
    Write(Write),
    /// Read the key from the stream leader and report it with
    /// [`Engine::read_done`].
    Read { name: LockName },
    /// Delete a finished request from the request stream.
    Delete { seq: u64 },
    /// Publish an event (the runtime stamps its time and coordinator).
    Event(Box<Event>),
    /// Send a proof beat now (a death waits for one sent after its
    /// deadline) and report its acknowledgement with [`Engine::proof_acked`].
    Prove,
    /// Publish a heartbeat's answer on its reply subject.
    HeartbeatAck { reply: String, ack: HeartbeatAck },
}

/// One CAS write on the locks bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub name: LockName,
    pub expected: u64,
    pub kind: WriteKind,
    /// Its `Jetlock-Write-Id`, unique per write of this coordinator.
    pub id: String,
    /// What it applies (its `Jetlock-Applied` header).
    pub applied: Applied,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteKind {
    /// Store `record` with a lease of `ttl`.
    Put { record: LockRecord, ttl: Duration },
    /// Write a release marker.
    Release,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Written {
        revision: u64,
    },
    /// The key moved on: somebody else wrote first.
    Conflict,
    /// Unknown (timeout, disconnect): the key must be read again.
    Failed,
}

/// Counters for operators.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: u64,
    pub grants: u64,
    pub handoffs: u64,
    pub errors: u64,
    /// Requests nobody could be answered for (unreadable subject), counted
    /// by the coordinator that deletes them (the subject's owner).
    pub dropped: u64,
    pub conflicts: u64,
    pub session_deaths: u64,
    /// New sessions refused for `max_sessions_per_prefix`.
    pub sessions_refused: u64,
}

#[derive(Debug, Clone)]
struct Waiter {
    seq: u64,
    session: String,
    id: String,
    owner: String,
    ttl_ms: u64,
    deadline: Instant,
    try_lock: bool,
    preempt: bool,
    arrived: Instant,
}

/// A request about the current hold, run in arrival order.
#[derive(Debug, Clone)]
struct HolderOp {
    seq: u64,
    session: String,
    id: String,
    kind: HolderOpKind,
    arrived: Instant,
    /// The key was read from the stream leader after it arrived: a refusal
    /// may rest on what this coordinator knows (see `OpOutcome::Verify`).
    verified: bool,
}

#[derive(Debug, Clone)]
enum HolderOpKind {
    Release {
        token: u64,
    },
    /// A release whose hold has ended meanwhile: answered `released`.
    Settled,
    Renew {
        token: u64,
        ttl_ms: u64,
    },
    /// A reentrant acquire by the holder's own (session, owner).
    Reenter {
        owner: String,
        ttl_ms: u64,
    },
    Revoke {
        grace_ms: u64,
        reason: String,
    },
}

/// Why a hold ends.
#[derive(Debug, Clone)]
enum Ending {
    Released(HolderOp),
    SessionExpired,
    Revoked {
        session: String,
        token: u64,
        by: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Inflight {
    Grant {
        sent: Sent,
        waiter: Waiter,
        record: LockRecord,
        ending: Option<Ending>,
    },
    Update {
        sent: Sent,
        op: HolderOp,
        record: LockRecord,
    },
    End {
        sent: Sent,
        ending: Ending,
    },
    /// A read after a conflict.
    Read,
    /// A read after a write whose result is unknown (`was`, kept until the
    /// read or the watch tells whether it landed).
    Unsure {
        sent: Sent,
        was: Box<Inflight>,
    },
}

impl Inflight {
    fn sent(&self) -> Option<Sent> {
        match self {
            Inflight::Grant { sent, .. }
            | Inflight::Update { sent, .. }
            | Inflight::End { sent, .. } => Some(*sent),
            Inflight::Read | Inflight::Unsure { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Revocation {
    token: u64,
    deadline: Instant,
    by: String,
    reason: String,
}

/// What this coordinator's own write of a key meant, so the event reported
/// when the bucket shows the change can say why and how long it waited.
#[derive(Debug, Clone)]
struct Note {
    /// The revision the write expected: the change's previous revision.
    expected: u64,
    /// The (session, owner) a grant was for.
    grantee: Option<(String, String)>,
    waited_ms: Option<u64>,
    ending: Option<EndNote>,
}

#[derive(Debug, Clone)]
enum EndNote {
    Released,
    SessionExpired,
    Revoked { by: String, reason: String },
}

impl EndNote {
    fn of(ending: &Ending) -> EndNote {
        match ending {
            Ending::Released(_) => EndNote::Released,
            Ending::SessionExpired => EndNote::SessionExpired,
            Ending::Revoked { by, reason, .. } => EndNote::Revoked {
                by: by.clone(),
                reason: reason.clone(),
            },
        }
    }
}

#[derive(Debug, Clone)]
struct RecentGrant {
    session: String,
    re: String,
    token: u64,
    ttl_ms: u64,
    at: Instant,
}

/// What the machine knows of one key. Every held lock has one, so its
/// size is most of the coordinator's memory per lock: the parts only a key
/// being written, revoked or just granted through the coordinator needs
/// are boxed (`jetlock bench` measures the memory per held lock).
#[derive(Debug)]
struct KeyState {
    name: LockName,
    current: Current,
    queue: VecDeque<Waiter>,
    ops: VecDeque<HolderOp>,
    inflight: Option<Box<Inflight>>,
    /// The token a `contended` notice was sent for.
    contended: u64,
    revoke: Option<Box<Revocation>>,
    /// The last grant seen, so a coordinator taking the key over can repeat
    /// an answer the previous owner may not have sent.
    recent_grant: Option<Box<RecentGrant>>,
    /// Why our last write of the key was made.
    note: Option<Box<Note>>,
    /// When `current` last changed here.
    changed_at: Option<Instant>,
    /// The requests `current` is known to have applied (see `replay.rs`).
    applied: Applied,
}

impl KeyState {
    fn new(name: LockName) -> Self {
        KeyState {
            name,
            current: Current::Vacant { revision: 0 },
            queue: VecDeque::new(),
            ops: VecDeque::new(),
            inflight: None,
            contended: 0,
            revoke: None,
            recent_grant: None,
            note: None,
            changed_at: None,
            applied: Applied::default(),
        }
    }

    fn idle(&self) -> bool {
        matches!(self.current, Current::Vacant { .. })
            && self.queue.is_empty()
            && self.ops.is_empty()
            && self.inflight.is_none()
    }
}

fn revision_of(c: &Current) -> u64 {
    match c {
        Current::Vacant { revision } | Current::Held { revision, .. } => *revision,
    }
}

#[derive(Debug)]
struct Tracked {
    key: String,
    at: Instant,
    done: bool,
}

/// How long a grant is repeated to its waiter after a takeover.
const REGRANT_WINDOW: Duration = Duration::from_secs(5);
/// Holder operations that a non-owner mirrors are dropped after this: the
/// owner has long handled them.
const MIRROR_OP_LIFETIME: Duration = Duration::from_secs(5);

/// How often idle keys and finished requests are swept out. A sweep walks
/// every key: on every tick (20 ms) that was 28% of a core for an idle
/// coordinator with 100k held locks, and all of it with 1M.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long an answer seen before its request is remembered, and how many.
const ANSWERED_EARLY_LIFETIME: Duration = Duration::from_secs(30);
const MAX_ANSWERED_EARLY: usize = 100_000;

/// The state machine.
pub struct Engine {
    cfg: EngineConfig,
    ring: Ring,
    sessions: Sessions,
    /// Boxed: a map slot is a pointer, and the table, which doubles as
    /// it grows, holds no room for a whole state per free slot.
    keys: HashMap<String, Box<KeyState>>,
    requests: HashMap<(String, String), Tracked>,
    /// Final answers seen before their request arrived from the stream.
    answered_early: HashMap<(String, String), Instant>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    ready: bool,
    last_tick: Option<Instant>,
    /// Proof that this coordinator could hear the cluster: deaths need it.
    hearing: Hearing,
    /// `alive` answers waiting for the same proof: (session, reply).
    held_acks: HeldAcks<(String, String)>,
    next_sweep: Option<Instant>,
    /// Writes sent so far: the last one's number (see `Write::id`).
    writes_sent: u64,
    out: Vec<Action>,
    pub stats: Stats,
    /// What each session holds and waits for, for its quotas.
    loads: HashMap<String, quota::SessionLoad>,
    /// Sessions learned from requests replayed while catching up, not yet
    /// heard in a heartbeat: their waits are not granted until they are
    /// (see `grantee`).
    unheard: HashMap<String, ()>,
}

impl Engine {
    pub fn new(me: String, cfg: EngineConfig) -> Self {
        let mut engine = Engine {
            ring: Ring::new(me, cfg.coordinator_timeout),
            sessions: Sessions::new(
                cfg.session_timeout,
                cfg.min_session_timeout,
                cfg.max_session_timeout,
            ),
            cfg,
            keys: HashMap::default(),
            requests: HashMap::default(),
            answered_early: HashMap::default(),
            timers: BinaryHeap::new(),
            ready: false,
            last_tick: None,
            hearing: Hearing::default(),
            held_acks: HeldAcks::default(),
            next_sweep: None,
            writes_sent: 0,
            out: Vec::new(),
            stats: Stats::default(),
            loads: HashMap::default(),
            unheard: HashMap::default(),
        };
        engine
            .sessions
            .set_reconnect_grace(engine.cfg.reconnect_grace);
        engine
            .sessions
            .set_max_per_prefix(engine.cfg.max_sessions_per_prefix);
        engine
    }

    /// New settings (a change in the config bucket). Sessions and queues
    /// keep what they were given; new requests get the new limits.
    pub fn set_config(&mut self, cfg: EngineConfig) {
        self.sessions.set_timeouts(
            cfg.session_timeout,
            cfg.min_session_timeout,
            cfg.max_session_timeout,
        );
        self.sessions.set_reconnect_grace(cfg.reconnect_grace);
        self.sessions
            .set_max_per_prefix(cfg.max_sessions_per_prefix);
        self.ring.set_timeout(cfg.coordinator_timeout);
        self.cfg = cfg;
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.alive_count()
    }

    /// Held locks and locks with waiters, for operators; `prefix` is a
    /// bucket-key prefix (segments).
    pub fn locks_view(&self, prefix: Option<&str>, now: Instant) -> Vec<LockInfo> {
        let mut out: Vec<LockInfo> = self
            .keys
            .iter()
            .filter(|(k, _)| match prefix {
                Some(p) => *k == p || k.strip_prefix(p).is_some_and(|r| r.starts_with('.')),
                None => true,
            })
            .filter_map(|(key, ks)| {
                let holder = match &ks.current {
                    Current::Held { revision, record } => {
                        let since = ks
                            .changed_at
                            .map_or(0, |t| now.duration_since(t).as_millis());
                        Some(HolderView {
                            session: record.session.clone(),
                            owner: record.owner.clone(),
                            token: record.token_at(*revision),
                            holds: record.holds,
                            lease_ms: record.lease_ms,
                            lease_left_ms: record.lease_ms.saturating_sub(since as u64),
                            held_ms: unix_ms().saturating_sub(record.acquired_ms),
                        })
                    }
                    Current::Vacant { .. } => None,
                };
                (holder.is_some() || !ks.queue.is_empty()).then(|| LockInfo {
                    name: ks.name.to_string(),
                    key: key.clone(),
                    holder,
                    waiters: ks.queue.iter().map(|w| w.session.clone()).collect(),
                    served_by: self.ring.owner(key).to_owned(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Live coordinators and sessions, for operators.
    pub fn members_view(&self, now: Instant) -> (Vec<CoordinatorView>, Vec<SessionView>) {
        let mut served: HashMap<&str, u64> = HashMap::default();
        let mut held: HashMap<&str, u64> = HashMap::default();
        let mut waiting: HashMap<&str, u64> = HashMap::default();
        for (key, ks) in &self.keys {
            if let Current::Held { record, .. } = &ks.current {
                *served.entry(self.ring.owner(key)).or_default() += 1;
                *held.entry(record.session.as_str()).or_default() += 1;
            }
            for w in &ks.queue {
                *waiting.entry(w.session.as_str()).or_default() += 1;
            }
        }
        let ago = |t: Instant| now.duration_since(t).as_millis() as u64;
        let me = self.ring.me();
        let mut coordinators: Vec<CoordinatorView> = self
            .ring
            .last_seen()
            .map(|(id, t)| (id, ago(t)))
            .chain([(me, 0)])
            .map(|(id, last_seen_ms)| CoordinatorView {
                id: id.to_owned(),
                last_seen_ms,
                locks: served.get(id).copied().unwrap_or(0),
            })
            .collect();
        coordinators.sort_by(|a, b| a.id.cmp(&b.id));
        let mut sessions: Vec<SessionView> = self
            .sessions
            .alive()
            .map(|(id, t, timeout)| SessionView {
                session: id.to_owned(),
                last_seen_ms: ago(t),
                timeout_ms: timeout.as_millis() as u64,
                locks_held: held.get(id).copied().unwrap_or(0),
                waiting: waiting.get(id).copied().unwrap_or(0),
                served_by: self.ring.owner(id).to_owned(),
            })
            .collect();
        sessions.sort_by(|a, b| a.session.cmp(&b.session));
        (coordinators, sessions)
    }

    /// Waiters by lock-name prefix and held locks, over the keys this
    /// coordinator serves (for the metrics).
    pub fn served_load(&self) -> (std::collections::HashMap<String, usize>, usize) {
        let mut depths = std::collections::HashMap::default();
        let mut held = 0;
        for (key, ks) in self.keys.iter().filter(|(k, _)| self.owns(k)) {
            if matches!(ks.current, Current::Held { .. }) {
                held += 1;
            }
            if !ks.queue.is_empty() {
                let prefix = key.split('.').next().unwrap_or(key);
                let prefix = LockName::from_key(prefix)
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_else(|_| prefix.to_owned());
                *depths.entry(prefix).or_default() += ks.queue.len();
            }
        }
        (depths, held)
    }

    /// Waiters queued for `key` (mirror included).
    pub fn queue_len(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |k| k.queue.len())
    }

    /// The request stream and the bucket are read up to now: start acting.
    pub fn set_ready(&mut self, now: Instant) {
        self.ready = true;
        let up = Event {
            coordinators: Some(self.ring.members()),
            ..Event::about(EventKind::CoordinatorUp, self.ring.me())
        };
        self.event(up);
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        for key in keys {
            self.step(&key, now);
        }
    }

    fn owns(&self, key: &str) -> bool {
        self.ready && self.ring.owns(key)
    }

    fn answer(&mut self, session: &str, answer: Answer) {
        if matches!(answer, Answer::Error { .. }) {
            self.stats.errors += 1;
        }
        self.out.push(Action::Answer {
            session: session.to_owned(),
            answer,
        });
    }

    fn event(&mut self, event: Event) {
        self.out.push(Action::Event(Box::new(event)));
    }

    /// Why an acquire breaks the limits of its lock's policy, if it does.
    fn policy_refusal(&self, session: &str, request: &Request) -> Option<WireError> {
        let Request::Acquire {
            name,
            owner,
            ttl_ms,
            preempt,
            ..
        } = request
        else {
            return None;
        };
        let policy = self.cfg.policy(name);
        if *preempt && policy.and_then(|p| p.preempt) == Some(false) {
            return Some(WireError::new(
                ErrorCode::NotPermitted,
                format!("the policy for {name} forbids preemption"),
            ));
        }
        if let Some(max) = policy.and_then(|p| p.max_ttl_ms) {
            if *ttl_ms > max {
                return Some(WireError::new(
                    ErrorCode::InvalidTtl,
                    format!("ttl_ms {ttl_ms} is above the policy's max_ttl_ms {max} for {name}"),
                ));
            }
        }
        let max_waiters = policy
            .and_then(|p| p.max_waiters)
            .unwrap_or(self.cfg.max_waiters);
        let ks = self.keys.get(name.key())?;
        let reentry = matches!(&ks.current, Current::Held { record, .. }
            if record.session == session && record.owner == *owner);
        (max_waiters > 0 && !reentry && ks.queue.len() >= max_waiters as usize).then(|| {
            WireError::new(
                ErrorCode::QueueFull,
                format!("{name} has {} waiters, the most allowed", ks.queue.len()),
            )
        })
    }

    /// Reports a refused renewal (`token`: the current holder's, 0 if none).
    fn renew_failed(&mut self, name: &LockName, op: &HolderOp, token: u64, e: &WireError) {
        if let HolderOpKind::Renew { token: claimed, .. } = op.kind {
            self.event(Event {
                session: Some(op.session.clone()),
                token: Some(claimed),
                cause: Some(e.code.as_str().to_owned()),
                reason: (token != 0).then(|| format!("current token {token}")),
                ..Event::lock(EventKind::RenewFailed, name.as_str(), name.key())
            });
        }
    }

    fn fail(&mut self, session: &str, re: &str, key: &LockName, e: WireError) {
        self.answer(
            session,
            Answer::error(Some(re.to_owned()), Some(key.to_string()), e),
        );
    }

    /// Refuses a request that changes nothing (answered by the key's owner).
    fn refuse(&mut self, acting: bool, session: &str, request: &Request, seq: u64, e: WireError) {
        if acting {
            self.fail(session, request.id(), request.name(), e);
            self.out.push(Action::Delete { seq });
        }
    }

    /// A request finished: forget its stream message.
    fn done(&mut self, session: &str, id: &str, seq: u64, acting: bool) {
        if let Some(t) = self.requests.get_mut(&(session.to_owned(), id.to_owned())) {
            t.done = true;
        }
        if acting {
            self.out.push(Action::Delete { seq });
        }
    }

    // ---- inputs -------------------------------------------------------

    /// A request read from the stream with its `Nats-Msg-Id`: one whose
    /// message id is not bound to its subject's session is refused
    /// (`bad_message_id`) and changes nothing; the rest go to [`request`].
    ///
    /// [`request`]: Engine::request
    pub fn request_with_msg_id(
        &mut self,
        seq: u64,
        subject: &str,
        msg_id: Option<&str>,
        body: &[u8],
        age: Duration,
        now: Instant,
    ) {
        if let Ok((_, session)) = protocol::parse_request_subject(subject) {
            if let Err(e) = protocol::check_message_id(session, msg_id) {
                self.stats.requests += 1;
                if self.owns(session) {
                    let re = protocol::probe_id(body);
                    self.answer(session, Answer::error(re, None, e));
                    self.out.push(Action::Delete { seq });
                }
                return;
            }
        }
        self.request(seq, subject, body, age, now);
    }

    /// A request read from the stream: message `seq` on `subject`, stored
    /// `age` ago.
    pub fn request(&mut self, seq: u64, subject: &str, body: &[u8], age: Duration, now: Instant) {
        self.stats.requests += 1;
        let (op, session) = match protocol::parse_request_subject(subject) {
            Ok((op, session)) => (op, session.to_owned()),
            Err(_) => {
                // Nobody to answer: drop it and count it, once among the
                // coordinators.
                if self.owns(subject) {
                    self.stats.dropped += 1;
                    self.out.push(Action::Delete { seq });
                }
                return;
            }
        };
        let request = match protocol::parse_request(op, &session, body, &self.cfg.limits) {
            Ok(r) => r,
            Err(e) => {
                if self.owns(&session) {
                    let re = protocol::probe_id(body);
                    self.answer(&session, Answer::error(re, None, e));
                    self.out.push(Action::Delete { seq });
                }
                return;
            }
        };
        let key = request.name().key().to_owned();
        tracing::Span::current().record("lock", request.name().as_str());
        let acting = self.owns(&key);
        match self.sessions.request(&session, now) {
            Touch::Dead => {
                let e = WireError::new(
                    ErrorCode::SessionExpired,
                    format!("session {session} was declared dead; start a new session"),
                );
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
            Touch::Refused => {
                let e = self.session_refusal(&session);
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
            Touch::Joined => {
                if !self.ready {
                    self.unheard.insert(session.clone(), ());
                }
                self.session_joined(&session);
            }
            Touch::Alive => {}
        }
        let rid = (session.clone(), request.id().to_owned());
        if self.requests.contains_key(&rid) {
            let e = WireError::new(
                ErrorCode::Duplicate,
                format!(
                    "request id {:?} was already used by this session",
                    request.id()
                ),
            );
            self.refuse(acting, &session, &request, seq, e);
            return;
        }
        if self.answered_early.remove(&rid).is_some() {
            // Another coordinator answered it before the stream brought it
            // here: nothing left to do or to mirror.
            self.requests.insert(
                rid,
                Tracked {
                    key,
                    at: now,
                    done: true,
                },
            );
            return;
        }
        if let Some(e) = self.policy_refusal(&session, &request) {
            self.refuse(acting, &session, &request, seq, e);
            return;
        }
        if acting {
            if let Some(e) = self.quota_refusal(&session, &request, now) {
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
        }
        self.requests.insert(
            rid,
            Tracked {
                key: key.clone(),
                at: now,
                done: false,
            },
        );
        let ks = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| Box::new(KeyState::new(request.name().clone())));
        match request {
            Request::Acquire {
                id,
                owner,
                ttl_ms,
                wait_ms,
                preempt,
                ..
            } => {
                let holder_matches = matches!(&ks.current, Current::Held { record, .. }
                    if record.session == session && record.owner == owner);
                if holder_matches {
                    ks.ops.push_back(HolderOp {
                        seq,
                        session,
                        id,
                        kind: HolderOpKind::Reenter { owner, ttl_ms },
                        arrived: now,
                        verified: false,
                    });
                } else {
                    let left = Duration::from_millis(wait_ms).saturating_sub(age);
                    let deadline = now + left;
                    ks.queue.push_back(Waiter {
                        seq,
                        session,
                        id,
                        owner,
                        ttl_ms,
                        deadline,
                        try_lock: wait_ms == 0,
                        preempt,
                        arrived: now,
                    });
                    self.timers.push(Reverse((deadline, key.clone())));
                    if acting
                        && wait_ms > 0
                        && (ks.queue.len() > 1
                            || ks.inflight.is_some()
                            || matches!(ks.current, Current::Held { .. }))
                    {
                        let w = ks.queue.back().expect("just pushed");
                        let answer = Answer::Queued {
                            v: VERSION,
                            re: w.id.clone(),
                            key: ks.name.to_string(),
                            position: ks.queue.len() as u32,
                        };
                        let to = w.session.clone();
                        self.answer(&to, answer);
                    }
                }
            }
            Request::Release { id, token, .. } => ks.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Release { token },
                arrived: now,
                verified: false,
            }),
            Request::Renew {
                id, token, ttl_ms, ..
            } => ks.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Renew { token, ttl_ms },
                arrived: now,
                verified: false,
            }),
            Request::Revoke {
                id,
                grace_ms,
                reason,
                ..
            } => ks.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Revoke { grace_ms, reason },
                arrived: now,
                verified: false,
            }),
            Request::Cancel { id, target, name } => {
                let found = ks
                    .queue
                    .iter()
                    .position(|w| w.session == session && w.id == target);
                match found {
                    Some(i) => {
                        let w = ks.queue.remove(i).expect("position is in range");
                        if acting {
                            self.fail(
                                &w.session,
                                &w.id,
                                &name,
                                WireError::new(ErrorCode::Cancelled, "cancelled by request"),
                            );
                            self.answer(
                                &session,
                                Answer::Cancelled {
                                    v: VERSION,
                                    re: id.clone(),
                                    key: name.to_string(),
                                },
                            );
                        }
                        self.done(&w.session, &w.id, w.seq, acting);
                        self.done(&session, &id, seq, acting);
                    }
                    None => {
                        if acting {
                            self.fail(
                                &session,
                                &id,
                                &name,
                                WireError::new(
                                    ErrorCode::NotWaiting,
                                    format!("request {target:?} is not waiting for {name}"),
                                ),
                            );
                        }
                        self.done(&session, &id, seq, acting);
                    }
                }
            }
        }
        self.step(&key, now);
    }

    /// Some coordinator sent the final answer to request `re` of `session`
    /// (every coordinator reads `jetlock.to.>`). A mirror forgets the
    /// request, so a coordinator that takes the key over later does not run
    /// it a second time.
    pub fn answered(&mut self, session: &str, re: &str, now: Instant) {
        let rid = (session.to_owned(), re.to_owned());
        let Some(t) = self.requests.get_mut(&rid) else {
            if self.answered_early.len() < MAX_ANSWERED_EARLY {
                self.answered_early.insert(rid, now);
            }
            return;
        };
        if t.done {
            return;
        }
        t.done = true;
        let key = t.key.clone();
        if let Some(ks) = self.keys.get_mut(&key) {
            ks.ops.retain(|op| !(op.session == session && op.id == re));
            ks.queue.retain(|w| !(w.session == session && w.id == re));
        }
    }

    /// The bucket changed (or a read found this): `key` is now `current`,
    /// written by someone other than a coordinator.
    pub fn observed(&mut self, name: &LockName, current: Current, now: Instant) {
        self.observed_change(name, current, false, Stamp::default(), now);
    }

    /// A change of the bucket, with what its message says about its writer;
    /// `expired` when the server wrote it because the lease ran out (a
    /// `MaxAge` marker).
    pub fn observed_change(
        &mut self,
        name: &LockName,
        current: Current,
        expired: bool,
        stamp: Stamp,
        now: Instant,
    ) {
        // Our own write whose result we did not learn: it landed.
        self.recognise(name, &current, &stamp, now);
        let key = name.key().to_owned();
        let acting = self.owns(&key);
        let ks = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| Box::new(KeyState::new(name.clone())));
        if revision_of(&current) <= revision_of(&ks.current) {
            // Seen already, but a write that conflicted with it may have
            // put its waiter back in the queue since: the one this hold
            // was granted to (a start race of two coordinators).
            self.claim_granted(&key, acting, now);
            if let Some(ks) = self.keys.get_mut(&key) {
                adopt_reentries(ks);
            }
            return;
        }
        let previous = std::mem::replace(&mut ks.current, current.clone());
        ks.applied = next_applied(&previous, &current, ks.applied, stamp.applied);
        let events = transition_events(ks, &previous, expired, now);
        if acting {
            events.into_iter().for_each(|e| self.event(e));
        }
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        // The previous hold ended. A release of it still pending here was
        // carried out (by a coordinator that died before answering, or
        // overtaken by an expiry): either way it is released, and running
        // it against the new holder would wrongly answer `not_holder`.
        if let Current::Held { revision, record } = &previous {
            let ended = record.token_at(*revision);
            let still = match &current {
                Current::Held { revision, record } => record.token_at(*revision) == ended,
                Current::Vacant { .. } => false,
            };
            if !still {
                for op in ks.ops.iter_mut() {
                    if op.session == record.session
                        && matches!(op.kind, HolderOpKind::Release { token } if token == ended)
                    {
                        op.kind = HolderOpKind::Settled;
                    }
                }
            }
        }
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        if let Current::Held { revision, record } = &current {
            let token = record.token_at(*revision);
            if ks.revoke.as_ref().is_some_and(|r| r.token != token) {
                ks.revoke = None;
            }
        }
        self.claim_granted(&key, acting, now);
        if let Some(ks) = self.keys.get_mut(&key) {
            adopt_reentries(ks);
        }
        self.step(&key, now);
    }

    /// The queued acquire whose grant the hold is (`Applied::grant`) now
    /// holds the lock: another coordinator (or our own write whose answer
    /// was lost) granted it. It is answered (again) and leaves the queue.
    /// Any other acquire of the same session still waits: an older hold
    /// of that session seen while catching up is not its grant, nor is the
    /// current hold a stale replayed acquire's. A hold whose writer named
    /// nothing (a client's own CAS) is claimed by session and owner.
    fn claim_granted(&mut self, key: &str, acting: bool, now: Instant) {
        let Some(ks) = self.keys.get_mut(key) else {
            return;
        };
        let Current::Held { revision, record } = &ks.current else {
            return;
        };
        let token = record.token_at(*revision);
        let grant = ks.applied.grant;
        let Some(i) = ks.queue.iter().position(|w| {
            w.session == record.session
                && w.owner == record.owner
                && (grant == w.seq || ks.applied.is_none())
        }) else {
            return;
        };
        let (lease_ms, holds) = (record.lease_ms, record.holds);
        let w = ks.queue.remove(i).expect("position is in range");
        ks.recent_grant = Some(Box::new(RecentGrant {
            session: w.session.clone(),
            re: w.id.clone(),
            token,
            ttl_ms: lease_ms,
            at: now,
        }));
        if acting {
            let answer = Answer::Granted {
                v: VERSION,
                re: w.id.clone(),
                key: ks.name.to_string(),
                token,
                ttl_ms: lease_ms,
                holds,
                waiters: ks.queue.len() as u32,
            };
            self.answer(&w.session, answer);
        }
        self.done(&w.session, &w.id, w.seq, acting);
    }

    /// The result of a [`Action::Read`]: the key's last message, or
    /// `None` when the read failed.
    pub fn read_done(&mut self, name: &LockName, read: Option<(Current, Stamp)>, now: Instant) {
        if let Some((current, stamp)) = &read {
            self.recognise(name, current, stamp, now);
        }
        if let Some(ks) = self.keys.get_mut(name.key()) {
            match ks.inflight.take().map(|b| *b) {
                Some(Inflight::Read) => {}
                // The key's last message is not our write: it did not land,
                // or something newer followed it (whose stamp tells what
                // was applied). When the read failed too, the next write
                // expects the revision we know: a landed write makes it
                // conflict, and the read after that shows its stamp.
                Some(Inflight::Unsure { was, .. }) => put_back(ks, *was),
                other => ks.inflight = other.map(Box::new),
            }
        }
        match read {
            Some((current, stamp)) => {
                self.observed_change(name, current, false, stamp, now);
                // The watch may have shown the key already, so the read
                // changes nothing: plan again anyway.
                self.step(name.key(), now);
            }
            None => {
                // The read failed too: try again shortly. Refusals still
                // wait for a read that succeeds.
                if let Some(ks) = self.keys.get_mut(name.key()) {
                    ks.ops.iter_mut().for_each(|op| op.verified = false);
                }
                self.timers.push(Reverse((
                    now + Duration::from_millis(100),
                    name.key().to_owned(),
                )));
            }
        }
    }

    /// A session heartbeat, and its answer.
    pub fn heartbeat(
        &mut self,
        session: &str,
        hb: Heartbeat,
        now: Instant,
    ) -> Option<HeartbeatAck> {
        let touch = self
            .sessions
            .heartbeat(session, hb.timeout_ms, hb.conn, now);
        if touch == Touch::Joined {
            self.session_joined(session);
        }
        if hb.leaving && touch != Touch::Dead {
            self.kill_session(session, "left", now);
        } else if self.unheard.remove(session).is_some() {
            // Heard at last: its waits may be granted.
            let waits: Vec<String> = self
                .keys
                .iter()
                .filter(|(_, ks)| ks.queue.iter().any(|w| w.session == session))
                .map(|(k, _)| k.clone())
                .collect();
            for key in waits {
                self.step(&key, now);
            }
        }
        // Every coordinator answers (the client reads every answer): a
        // client whose answering coordinator died is still confirmed by
        // the others, so it keeps its locks (see `LostReason::Unconfirmed`).
        let mut ack = self.heartbeat_ack(session);
        ack.alive &= touch != Touch::Dead && touch != Touch::Refused && !hb.leaving;
        if touch == Touch::Refused {
            self.stats.sessions_refused += 1;
            ack.refused = Some(ErrorCode::TooManySessions);
        }
        Some(ack)
    }

    /// A session heartbeat whose answer goes to `reply` (an
    /// [`Action::HeartbeatAck`]): `alive: false` at once, `alive` once this
    /// coordinator proves it heard the quorum after the heartbeat arrived
    /// (see `hearing.rs`).
    pub fn heartbeat_to(&mut self, session: &str, hb: Heartbeat, reply: String, now: Instant) {
        let Some(ack) = self.heartbeat(session, hb, now) else {
            return;
        };
        if ack.alive && self.cfg.confirm_with_proof {
            self.held_acks.hold(now, (session.to_owned(), reply));
        } else {
            self.out.push(Action::HeartbeatAck { reply, ack });
        }
    }

    /// The answer to a heartbeat of `session`, as things stand now.
    fn heartbeat_ack(&self, session: &str) -> HeartbeatAck {
        HeartbeatAck {
            v: VERSION,
            alive: !self.sessions.is_dead(session),
            timeout_ms: self.sessions.timeout_of(session).as_millis() as u64,
            coordinators: self.ring.len() as u32,
            grace_ms: Some(self.sessions.reconnect_grace().as_millis() as u64),
            by: Some(self.ring.me().to_owned()),
            refused: None,
        }
    }

    /// A proof beat sent at `sent` was stored by a quorum, acknowledged at
    /// `acked` (see `hearing.rs`): held heartbeat answers go, and overdue
    /// sessions may now be judged.
    pub fn proof_acked(&mut self, sent: Instant, acked: Instant, now: Instant) {
        self.hearing.acked(sent, acked);
        let span = self.hearing.span_start();
        for (session, reply) in self.held_acks.proved(sent, acked, span) {
            let ack = self.heartbeat_ack(&session);
            self.out.push(Action::HeartbeatAck { reply, ack });
        }
        self.judge_sessions(now);
    }

    /// Overdue sessions die when this coordinator provably heard the
    /// cluster from when a heartbeat would have saved them to past their
    /// deadline; if it could not hear for part of that, they count as heard
    /// from when it could again. A death decided while it cannot prove it
    /// hears the quorum is never acted on.
    fn judge_sessions(&mut self, now: Instant) {
        let mut want_proof = false;
        for o in self.sessions.overdue(now) {
            match self.hearing.verdict(o.since, o.due) {
                Verdict::Dead => self.kill_session(&o.session, o.cause, now),
                Verdict::Revive(at) => self.sessions.revive(&o.session, at),
                Verdict::Wait => want_proof = true,
            }
        }
        if want_proof && !self.out.contains(&Action::Prove) {
            self.out.push(Action::Prove);
        }
    }

    /// A heartbeat of another coordinator.
    pub fn coordinator_beat(&mut self, beat: CoordinatorBeat, now: Instant) {
        let before = self.ring.members();
        let changed = if beat.leaving {
            self.ring.leave(&beat.id)
        } else {
            self.ring.beat(&beat.id, beat.conn, now)
        };
        if changed {
            let cause = if beat.leaving { "left" } else { "joined" };
            self.ring_changed(before, cause, now);
        }
    }

    /// The server reports a closed client connection.
    pub fn disconnected(&mut self, conn: &ConnId, reason: &str, now: Instant) {
        let before = self.ring.members();
        if self.ring.disconnected(conn).is_some() {
            self.ring_changed(before, "connection closed", now);
        }
        // A connection the client closed is its process exiting or its
        // client reconnecting (async-nats closes the old socket itself): the
        // session has the reconnect grace to heartbeat on a new connection,
        // and is asked to at once. After other reasons (read error, slow
        // consumer, server shutdown) the session lives on by its heartbeats
        // (see `Sessions::suspect`).
        if reason == "Client Closed" {
            if let Some(session) = self.sessions.closed(conn, now) {
                self.answer(&session, Answer::Probe { v: VERSION });
            }
        } else if let Some(session) = self.sessions.by_conn(conn) {
            self.sessions.suspect(&session);
        }
    }

    /// The clock: timeouts, expiries, pruning.
    pub fn tick(&mut self, now: Instant) {
        if let Some(last) = self.last_tick {
            if now.duration_since(last) > Duration::from_millis(500) {
                self.sessions.stalled(now);
                self.hearing.broke();
            }
        }
        self.last_tick = Some(now);
        self.held_acks.expire(now);
        let before = self.ring.members();
        if !self.ring.expire(now).is_empty() {
            self.ring_changed(before, "heartbeats missed", now);
        }
        self.judge_sessions(now);
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            self.step(&key, now);
        }
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        let window = self.cfg.dedup_window;
        self.requests
            .retain(|_, t| !t.done || now.duration_since(t.at) < window);
        self.answered_early
            .retain(|_, at| now.duration_since(*at) < ANSWERED_EARLY_LIFETIME);
        let ring = &self.ring;
        let ready = self.ready;
        let acting = |key: &str| ready && ring.owns(key);
        self.keys.retain(|key, ks| {
            // Most keys have no operations: skip hashing them to the ring
            // (a hash per coordinator per key).
            if !ks.ops.is_empty() && !acting(key) {
                ks.ops
                    .retain(|op| now.duration_since(op.arrived) < MIRROR_OP_LIFETIME);
            }
            !ks.idle()
        });
    }

    /// The result of an [`Action::Write`] for `name`.
    pub fn written(&mut self, name: &LockName, result: WriteResult, now: Instant) {
        let key = name.key().to_owned();
        let acting = self.owns(&key);
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        let Some(inflight) = ks.inflight.take().map(|b| *b) else {
            return;
        };
        let revision = match (result, inflight.sent()) {
            (WriteResult::Written { revision }, _) => revision,
            (WriteResult::Failed, Some(sent)) => {
                // It may have landed: keep the work until a read (or the
                // watch) shows whether the key's last message is this write.
                ks.inflight = Some(Box::new(Inflight::Unsure {
                    sent,
                    was: Box::new(inflight),
                }));
                self.out.push(Action::Read { name: name.clone() });
                return;
            }
            (WriteResult::Conflict | WriteResult::Failed, _) => {
                if result == WriteResult::Conflict {
                    self.stats.conflicts += 1;
                }
                // Put the work back where it was and learn the key anew.
                put_back(ks, inflight);
                ks.inflight = Some(Box::new(Inflight::Read));
                self.out.push(Action::Read { name: name.clone() });
                return;
            }
        };
        let key_str = ks.name.to_string();
        let mut events = Vec::new();
        match inflight {
            Inflight::Grant {
                waiter,
                record,
                ending,
                ..
            } => {
                let waiters = ks.queue.len() as u32;
                let held = Current::Held {
                    revision,
                    record: record.clone(),
                };
                let applied = Applied {
                    hold: waiter.seq,
                    ended: ended_by(ending.as_ref()),
                    grant: waiter.seq,
                };
                events = set_current(ks, held, applied, now);
                adopt_reentries(ks);
                ks.revoke = None;
                ks.recent_grant = Some(Box::new(RecentGrant {
                    session: waiter.session.clone(),
                    re: waiter.id.clone(),
                    token: revision,
                    ttl_ms: waiter.ttl_ms,
                    at: now,
                }));
                self.stats.grants += 1;
                let handoff = ending.is_some();
                if handoff {
                    self.stats.handoffs += 1;
                }
                self.answer(
                    &waiter.session,
                    Answer::Granted {
                        v: VERSION,
                        re: waiter.id.clone(),
                        key: key_str.clone(),
                        token: revision,
                        ttl_ms: waiter.ttl_ms,
                        holds: 1,
                        waiters,
                    },
                );
                self.done(&waiter.session, &waiter.id, waiter.seq, acting);
                if let Some(ending) = ending {
                    self.ended(&key_str, ending, acting);
                }
            }
            Inflight::Update { op, record, .. } => {
                let token = record.token_at(revision);
                let holds = record.holds;
                let ttl_ms = record.lease_ms;
                let applied = Applied {
                    hold: op.seq,
                    ended: 0,
                    grant: ks.applied.grant,
                };
                events = set_current(ks, Current::Held { revision, record }, applied, now);
                let answer = match &op.kind {
                    HolderOpKind::Release { .. } => Answer::Released {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        holds,
                    },
                    HolderOpKind::Renew { .. } => Answer::Renewed {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        token,
                        ttl_ms,
                    },
                    HolderOpKind::Reenter { .. } => Answer::Granted {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        token,
                        ttl_ms,
                        holds,
                        waiters: ks.queue.len() as u32,
                    },
                    HolderOpKind::Revoke { .. } | HolderOpKind::Settled => {
                        unreachable!("revocations and settled releases do not write")
                    }
                };
                self.answer(&op.session, answer);
                self.done(&op.session, &op.id, op.seq, acting);
            }
            Inflight::End { ending, .. } => {
                let applied = Applied {
                    hold: 0,
                    ended: ended_by(Some(&ending)),
                    grant: 0,
                };
                events = set_current(ks, Current::Vacant { revision }, applied, now);
                ks.revoke = None;
                self.ended(&key_str, ending, acting);
            }
            Inflight::Read | Inflight::Unsure { .. } => {}
        }
        if acting {
            events.into_iter().for_each(|e| self.event(e));
        }
        self.step(&key, now);
    }

    // ---- decisions ----------------------------------------------------

    /// Decides what to do next for `key`. Runs after every change.
    fn step(&mut self, key: &str, now: Instant) {
        let acting = self.owns(key);
        let Some(mut ks) = self.keys.remove(key) else {
            return;
        };
        self.step_key(&mut ks, acting, now);
        self.keys.insert(key.to_owned(), ks);
    }

    fn step_key(&mut self, ks: &mut KeyState, acting: bool, now: Instant) {
        // Still catching up: the bucket may not have shown the key yet, so a
        // request read meanwhile may sit in the wrong place (a reentry among
        // the waiters) until it does. Nothing leaves before `set_ready`,
        // which steps every key: a waiter forgotten here as answered by
        // another coordinator would be taken for applied by the next
        // replay.
        if !self.ready {
            return;
        }
        // 1. Waiters whose wait is over or whose session died leave the
        // queue. A try-lock at the head of a free, idle key is granted
        // instead.
        let grantable = ks.inflight.is_none()
            && ks.ops.is_empty()
            && matches!(ks.current, Current::Vacant { .. });
        // While the key is read again after a write that lost or got no
        // answer (a key forgotten while idle costs one such write), nobody
        // knows whether it is free: the head waiter's fate waits for the
        // read, or a try-lock of a free lock would be refused as busy.
        let reading = matches!(
            ks.inflight.as_deref(),
            Some(Inflight::Read | Inflight::Unsure { .. })
        );
        let mut kept = VecDeque::with_capacity(ks.queue.len());
        // Kept waiters that would be granted before the next one (see
        // `grantee`).
        let mut ahead = 0;
        for w in std::mem::take(&mut ks.queue) {
            if self.sessions.is_dead(&w.session) {
                self.done(&w.session, &w.id, w.seq, acting);
            } else if w.deadline <= now && !(ahead == 0 && (grantable || reading)) {
                if acting {
                    let e = if w.try_lock {
                        let holder = match &ks.current {
                            Current::Held { revision, record } => Some(HolderInfo {
                                session: record.session.clone(),
                                owner: record.owner.clone(),
                                token: record.token_at(*revision),
                                holds: record.holds,
                            }),
                            Current::Vacant { .. } => None,
                        };
                        Answer::Error {
                            v: VERSION,
                            re: Some(w.id.clone()),
                            key: Some(ks.name.to_string()),
                            code: ErrorCode::Busy,
                            message: format!("{} is held", ks.name),
                            holder,
                        }
                    } else {
                        Answer::error(
                            Some(w.id.clone()),
                            Some(ks.name.to_string()),
                            WireError::new(
                                ErrorCode::Timeout,
                                format!("waited {} ms", now.duration_since(w.arrived).as_millis()),
                            ),
                        )
                    };
                    self.answer(&w.session, e);
                }
                self.done(&w.session, &w.id, w.seq, acting);
            } else {
                if !self.unheard.contains_key(&w.session) {
                    ahead += 1;
                }
                kept.push_back(w);
            }
        }
        ks.queue = kept;
        if !acting || ks.inflight.is_some() {
            return;
        }
        match ks.current.clone() {
            Current::Vacant { revision } => {
                // Operations on a hold that no longer exists.
                while let Some(op) = ks.ops.pop_front() {
                    if settles(&op, ks.applied) {
                        self.settled(&ks.name, &op);
                        continue;
                    }
                    if !op.verified {
                        ks.ops.push_front(op);
                        self.verify(ks);
                        return;
                    }
                    let e =
                        WireError::new(ErrorCode::NotHolder, format!("{} is not held", ks.name));
                    self.renew_failed(&ks.name, &op, 0, &e);
                    self.fail(&op.session, &op.id, &ks.name, e);
                    self.done(&op.session, &op.id, op.seq, acting);
                }
                if let Some(w) = self.grantee(ks) {
                    self.start_grant(ks, w, revision, None, now);
                }
            }
            Current::Held { revision, record } => {
                let token = record.token_at(revision);
                let mut ending = None;
                while let Some(op) = ks.ops.pop_front() {
                    match self.holder_op(ks, op, &record, token, now) {
                        OpOutcome::Done => {}
                        OpOutcome::Write(op, new_record, ttl) => {
                            let sent = self.next_write(revision);
                            // The hold's earlier handoff stays named, so a
                            // restart that reads only this message knows it.
                            let applied = Applied {
                                hold: op.seq,
                                ended: ks.applied.ended,
                                grant: ks.applied.grant,
                            };
                            ks.inflight = Some(Box::new(Inflight::Update {
                                sent,
                                op,
                                record: new_record.clone(),
                            }));
                            self.out.push(Action::Write(Write {
                                name: ks.name.clone(),
                                expected: revision,
                                kind: WriteKind::Put {
                                    record: new_record,
                                    ttl,
                                },
                                id: self.write_id(sent.write),
                                applied,
                            }));
                            return;
                        }
                        OpOutcome::End(e) => {
                            ending = Some(e);
                            break;
                        }
                        OpOutcome::Verify(op) => {
                            ks.ops.push_front(op);
                            self.verify(ks);
                            return;
                        }
                        OpOutcome::Requeue(w) => {
                            let at = ks.queue.partition_point(|q| q.seq < w.seq);
                            ks.queue.insert(at, w);
                        }
                    }
                }
                if ending.is_none() {
                    if self.sessions.is_dead(&record.session) {
                        ending = Some(Ending::SessionExpired);
                    } else if ks
                        .revoke
                        .as_ref()
                        .is_some_and(|r| r.token == token && r.deadline <= now)
                    {
                        let r = ks.revoke.as_ref().expect("checked above");
                        ending = Some(Ending::Revoked {
                            session: record.session.clone(),
                            token,
                            by: r.by.clone(),
                            reason: r.reason.clone(),
                        });
                    }
                }
                if let Some(ending) = ending {
                    match self.grantee(ks) {
                        Some(w) => self.start_grant(ks, w, revision, Some(ending), now),
                        None => {
                            ks.note = Some(Box::new(Note {
                                expected: revision,
                                grantee: None,
                                waited_ms: None,
                                ending: Some(EndNote::of(&ending)),
                            }));
                            let sent = self.next_write(revision);
                            let applied = Applied {
                                hold: 0,
                                ended: ended_by(Some(&ending)),
                                grant: 0,
                            };
                            ks.inflight = Some(Box::new(Inflight::End { sent, ending }));
                            self.out.push(Action::Write(Write {
                                name: ks.name.clone(),
                                expected: revision,
                                kind: WriteKind::Release,
                                id: self.write_id(sent.write),
                                applied,
                            }));
                        }
                    }
                    return;
                }
                // Still held.
                if !ks.queue.is_empty() && ks.contended != token {
                    ks.contended = token;
                    self.answer(
                        &record.session,
                        Answer::Contended {
                            v: VERSION,
                            key: ks.name.to_string(),
                            token,
                            waiters: ks.queue.len() as u32,
                        },
                    );
                }
                if let Some(by) = ks
                    .queue
                    .iter()
                    .find(|w| !self.unheard.contains_key(&w.session))
                    .filter(|w| w.preempt && ks.revoke.is_none())
                    .map(|w| w.session.clone())
                {
                    let grace = self.cfg.preempt_grace;
                    let revocation = Revocation {
                        token,
                        deadline: now + grace,
                        by,
                        reason: "preempted by a priority request".into(),
                    };
                    self.start_revocation(ks, &record, revocation, grace);
                }
                if let Some(r) = &ks.revoke {
                    self.timers
                        .push(Reverse((r.deadline, ks.name.key().to_owned())));
                }
            }
        }
    }

    /// Reads the key from the stream leader before the operations now
    /// pending on it may be refused (see `OpOutcome::Verify`).
    fn verify(&mut self, ks: &mut KeyState) {
        ks.ops.iter_mut().for_each(|op| op.verified = true);
        ks.inflight = Some(Box::new(Inflight::Read));
        self.out.push(Action::Read {
            name: ks.name.clone(),
        });
    }

    fn start_grant(
        &mut self,
        ks: &mut KeyState,
        w: Waiter,
        expected: u64,
        ending: Option<Ending>,
        now: Instant,
    ) {
        ks.note = Some(Box::new(Note {
            expected,
            grantee: Some((w.session.clone(), w.owner.clone())),
            waited_ms: Some(now.duration_since(w.arrived).as_millis() as u64),
            ending: ending.as_ref().map(EndNote::of),
        }));
        let record = LockRecord {
            owner: w.owner.clone(),
            session: w.session.clone(),
            acquired_ms: unix_ms(),
            lease_ms: w.ttl_ms,
            holds: 1,
            token: 0,
        };
        let sent = self.next_write(expected);
        self.out.push(Action::Write(Write {
            name: ks.name.clone(),
            expected,
            kind: WriteKind::Put {
                record: record.clone(),
                ttl: Duration::from_millis(w.ttl_ms),
            },
            id: self.write_id(sent.write),
            applied: Applied {
                hold: w.seq,
                ended: ended_by(ending.as_ref()),
                grant: w.seq,
            },
        }));
        ks.inflight = Some(Box::new(Inflight::Grant {
            sent,
            waiter: w,
            record,
            ending,
        }));
    }

    fn start_revocation(
        &mut self,
        ks: &mut KeyState,
        record: &LockRecord,
        r: Revocation,
        grace: Duration,
    ) {
        let grace_ms = grace.as_millis() as u64;
        self.answer(
            &record.session,
            Answer::RevokeNotice {
                v: VERSION,
                key: ks.name.to_string(),
                token: r.token,
                grace_ms,
                reason: r.reason.clone(),
            },
        );
        self.event(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: Some(r.token),
            grace_ms: Some(grace_ms),
            reason: Some(r.reason.clone()),
            by: Some(r.by.clone()),
            ..Event::lock(EventKind::Revoking, ks.name.as_str(), ks.name.key())
        });
        ks.revoke = Some(Box::new(r));
    }

    fn holder_op(
        &mut self,
        ks: &mut KeyState,
        op: HolderOp,
        record: &LockRecord,
        token: u64,
        now: Instant,
    ) -> OpOutcome {
        let refuse = |code, message: String| WireError::new(code, message);
        let check = |session: &str, claimed: u64| -> Result<(), WireError> {
            if session != record.session {
                return Err(refuse(
                    ErrorCode::NotHolder,
                    format!("{} is held by another session", ks.name),
                ));
            }
            if claimed != token {
                return Err(refuse(
                    ErrorCode::StaleToken,
                    format!("token {claimed} is not the current token {token}"),
                ));
            }
            Ok(())
        };
        if settles(&op, ks.applied) {
            self.settled(&ks.name, &op);
            return OpOutcome::Done;
        }
        // Applied already (a write that landed without its ack, a request
        // replayed after a restart, a takeover after the previous owner
        // wrote but did not answer): answer it again, do not re-run it.
        if op.seq <= ks.applied.hold {
            let on_this_hold = match &op.kind {
                HolderOpKind::Release { token: t } | HolderOpKind::Renew { token: t, .. } => {
                    check(&op.session, *t).is_ok()
                }
                HolderOpKind::Reenter { owner, .. } => {
                    op.session == record.session
                        && *owner == record.owner
                        && op.seq >= ks.applied.grant
                }
                HolderOpKind::Revoke { .. } | HolderOpKind::Settled => false,
            };
            if on_this_hold {
                self.answer_applied(ks, &op, record, token);
                return OpOutcome::Done;
            }
        }
        let verdict = match &op.kind {
            HolderOpKind::Release { token: t } => check(&op.session, *t).map(|()| {
                if record.holds > 1 {
                    let mut r = record.clone();
                    r.holds -= 1;
                    r.token = token;
                    Some((r, Duration::from_millis(record.lease_ms)))
                } else {
                    None
                }
            }),
            HolderOpKind::Renew { token: t, ttl_ms } => check(&op.session, *t).map(|()| {
                let mut r = record.clone();
                r.token = token;
                r.lease_ms = *ttl_ms;
                Some((r, Duration::from_millis(*ttl_ms)))
            }),
            HolderOpKind::Reenter { owner, ttl_ms } => {
                // Older than the hold's grant: an acquire of an earlier hold
                // of the session, answered then (a replay): not a reentry.
                if op.session != record.session
                    || *owner != record.owner
                    || op.seq < ks.applied.grant
                {
                    // The hold changed hands since: wait like anybody else.
                    return OpOutcome::Requeue(Waiter {
                        seq: op.seq,
                        session: op.session,
                        id: op.id,
                        owner: owner.clone(),
                        ttl_ms: *ttl_ms,
                        deadline: now,
                        try_lock: true,
                        preempt: false,
                        arrived: op.arrived,
                    });
                }
                let mut r = record.clone();
                r.holds = r.holds.saturating_add(1);
                r.token = token;
                r.lease_ms = r.lease_ms.max(*ttl_ms);
                Ok(Some((r.clone(), Duration::from_millis(r.lease_ms))))
            }
            HolderOpKind::Settled => {
                self.settled(&ks.name, &op);
                return OpOutcome::Done;
            }
            HolderOpKind::Revoke { grace_ms, reason } => {
                let (grace_ms, reason) = (*grace_ms, reason.clone());
                let grace = Duration::from_millis(grace_ms);
                let revocation = Revocation {
                    token,
                    deadline: now + grace,
                    by: op.session.clone(),
                    reason: reason.clone(),
                };
                self.start_revocation(ks, record, revocation, grace);
                self.answer(
                    &op.session,
                    Answer::Revoking {
                        v: VERSION,
                        re: op.id.clone(),
                        key: ks.name.to_string(),
                        token,
                        grace_ms,
                    },
                );
                self.done(&op.session, &op.id, op.seq, true);
                if grace_ms == 0 {
                    return OpOutcome::End(Ending::Revoked {
                        session: record.session.clone(),
                        token,
                        by: op.session.clone(),
                        reason,
                    });
                }
                self.timers.push(Reverse((
                    now + Duration::from_millis(grace_ms),
                    ks.name.key().to_owned(),
                )));
                return OpOutcome::Done;
            }
        };
        match verdict {
            Err(_) if !op.verified => OpOutcome::Verify(op),
            Err(e) => {
                self.renew_failed(&ks.name, &op, token, &e);
                self.fail(&op.session, &op.id, &ks.name, e);
                self.done(&op.session, &op.id, op.seq, true);
                OpOutcome::Done
            }
            Ok(Some((record, ttl))) => OpOutcome::Write(op, record, ttl),
            Ok(None) => OpOutcome::End(Ending::Released(op)),
        }
    }

    /// Answers a release whose hold ended before it ran.
    fn settled(&mut self, name: &LockName, op: &HolderOp) {
        self.answer(
            &op.session,
            Answer::Released {
                v: VERSION,
                re: op.id.clone(),
                key: name.to_string(),
                holds: 0,
            },
        );
        self.done(&op.session, &op.id, op.seq, true);
    }

    /// A hold ended by our write: answer and report it.
    fn ended(&mut self, key: &str, ending: Ending, acting: bool) {
        match ending {
            Ending::Released(op) => {
                self.answer(
                    &op.session,
                    Answer::Released {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key.to_owned(),
                        holds: 0,
                    },
                );
                self.done(&op.session, &op.id, op.seq, acting);
            }
            Ending::SessionExpired => {}
            Ending::Revoked { session, token, .. } => {
                self.answer(
                    &session,
                    Answer::Lost {
                        v: VERSION,
                        key: key.to_owned(),
                        token,
                        cause: LostCause::Revoked,
                    },
                );
            }
        }
    }

    /// The next waiter to grant: the first in line whose session was heard.
    /// A session this coordinator learned only from requests it replayed
    /// while catching up may have ended while no coordinator ran (its
    /// `leaving` beat unheard): granting its waits would hold the lock for
    /// a lease each, for nobody. A live one beats within a quarter of its
    /// timeout and keeps its place in line meanwhile.
    fn grantee(&self, ks: &mut KeyState) -> Option<Waiter> {
        let i = ks
            .queue
            .iter()
            .position(|w| !self.unheard.contains_key(&w.session))?;
        ks.queue.remove(i)
    }

    /// The refusal of a request of a new session whose prefix is full.
    fn session_refusal(&mut self, session: &str) -> WireError {
        self.stats.sessions_refused += 1;
        let prefix = membership::session_prefix(session);
        WireError::new(
            ErrorCode::TooManySessions,
            format!(
                "sessions under prefix {prefix:?} are at the {} that max_sessions_per_prefix allows; \
                 end one first",
                self.cfg.max_sessions_per_prefix
            ),
        )
    }

    fn session_joined(&mut self, session: &str) {
        if self.ready && self.ring.owns(session) {
            self.event(Event::about(EventKind::SessionUp, session));
        }
    }

    fn kill_session(&mut self, session: &str, cause: &str, now: Instant) {
        self.unheard.remove(session);
        if self.sessions.kill(session, now) {
            self.kill_session_effects(session, cause, now);
        }
    }

    /// A session died: its waiters leave, its locks go on.
    fn kill_session_effects(&mut self, session: &str, cause: &str, now: Instant) {
        self.stats.session_deaths += 1;
        if self.ready && self.ring.owns(session) {
            self.event(Event {
                cause: Some(cause.to_owned()),
                ..Event::about(EventKind::SessionDown, session)
            });
        }
        let touched: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, ks)| {
                matches!(&ks.current, Current::Held { record, .. } if record.session == session)
                    || ks.queue.iter().any(|w| w.session == session)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in touched {
            self.step(&key, now);
        }
    }

    /// The live coordinators changed from `before`: report who left, take
    /// over the keys now ours.
    fn ring_changed(&mut self, before: Vec<String>, cause: &str, now: Instant) {
        let members = self.ring.members();
        let mut taken: HashMap<String, u64> = HashMap::default();
        if self.ready {
            for gone in before.iter().filter(|id| !members.contains(id)) {
                // One report per departure: by the coordinator owning its id.
                if self.ring.owns(gone) {
                    self.event(Event {
                        cause: Some(cause.to_owned()),
                        coordinators: Some(members.clone()),
                        ..Event::about(EventKind::CoordinatorDown, gone)
                    });
                }
            }
            for key in self.keys.keys().filter(|k| self.ring.owns(k)) {
                match owner_among(&before, key) {
                    Some(prev) if prev != self.ring.me() => {
                        *taken.entry(prev.to_owned()).or_default() += 1
                    }
                    _ => {}
                }
            }
        }
        for (from, keys) in taken {
            let why = if members.contains(&from) {
                format!("rebalanced from {from}")
            } else {
                format!("{from} {cause}")
            };
            let me = self.ring.me().to_owned();
            self.event(Event {
                cause: Some(why),
                keys: Some(keys),
                coordinators: Some(members.clone()),
                ..Event::about(EventKind::Takeover, &me)
            });
        }
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        for key in keys {
            if !self.owns(&key) {
                continue;
            }
            // Repeat a recent grant whose answer the previous owner may not
            // have sent (clients ignore a repeated answer).
            let repeat = self.keys.get(&key).and_then(|ks| {
                let g = ks.recent_grant.as_ref()?;
                let current_token = match &ks.current {
                    Current::Held { revision, record } => record.token_at(*revision),
                    Current::Vacant { .. } => return None,
                };
                (g.token == current_token && now.duration_since(g.at) < REGRANT_WINDOW).then(|| {
                    (
                        g.session.clone(),
                        Answer::Granted {
                            v: VERSION,
                            re: g.re.clone(),
                            key: ks.name.to_string(),
                            token: g.token,
                            ttl_ms: g.ttl_ms,
                            holds: 1,
                            waiters: ks.queue.len() as u32,
                        },
                    )
                })
            });
            if let Some((session, answer)) = repeat {
                self.answer(&session, answer);
            }
            self.step(&key, now);
        }
    }
}

/// Stores what our own write made of the key, unless the bucket already
/// showed it (or something newer); returns the events of the change.
fn set_current(ks: &mut KeyState, new: Current, applied: Applied, now: Instant) -> Vec<Event> {
    if revision_of(&new) <= revision_of(&ks.current) {
        return Vec::new();
    }
    let previous = std::mem::replace(&mut ks.current, new);
    ks.applied = next_applied(&previous, &ks.current, ks.applied, applied);
    transition_events(ks, &previous, false, now)
}

/// Puts the work of a write that did not land back where it was.
fn put_back(ks: &mut KeyState, inflight: Inflight) {
    match inflight {
        Inflight::Grant { waiter, ending, .. } => {
            ks.queue.push_front(waiter);
            if let Some(Ending::Released(op)) = ending {
                ks.ops.push_front(op);
            }
        }
        Inflight::Update { op, .. } => ks.ops.push_front(op),
        Inflight::End {
            ending: Ending::Released(op),
            ..
        } => ks.ops.push_front(op),
        Inflight::Unsure { was, .. } => put_back(ks, *was),
        Inflight::End { .. } | Inflight::Read => {}
    }
}

/// The release request a write that ends a hold applies (0: none).
fn ended_by(ending: Option<&Ending>) -> u64 {
    match ending {
        Some(Ending::Released(op)) => op.seq,
        _ => 0,
    }
}

/// Whether `op` is a release of a hold that has ended: one seen ending, or
/// the very release that ended it (replayed after it was applied).
fn settles(op: &HolderOp, applied: Applied) -> bool {
    match op.kind {
        HolderOpKind::Settled => true,
        HolderOpKind::Release { .. } => op.seq == applied.ended,
        _ => false,
    }
}

/// The lock events of a change from `previous` to `ks.current`: the end of
/// the previous hold, the start of a new one. Our note of the write says
/// why, when the change is the one we wrote.
fn transition_events(
    ks: &mut KeyState,
    previous: &Current,
    expired: bool,
    now: Instant,
) -> Vec<Event> {
    ks.changed_at = Some(now);
    let ours = |n: &Note| {
        n.expected == revision_of(previous)
            && match (&ks.current, &n.grantee) {
                (Current::Held { record, .. }, Some((session, owner))) => {
                    record.session == *session && record.owner == *owner
                }
                (Current::Vacant { .. }, None) => true,
                _ => false,
            }
    };
    let note = ks.note.take().map(|n| *n).filter(ours);
    let token_of = |c: &Current| match c {
        Current::Held { revision, record } => Some(record.token_at(*revision)),
        Current::Vacant { .. } => None,
    };
    let (before, after) = (token_of(previous), token_of(&ks.current));
    let (name, key) = (ks.name.as_str(), ks.name.key());
    let mut events = Vec::new();
    if let (Current::Held { record, .. }, true) = (previous, before != after) {
        let ending = note.as_ref().and_then(|n| n.ending.clone());
        let (kind, cause, by, reason) = match ending {
            Some(EndNote::Released) => (EventKind::Released, "released", None, None),
            Some(EndNote::SessionExpired) => (EventKind::Expired, "session", None, None),
            Some(EndNote::Revoked { by, reason }) => {
                (EventKind::Revoked, "revoked", Some(by), Some(reason))
            }
            None if expired => (EventKind::Expired, "lease", None, None),
            None => (EventKind::Released, "released", None, None),
        };
        events.push(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: before,
            cause: Some(cause.to_owned()),
            by,
            reason,
            acquired_ms: Some(record.acquired_ms),
            ..Event::lock(kind, name, key)
        });
    }
    if let (Current::Held { record, .. }, true) = (&ks.current, before != after) {
        events.push(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: after,
            ttl_ms: Some(record.lease_ms),
            waited_ms: note.as_ref().and_then(|n| n.waited_ms),
            handoff: Some(before.is_some()),
            ..Event::lock(EventKind::Granted, name, key)
        });
    }
    events
}

enum OpOutcome {
    Done,
    /// It would be refused (`not_holder`, `stale_token`) by a key state
    /// only seen through the watch, which may lag: a refusal ends the
    /// client's belief in its lock, so the key is read from the stream
    /// leader first.
    Verify(HolderOp),
    Write(HolderOp, LockRecord, Duration),
    End(Ending),
    Requeue(Waiter),
}

mod quota;
#[cfg(test)]
mod tests;
