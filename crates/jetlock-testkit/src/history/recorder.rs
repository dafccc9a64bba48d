//! What clients did and when: every acquire, release and reported loss,
//! with the interval in which it happened, and what the bucket said at the
//! end of the run.

use crate::belief::Mono;
use jetlock::FencingToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One recorded operation, by its position in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(usize);

/// How an acquire ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// No outcome recorded (yet): at the end of a history, a violation.
    Pending,
    Granted(FencingToken),
    /// Definitely not granted (busy, no wait).
    Refused,
    /// The client gave up without an answer (timeout, NATS error): the
    /// server may or may not have granted it.
    Unanswered,
}

/// How a release ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Pending,
    Ok,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    Acquire(AcquireOutcome),
    Release {
        token: FencingToken,
        outcome: ReleaseOutcome,
    },
    /// The client reported the hold of `token` lost.
    Lost {
        token: FencingToken,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Op {
    pub(super) key: String,
    pub(super) session: String,
    pub(super) kind: OpKind,
    pub(super) invoked: Mono,
    /// When the outcome was observed; `None` while pending.
    pub(super) completed: Option<Mono>,
    /// The client's own deadline for the hold, read at this operation
    /// (`LockGuard::deadline`), where the recorder read it.
    pub(super) deadline: Option<Mono>,
}

/// What the bucket said about a key at the end of a run.
#[derive(Debug, Clone)]
pub(super) struct FinalHolder {
    pub(super) key: String,
    pub(super) token: Option<FencingToken>,
    pub(super) observed: Mono,
}

#[derive(Debug, Default)]
pub(super) struct Recorded {
    pub(super) ops: Vec<Op>,
    pub(super) healed_at: Option<Mono>,
    pub(super) finals: Vec<FinalHolder>,
}

/// The operations of many tasks on many keys, in recording order. Cheap to
/// clone: every clone records into the same history.
#[derive(Debug, Clone, Default)]
pub struct History(pub(super) Arc<Mutex<Recorded>>);

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, op: Op) -> OpId {
        let mut r = self.0.lock().expect("history lock");
        r.ops.push(op);
        OpId(r.ops.len() - 1)
    }

    fn complete(&self, id: OpId, kind: impl FnOnce(&mut OpKind)) {
        self.complete_at(id, Mono::now(), kind)
    }

    fn complete_at(&self, id: OpId, now: Mono, kind: impl FnOnce(&mut OpKind)) {
        let mut r = self.0.lock().expect("history lock");
        let op = &mut r.ops[id.0];
        assert!(op.completed.is_none(), "operation {id:?} completed twice");
        kind(&mut op.kind);
        op.completed = Some(now);
    }

    /// Call just before `acquire`; then exactly one of [`History::granted`],
    /// [`History::refused`] or [`History::unanswered`].
    pub fn acquire_invoked(&self, key: &str, session: &str) -> OpId {
        self.acquire_invoked_at(key, session, Mono::now())
    }

    /// [`History::acquire_invoked`] at a time another process read.
    pub fn acquire_invoked_at(&self, key: &str, session: &str, at: Mono) -> OpId {
        self.push(Op {
            key: key.to_owned(),
            session: session.to_owned(),
            kind: OpKind::Acquire(AcquireOutcome::Pending),
            invoked: at,
            completed: None,
            deadline: None,
        })
    }

    pub fn granted(&self, id: OpId, token: FencingToken) {
        self.acquire_outcome(id, AcquireOutcome::Granted(token));
    }

    /// [`History::granted`] at a time another process read.
    pub fn granted_at(&self, id: OpId, token: FencingToken, at: Mono) {
        self.complete_at(id, at, |kind| match kind {
            OpKind::Acquire(o) => *o = AcquireOutcome::Granted(token),
            other => panic!("{id:?} is not an acquire: {other:?}"),
        });
    }

    /// The client's own deadline for the hold (`LockGuard::deadline`), read
    /// at operation `id`. Read at a release's invocation or at a loss, it
    /// ends the belief if it came first (see `belief.rs`).
    pub fn deadline(&self, id: OpId, at: Mono) {
        self.0.lock().expect("history lock").ops[id.0].deadline = Some(at);
    }

    pub fn refused(&self, id: OpId) {
        self.acquire_outcome(id, AcquireOutcome::Refused);
    }

    pub fn unanswered(&self, id: OpId) {
        self.acquire_outcome(id, AcquireOutcome::Unanswered);
    }

    fn acquire_outcome(&self, id: OpId, outcome: AcquireOutcome) {
        self.complete(id, |kind| match kind {
            OpKind::Acquire(o) => *o = outcome,
            other => panic!("{id:?} is not an acquire: {other:?}"),
        });
    }

    /// Call just before `release` of the hold of `token`; then
    /// [`History::released`].
    pub fn release_invoked(&self, key: &str, session: &str, token: FencingToken) -> OpId {
        self.push(Op {
            key: key.to_owned(),
            session: session.to_owned(),
            kind: OpKind::Release {
                token,
                outcome: ReleaseOutcome::Pending,
            },
            invoked: Mono::now(),
            completed: None,
            deadline: None,
        })
    }

    /// The release answered: `ok` when it succeeded.
    pub fn released(&self, id: OpId, ok: bool) {
        let outcome = if ok {
            ReleaseOutcome::Ok
        } else {
            ReleaseOutcome::Failed
        };
        self.complete(id, |kind| match kind {
            OpKind::Release { outcome: o, .. } => *o = outcome,
            other => panic!("{id:?} is not a release: {other:?}"),
        });
    }

    /// The client reported the hold of `token` lost (now).
    pub fn lost(&self, key: &str, session: &str, token: FencingToken) -> OpId {
        self.lost_at(key, session, token, Mono::now())
    }

    /// [`History::lost`] at a time another process read.
    pub fn lost_at(&self, key: &str, session: &str, token: FencingToken, at: Mono) -> OpId {
        self.push(Op {
            key: key.to_owned(),
            session: session.to_owned(),
            kind: OpKind::Lost { token },
            invoked: at,
            completed: Some(at),
            deadline: None,
        })
    }

    /// Per key, the highest token whose grant a client observed so far:
    /// the acknowledged writes a crash must not lose.
    pub fn acknowledged_grants(&self) -> HashMap<String, FencingToken> {
        let r = self.0.lock().expect("history lock");
        let mut out: HashMap<String, FencingToken> = HashMap::new();
        for op in &r.ops {
            if let OpKind::Acquire(AcquireOutcome::Granted(token)) = op.kind {
                let top = out.entry(op.key.clone()).or_insert(token);
                *top = (*top).max(token);
            }
        }
        out
    }

    /// The faults of the run healed now (the last member restarted, the
    /// partition closed).
    pub fn healed(&self) {
        self.0.lock().expect("history lock").healed_at = Some(Mono::now());
    }

    /// At the end of the run, the bucket says `key` is held with `token`
    /// (from [`jetlock::Client::holder`]), or free (`None`).
    pub fn final_holder(&self, key: &str, token: Option<FencingToken>) {
        self.0
            .lock()
            .expect("history lock")
            .finals
            .push(FinalHolder {
                key: key.to_owned(),
                token,
                observed: Mono::now(),
            });
    }
}
