//! A history checker for lock tests (issue 6, item 1).
//!
//! Tasks and processes record what their clients *observed* into a shared
//! [`History`]: every acquire, release and reported loss, each with the
//! interval from just before the call to just after its outcome on
//! `CLOCK_MONOTONIC` ([`Mono`]: holder processes print their readings and
//! the test records them), and with the client's own deadline where it was
//! read. Writes to the protected resource go through a [`FencedLedger`].
//! [`check`] then judges the whole run and returns a [`Report`] of
//! [`Violation`]s; the beliefs it derives are judged by `belief.rs`.
//!
//! Time is used only to *order* operations (this happened before that
//! one started), never to assert how long something took. Every rule is
//! conservative: a lock that keeps the session contract cannot produce a
//! violation (see `docs/RELIABILITY.md`, "History checker").
#![allow(dead_code)]

use super::belief::{judge, Belief, BeliefCounts, BeliefViolation, Ended, Mono};
use jetlock::FencingToken;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
enum OpKind {
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
struct Op {
    key: String,
    session: String,
    kind: OpKind,
    invoked: Mono,
    /// When the outcome was observed; `None` while pending.
    completed: Option<Mono>,
    /// The client's own deadline for the hold, read at this operation
    /// (`LockGuard::deadline`), where the recorder read it.
    deadline: Option<Mono>,
}

/// What the bucket said about a key at the end of a run.
#[derive(Debug, Clone)]
struct FinalHolder {
    key: String,
    token: Option<FencingToken>,
    observed: Mono,
}

#[derive(Debug, Default)]
struct Recorded {
    ops: Vec<Op>,
    healed_at: Option<Mono>,
    finals: Vec<FinalHolder>,
}

/// The operations of many tasks on many keys, in recording order. Cheap to
/// clone: every clone records into the same history.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Recorded>>);

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

/// One write accepted by the [`FencedLedger`].
#[derive(Debug, Clone)]
pub struct Write {
    pub token: FencingToken,
    pub session: String,
    pub at: Mono,
}

#[derive(Debug, Default)]
struct Ledger {
    writes: HashMap<String, Vec<Write>>,
    rejections: u64,
}

/// A resource protected by fencing tokens: per key, a write is accepted
/// only with a token above every token accepted so far, or equal to the
/// highest when it comes from the session that wrote it (one holder writes
/// many times with one token). Keeps every accepted write for [`check`].
#[derive(Debug, Clone, Default)]
pub struct FencedLedger(Arc<Mutex<Ledger>>);

impl FencedLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes to `key` as `session` holding `token`; `false` (and counted)
    /// when refused.
    pub fn write(&self, key: &str, session: &str, token: FencingToken) -> bool {
        let mut l = self.0.lock().expect("ledger lock");
        let accepted = match l.writes.get(key).and_then(|w| w.last()) {
            None => true,
            Some(last) => token > last.token || (token == last.token && session == last.session),
        };
        if accepted {
            l.writes.entry(key.to_owned()).or_default().push(Write {
                token,
                session: session.to_owned(),
                at: Mono::now(),
            });
        } else {
            l.rejections += 1;
        }
        accepted
    }

    /// The highest token accepted for `key`.
    pub fn highest(&self, key: &str) -> Option<FencingToken> {
        let l = self.0.lock().expect("ledger lock");
        l.writes.get(key).and_then(|w| w.last()).map(|w| w.token)
    }

    pub fn rejections(&self) -> u64 {
        self.0.lock().expect("ledger lock").rejections
    }

    pub fn accepted(&self) -> usize {
        let l = self.0.lock().expect("ledger lock");
        l.writes.values().map(Vec::len).sum()
    }
}

/// A grant as the client saw it: who, which token, and when.
#[derive(Debug, Clone)]
pub struct Grant {
    pub session: String,
    pub token: FencingToken,
    /// When the acquire was invoked and when the grant was observed.
    pub invoked: Mono,
    pub granted: Mono,
}

/// Something a correct lock cannot do.
#[derive(Debug, Clone)]
pub enum Violation {
    /// Two sessions believed they held one key at the same time, or tokens
    /// went down in the order beliefs began (`belief.rs`).
    Belief(BeliefViolation),
    /// `later` was requested after `earlier` was granted, yet its token is
    /// not higher (or one token was granted to two sessions).
    TokenNotIncreasing {
        key: String,
        earlier: Grant,
        later: Grant,
    },
    /// An operation with no outcome at the end of the history.
    Unanswered {
        key: String,
        session: String,
        op: &'static str,
    },
    /// `key` was still held at the end, long after the faults healed, by a
    /// session that had gone quiet before they healed.
    Stuck {
        key: String,
        token: FencingToken,
        session: Option<String>,
    },
    /// The ledger accepted `token` after it had accepted `after`.
    LedgerWentBack {
        key: String,
        token: FencingToken,
        after: FencingToken,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Belief(v) => write!(f, "{v}"),
            Violation::TokenNotIncreasing {
                key,
                earlier,
                later,
            } => write!(
                f,
                "token did not increase on {key}: {} got {} after {} got {}",
                later.session, later.token, earlier.session, earlier.token
            ),
            Violation::Unanswered { key, session, op } => {
                write!(f, "{op} of {key} by {session} never answered")
            }
            Violation::Stuck {
                key,
                token,
                session,
            } => write!(
                f,
                "{key} still held with token {token} by {} past 2×TTL after healing",
                session
                    .as_deref()
                    .unwrap_or("a session with no recorded grant")
            ),
            Violation::LedgerWentBack { key, token, after } => write!(
                f,
                "ledger accepted token {token} on {key} after token {after}"
            ),
        }
    }
}

/// The verdict of [`check`]: what happened, and what should not have.
#[derive(Debug, Default)]
pub struct Report {
    pub grants: u64,
    pub refused: u64,
    /// Acquires the client gave up on (timeout, NATS error).
    pub unanswered: u64,
    pub releases: u64,
    pub failed_releases: u64,
    pub losses: u64,
    pub writes: u64,
    pub rejections: u64,
    /// Faults injected; left for the caller to fill in.
    pub faults: u64,
    pub beliefs: BeliefCounts,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn assert_clean(&self) {
        assert!(self.violations.is_empty(), "history violations:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grants {}, refused {}, unanswered {}, releases {} ({} failed), losses {}, \
             writes {} ({} rejected), faults {}, beliefs {} ({} ended by the client's own \
             deadline), overlapping beliefs {} (longest {:.1} ms), violations {}",
            self.grants,
            self.refused,
            self.unanswered,
            self.releases,
            self.failed_releases,
            self.losses,
            self.writes,
            self.rejections,
            self.faults,
            self.beliefs.beliefs,
            self.beliefs.ended_by_deadline,
            self.beliefs.overlapping,
            self.beliefs.longest_overlap_ms,
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// Judges `history` and `ledger` with leases of `ttl`. See
/// `docs/RELIABILITY.md` ("History checker") for each rule.
pub fn check(history: &History, ledger: &FencedLedger, ttl: Duration) -> Report {
    let recorded = history.0.lock().expect("history lock");
    let mut report = Report::default();

    // Beliefs per key, each from its grant's observation.
    let mut beliefs: HashMap<&str, Vec<Belief>> = HashMap::new();
    // Per (key, session, token): the end events of the hold, in order
    // (when, how, the client's deadline read then).
    type EndEvent = (Mono, Ended, Option<Mono>);
    let mut ends: HashMap<(&str, &str, FencingToken), Vec<EndEvent>> = HashMap::new();
    // Per session: the end of its last recorded activity.
    let mut last_activity: HashMap<&str, Mono> = HashMap::new();
    for op in &recorded.ops {
        let seen = op.completed.unwrap_or(op.invoked);
        let last = last_activity.entry(&op.session).or_insert(seen);
        *last = (*last).max(seen);
        let end = match op.kind {
            OpKind::Acquire(outcome) => {
                match outcome {
                    AcquireOutcome::Pending => report.violations.push(Violation::Unanswered {
                        key: op.key.clone(),
                        session: op.session.clone(),
                        op: "acquire",
                    }),
                    AcquireOutcome::Granted(token) => {
                        report.grants += 1;
                        let start = op.completed.expect("a granted acquire completed");
                        let mut belief = Belief {
                            key: op.key.clone(),
                            session: op.session.clone(),
                            token,
                            invoked: op.invoked,
                            start,
                            end: None,
                            ended: Ended::Open,
                        };
                        // A grant that came in past the client's own
                        // deadline is no belief at all.
                        if op.deadline.is_some_and(|d| d < start) {
                            belief.end_at(start, Ended::Deadline, op.deadline);
                        }
                        beliefs.entry(&op.key).or_default().push(belief);
                    }
                    AcquireOutcome::Refused => report.refused += 1,
                    AcquireOutcome::Unanswered => report.unanswered += 1,
                }
                None
            }
            OpKind::Release { token, outcome } => {
                report.releases += 1;
                match outcome {
                    ReleaseOutcome::Pending => report.violations.push(Violation::Unanswered {
                        key: op.key.clone(),
                        session: op.session.clone(),
                        op: "release",
                    }),
                    ReleaseOutcome::Failed => report.failed_releases += 1,
                    ReleaseOutcome::Ok => {}
                }
                Some((token, Ended::Released))
            }
            OpKind::Lost { token } => {
                report.losses += 1;
                Some((token, Ended::Lost))
            }
        };
        if let Some((token, how)) = end {
            ends.entry((&op.key, &op.session, token))
                .or_default()
                .push((op.invoked, how, op.deadline));
        }
    }

    for (key, beliefs) in beliefs.iter_mut() {
        for b in beliefs.iter_mut() {
            // A reentrant hold's end events end each of its beliefs that
            // began before them.
            let events = ends
                .get(&(*key, b.session.as_str(), b.token))
                .cloned()
                .unwrap_or_default();
            for (at, how, deadline) in events {
                if at >= b.start {
                    b.end_at(at, how, deadline);
                }
            }
        }
        let mut found = Vec::new();
        judge(beliefs, &mut report.beliefs, &mut found);
        report
            .violations
            .extend(found.into_iter().map(Violation::Belief));
        let grants: Vec<Grant> = beliefs
            .iter()
            .map(|b| Grant {
                session: b.session.clone(),
                token: b.token,
                invoked: b.invoked,
                granted: b.start,
            })
            .collect();
        tokens_in_order(key, &grants, &mut report.violations);
    }

    // Stuck locks: still held long after the faults healed.
    if let Some(healed_at) = recorded.healed_at {
        for f in &recorded.finals {
            let Some(token) = f.token else { continue };
            if f.observed < healed_at + 2 * ttl {
                continue; // too early to call it stuck
            }
            let grant = beliefs
                .get(f.key.as_str())
                .and_then(|b| b.iter().find(|b| b.token == token));
            let stuck = match grant {
                // Nobody recorded this grant: no recorded client can be
                // keeping it alive.
                None => true,
                Some(b) => {
                    let quiet = last_activity
                        .get(b.session.as_str())
                        .is_none_or(|t| *t < healed_at);
                    quiet && f.observed.ms_since(b.start) > (2 * ttl).as_millis() as f64
                }
            };
            if stuck {
                report.violations.push(Violation::Stuck {
                    key: f.key.clone(),
                    token,
                    session: grant.map(|b| b.session.clone()),
                });
            }
        }
    }
    drop(recorded);

    let ledger = ledger.0.lock().expect("ledger lock");
    report.rejections = ledger.rejections;
    for (key, writes) in &ledger.writes {
        report.writes += writes.len() as u64;
        let mut highest = FencingToken(0);
        for w in writes {
            if w.token < highest {
                report.violations.push(Violation::LedgerWentBack {
                    key: key.clone(),
                    token: w.token,
                    after: highest,
                });
            }
            highest = highest.max(w.token);
        }
    }
    report
}

/// Rule 2: a grant requested after another was observed must carry a
/// higher token; one token never goes to two sessions.
fn tokens_in_order(key: &str, grants: &[Grant], out: &mut Vec<Violation>) {
    let mut by_observed: Vec<&Grant> = grants.iter().collect();
    by_observed.sort_by_key(|g| g.granted);
    let mut by_invoked: Vec<&Grant> = grants.iter().collect();
    by_invoked.sort_by_key(|g| g.invoked);
    // The highest-token grant among those observed before the current
    // one's invocation.
    let mut highest: Option<&Grant> = None;
    let mut next = 0;
    for g in by_invoked {
        while next < by_observed.len() && by_observed[next].granted < g.invoked {
            let o = by_observed[next];
            if highest.is_none_or(|h| o.token > h.token) {
                highest = Some(o);
            }
            next += 1;
        }
        if let Some(h) = highest {
            let reentrant = h.session == g.session && h.token == g.token;
            if g.token <= h.token && !reentrant {
                out.push(Violation::TokenNotIncreasing {
                    key: key.to_owned(),
                    earlier: h.clone(),
                    later: g.clone(),
                });
            }
        }
    }
    let mut owner: HashMap<FencingToken, &Grant> = HashMap::new();
    for g in grants {
        match owner.get(&g.token) {
            Some(o) if o.session != g.session => out.push(Violation::TokenNotIncreasing {
                key: key.to_owned(),
                earlier: (*o).clone(),
                later: g.clone(),
            }),
            _ => {
                owner.insert(g.token, g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checker must be able to fail, or the tests built on it prove
    //! nothing: hand-made bad histories, one per violation kind.
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn t(n: u64) -> FencingToken {
        FencingToken(n)
    }

    /// One session's full acquire → release cycle.
    fn cycle(h: &History, l: &FencedLedger, session: &str, token: u64) {
        let a = h.acquire_invoked("k", session);
        h.granted(a, t(token));
        assert!(l.write("k", session, t(token)));
        let r = h.release_invoked("k", session, t(token));
        h.released(r, true);
    }

    fn kinds(r: &Report) -> Vec<&'static str> {
        r.violations
            .iter()
            .map(|v| match v {
                Violation::Belief(BeliefViolation::Overlap { .. }) => "overlap",
                Violation::Belief(BeliefViolation::TokenNotRising { .. }) => "belief token",
                Violation::TokenNotIncreasing { .. } => "token",
                Violation::Unanswered { .. } => "unanswered",
                Violation::Stuck { .. } => "stuck",
                Violation::LedgerWentBack { .. } => "ledger",
            })
            .collect()
    }

    #[test]
    fn history_clean_history_passes() {
        let (h, l) = (History::new(), FencedLedger::new());
        cycle(&h, &l, "a", 1);
        cycle(&h, &l, "b", 4);
        cycle(&h, &l, "a", 9);
        // A lost hold, and an unknown outcome, end cleanly too.
        let a = h.acquire_invoked("k", "b");
        h.granted(a, t(12));
        h.lost("k", "b", t(12));
        let a = h.acquire_invoked("k", "a");
        h.unanswered(a);
        assert!(!l.write("k", "a", t(4)), "the ledger refuses a stale token");
        h.healed();
        h.final_holder("k", None);
        let r = check(&h, &l, TTL);
        r.assert_clean();
        assert_eq!((r.grants, r.releases, r.losses, r.unanswered), (4, 3, 1, 1));
        assert_eq!((r.writes, r.rejections), (3, 1));
    }

    #[test]
    fn history_catches_overlap_and_token_going_down() {
        // b is granted a higher token while a still holds: an overlap only.
        let (h, l) = (History::new(), FencedLedger::new());
        let a = h.acquire_invoked("k", "a");
        h.granted(a, t(5));
        let b = h.acquire_invoked("k", "b");
        h.granted(b, t(6));
        let r = h.release_invoked("k", "a", t(5));
        h.released(r, true);
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["overlap"], "{r}");

        // b asks after a's grant and release, and gets a lower token.
        let (h, l) = (History::new(), FencedLedger::new());
        cycle(&h, &l, "a", 5);
        let b = h.acquire_invoked("k", "b");
        h.granted(b, t(3));
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["belief token", "token"], "{r}");

        // Both at once: b granted a lower token while a holds.
        let (h, l) = (History::new(), FencedLedger::new());
        let a = h.acquire_invoked("k", "a");
        h.granted(a, t(5));
        let b = h.acquire_invoked("k", "b");
        h.granted(b, t(3));
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["overlap", "belief token", "token"], "{r}");
        assert_eq!(r.beliefs.overlapping, 1);
    }

    #[test]
    fn history_ends_a_belief_at_the_clients_own_deadline() {
        // a is granted, then stopped: its deadline passes at +50 ms; b is
        // granted at +100 ms; a wakes at +150 ms and observes the loss.
        let base = Mono::ago(Duration::from_secs(1));
        let ms = |m| base + Duration::from_millis(m);
        let h = History::new();
        let a = h.acquire_invoked_at("k", "a", ms(0));
        h.granted_at(a, t(5), ms(1));
        let b = h.acquire_invoked_at("k", "b", ms(2));
        h.granted_at(b, t(6), ms(100));
        let lost = h.lost_at("k", "a", t(5), ms(150));
        h.deadline(lost, ms(50));
        let r = check(&h, &FencedLedger::new(), TTL);
        r.assert_clean();
        assert_eq!((r.beliefs.beliefs, r.beliefs.ended_by_deadline), (2, 1));
        // Without the deadline (a believed until it woke) they overlap.
        let h = History::new();
        let a = h.acquire_invoked_at("k", "a", ms(0));
        h.granted_at(a, t(5), ms(1));
        let b = h.acquire_invoked_at("k", "b", ms(2));
        h.granted_at(b, t(6), ms(100));
        h.lost_at("k", "a", t(5), ms(150));
        let r = check(&h, &FencedLedger::new(), TTL);
        assert_eq!(kinds(&r), ["overlap"], "{r}");
        assert_eq!(r.beliefs.overlapping, 1);
    }

    #[test]
    fn history_catches_unanswered_and_stuck() {
        let (h, l) = (History::new(), FencedLedger::new());
        let a = h.acquire_invoked("k", "a");
        h.granted(a, t(7)); // a goes quiet holding k
        h.acquire_invoked("j", "b"); // never answered
                                     // Pretend the run went on: a was granted 10 s ago, the faults
                                     // healed 5 s ago, and the bucket still says a holds k (times shifted
                                     // back instead of waited for).
        let ago = |s| Mono::ago(Duration::from_secs(s));
        {
            let mut rec = h.0.lock().unwrap();
            rec.ops[0].invoked = ago(11);
            rec.ops[0].completed = Some(ago(10));
            rec.healed_at = Some(ago(5));
        }
        h.final_holder("k", Some(t(7)));
        let r = check(&h, &l, Duration::from_secs(1));
        assert_eq!(kinds(&r), ["unanswered", "stuck"], "{r}");
        // Within 2×TTL of healing it is not stuck yet.
        let r = check(&h, &l, Duration::from_secs(3));
        assert_eq!(kinds(&r), ["unanswered"], "{r}");
    }

    #[test]
    fn history_catches_a_ledger_that_went_back() {
        let (h, l) = (History::new(), FencedLedger::new());
        cycle(&h, &l, "a", 8);
        // A broken ledger: a lower token slipped in past the check.
        l.0.lock()
            .unwrap()
            .writes
            .get_mut("k")
            .unwrap()
            .push(Write {
                token: t(2),
                session: "b".into(),
                at: Mono::now(),
            });
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["ledger"], "{r}");
    }
}
