//! The coordinator's state machine: per-key FIFO queues, holder operations,
//! session deaths and revocations, turned into CAS writes and answers.
//!
//! It is synchronous and does no I/O: the runtime (`runtime.rs`) feeds it what
//! NATS delivers (requests in stream order, KV changes, heartbeats, write
//! results, the clock) and carries out the [`Action`]s it returns. That
//! keeps every decision testable without a server.
//!
//! Every coordinator runs the same machine over every key it hears of (it
//! watches the whole bucket), but only the ring's owner of a key *acts* on
//! it: writes, answers, deletes finished requests. In a deployment whose
//! requests are partitioned a coordinator reads only its partitions'
//! requests, and reads a partition it gains from the stream before acting
//! there (`partitions.rs`); in one that is not, it reads every request and
//! keeps a mirror of the others' queues. Safety never rests on either: each
//! ownership change is one CAS write expecting the revision the machine
//! last saw, and a stale machine's write simply loses.
//!
//! Fairness: a key's waiters are granted in stream order. A released lock
//! with waiters goes to the head waiter by one write (holder → waiter), so
//! the key is never vacant while anyone waits and a newcomer cannot barge in.
//!
//! Where things are: this file holds the types and the state; `admit.rs`
//! takes requests in (checks, duplicates, limits; `quota.rs` the
//! per-session quotas) and files them on their key; `observe.rs` applies
//! what the bucket says (watched changes, reads, our writes' results);
//! `decide.rs` is the per-key state machine (who is granted next,
//! `grantee`; holder operations; revocations); `effects.rs` what goes out
//! (answers, events, forgetting finished requests); `sessions.rs`
//! heartbeats, proof of hearing, deaths, the ring and the clock;
//! `replay.rs` lost acks and replays; `views.rs` what operators read.

use super::hearing::{self, Hearings, HeldAcks, Verdict};
use super::membership::{self, key_owner_among, Ring, Sessions, Touch};
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

mod activity;
mod admit;
mod deaths;
mod decide;
mod effects;
mod holding;
mod keys;
mod observe;
mod partitions;
mod replay;
mod sessions;
mod shared;
mod views;
use activity::Busy;
use holding::{Holders, Holding, Record};
use keys::Keys;
use observe::ended_by;
use replay::{adopt_reentries, next_applied, Sent};
pub use replay::{Applied, Stamp};
use shared::{Shared, Strings};

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
    /// (`hearing::HeldAcks`). On: without it, a coordinator cut off by a
    /// route partition together with a client's server confirms that
    /// client while the other side hands its locks on (docs/RELIABILITY.md,
    /// "Deterministic simulation"). Off only for tests of other rules.
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
            confirm_with_proof: true,
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
    /// Ask the other coordinators when they last heard `sessions` (a
    /// `HeardQuery` numbered `round`); report each answer with
    /// [`Engine::heard_reply`] (`deaths.rs`).
    AskHeard { round: u64, sessions: Vec<String> },
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
    session: Shared,
    id: Shared,
    owner: Shared,
    ttl_ms: u64,
    deadline: Instant,
    try_lock: bool,
    preempt: bool,
    arrived: Instant,
}

/// A request about the current hold, run in arrival order.
#[derive(Debug, Clone)]
struct HolderOp {
    /// Its stream sequence; 0 for an unstored release.
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
/// size is most of the coordinator's memory per lock: what only a key with
/// waiters, holder operations, a write in flight or a hold a coordinator
/// granted needs is in [`Busy`], allocated while it is in use (`jetlock
/// bench --only memory` measures the memory per held lock).
#[derive(Debug)]
struct KeyState {
    /// The lock's key; its name is decoded from it when needed.
    key: Box<str>,
    current: Holding,
    /// When `current` last changed here.
    changed_at: Option<Instant>,
    /// The activity, and the requests `current` is known to have applied
    /// (see `replay.rs`).
    busy: Busy,
}

impl KeyState {
    fn new(name: &LockName) -> Self {
        KeyState {
            key: name.key().into(),
            current: Holding::Vacant { revision: 0 },
            changed_at: None,
            busy: Busy::default(),
        }
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn applied(&self) -> Applied {
        self.busy.applied()
    }

    fn set_applied(&mut self, applied: Applied) {
        self.busy.set_applied(applied);
    }

    fn name(&self) -> LockName {
        LockName::from_key(&self.key).expect("a key state's key is a lock name's key")
    }

    fn idle(&self) -> bool {
        matches!(self.current, Holding::Vacant { .. })
            && self.busy.queue.is_empty()
            && self.busy.ops.is_empty()
            && self.busy.inflight.is_none()
            && self.busy.lapsed.is_empty()
    }
}

fn revision_of(c: &Current) -> u64 {
    match c {
        Current::Vacant { revision } | Current::Held { revision, .. } => *revision,
    }
}

#[derive(Debug)]
struct Tracked {
    key: Shared,
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
    keys: Keys,
    /// The holders of the records in `keys`.
    holders: Holders,
    /// Requests by (session, request id), kept for the de-duplication
    /// window once done.
    requests: HashMap<(Shared, Shared), Tracked>,
    /// Final answers seen before their request arrived from the stream.
    answered_early: HashMap<(String, String), Instant>,
    /// When a key must be stepped again (a wait or a revocation ends).
    timers: BinaryHeap<Reverse<(Instant, Shared)>>,
    /// The sessions, owners and keys that waiters, requests and timers
    /// share.
    strings: Strings,
    ready: bool,
    last_tick: Option<Instant>,
    /// Proof that this coordinator could hear the cluster, per class of
    /// session timeout: deaths need it.
    hearing: Hearings,
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
    /// Questions to the other coordinators before deaths stand
    /// (`deaths.rs`), by number; the sessions they are about.
    rounds: HashMap<u64, deaths::Round>,
    dying: HashMap<String, u64>,
    rounds_asked: u64,
    /// The request partitions read and being caught up on
    /// (`partitions.rs`).
    parts: partitions::Parts,
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
            keys: Keys::default(),
            holders: Holders::default(),
            requests: HashMap::default(),
            answered_early: HashMap::default(),
            timers: BinaryHeap::new(),
            strings: Strings::default(),
            ready: false,
            last_tick: None,
            hearing: Hearings::default(),
            held_acks: HeldAcks::default(),
            next_sweep: None,
            writes_sent: 0,
            out: Vec::new(),
            stats: Stats::default(),
            loads: HashMap::default(),
            unheard: HashMap::default(),
            rounds: HashMap::default(),
            dying: HashMap::default(),
            rounds_asked: 0,
            parts: partitions::Parts::default(),
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

    /// The request stream and the bucket are read up to now: start acting.
    pub fn set_ready(&mut self, now: Instant) {
        self.ready = true;
        let up = Event {
            coordinators: Some(self.ring.members()),
            ..Event::about(EventKind::CoordinatorUp, self.ring.me())
        };
        self.event(up);
        let keys: Vec<String> = self.keys.keys().map(str::to_owned).collect();
        for key in keys {
            self.step(&key, now);
        }
        self.send_held_refusals();
        self.tell_queued_waiters();
    }

    /// Waiters read while catching up were told nothing: the ones still
    /// waiting on a key this coordinator serves hear `queued` with their
    /// place now (a waiter that heard it from a coordinator before ignores
    /// the repeat).
    fn tell_queued_waiters(&mut self) {
        let mut told = Vec::new();
        for ks in self.keys.values() {
            if !self.owns(&ks.key) {
                continue;
            }
            let busy = ks.busy.inflight.is_some() || matches!(ks.current, Holding::Held { .. });
            for (i, w) in ks.busy.queue.iter().enumerate() {
                // A try-lock is answered at once; a head of a free key is
                // being granted.
                if w.try_lock || (i == 0 && !busy) {
                    continue;
                }
                let answer = Answer::Queued {
                    v: VERSION,
                    re: w.id.to_string(),
                    key: ks.name().to_string(),
                    position: i as u32 + 1,
                };
                told.push((w.session.to_string(), answer));
            }
        }
        for (session, answer) in told {
            self.answer(&session, answer);
        }
    }
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
