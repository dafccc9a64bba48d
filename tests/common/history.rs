//! A history checker for lock tests (issue 6, item 1).
//!
//! Tasks record what their clients *observed* into a shared [`History`]:
//! every acquire, release and reported loss, each with the real-time
//! interval from just before the call to just after its outcome. Writes to
//! the protected resource go through a [`FencedLedger`]. [`check`] then
//! judges the whole run and returns a [`Report`] of [`Violation`]s.
//!
//! Real time is used only to *order* operations (this happened before that
//! one started), never to assert how long something took. Every rule is
//! conservative: a correct lock cannot produce a violation, because each
//! rule only compares intervals that a correct lock's server-side history
//! is known to contain (see `docs/RELIABILITY.md`, "History checker").
#![allow(dead_code)]

use jetlock::FencingToken;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    invoked: Instant,
    /// When the outcome was observed; `None` while pending.
    completed: Option<Instant>,
}

/// What the bucket said about a key at the end of a run.
#[derive(Debug, Clone)]
struct FinalHolder {
    key: String,
    token: Option<FencingToken>,
    observed: Instant,
}

#[derive(Debug, Default)]
struct Recorded {
    ops: Vec<Op>,
    healed_at: Option<Instant>,
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
        let now = Instant::now();
        let mut r = self.0.lock().expect("history lock");
        let op = &mut r.ops[id.0];
        assert!(op.completed.is_none(), "operation {id:?} completed twice");
        kind(&mut op.kind);
        op.completed = Some(now);
    }

    /// Call just before `acquire`; then exactly one of [`History::granted`],
    /// [`History::refused`] or [`History::unanswered`].
    pub fn acquire_invoked(&self, key: &str, session: &str) -> OpId {
        self.push(Op {
            key: key.to_owned(),
            session: session.to_owned(),
            kind: OpKind::Acquire(AcquireOutcome::Pending),
            invoked: Instant::now(),
            completed: None,
        })
    }

    pub fn granted(&self, id: OpId, token: FencingToken) {
        self.acquire_outcome(id, AcquireOutcome::Granted(token));
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
            invoked: Instant::now(),
            completed: None,
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
    pub fn lost(&self, key: &str, session: &str, token: FencingToken) {
        let now = Instant::now();
        self.push(Op {
            key: key.to_owned(),
            session: session.to_owned(),
            kind: OpKind::Lost { token },
            invoked: now,
            completed: Some(now),
        });
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
        self.0.lock().expect("history lock").healed_at = Some(Instant::now());
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
                observed: Instant::now(),
            });
    }
}

/// One write accepted by the [`FencedLedger`].
#[derive(Debug, Clone)]
pub struct Write {
    pub token: FencingToken,
    pub session: String,
    pub at: Instant,
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
                at: Instant::now(),
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
    pub invoked: Instant,
    pub granted: Instant,
}

/// Something a correct lock cannot do.
#[derive(Debug, Clone)]
pub enum Violation {
    /// Two sessions believed they held `key` at the same time.
    Overlap {
        key: String,
        first: Grant,
        second: Grant,
    },
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
            Violation::Overlap { key, first, second } => write!(
                f,
                "overlap on {key}: {} (token {}) and {} (token {}) held it at once",
                first.session, first.token, second.session, second.token
            ),
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
             writes {} ({} rejected), faults {}, violations {}",
            self.grants,
            self.refused,
            self.unanswered,
            self.releases,
            self.failed_releases,
            self.losses,
            self.writes,
            self.rejections,
            self.faults,
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// A hold as the client believed it: from the grant's observation to the
/// release's invocation or the loss report (`None`: never ended).
struct Hold {
    grant: Grant,
    end: Option<Instant>,
}

/// Judges `history` and `ledger` with leases of `ttl`. See
/// `docs/RELIABILITY.md` ("History checker") for each rule.
pub fn check(history: &History, ledger: &FencedLedger, ttl: Duration) -> Report {
    let recorded = history.0.lock().expect("history lock");
    let mut report = Report::default();

    // Grants per key, and the end of each hold.
    let mut holds: HashMap<&str, Vec<Hold>> = HashMap::new();
    // Per (key, session, token): when the hold's end was first seen.
    let mut ends: HashMap<(&str, &str, FencingToken), Instant> = HashMap::new();
    // Per session: the end of its last recorded activity.
    let mut last_activity: HashMap<&str, Instant> = HashMap::new();
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
                        holds.entry(&op.key).or_default().push(Hold {
                            grant: Grant {
                                session: op.session.clone(),
                                token,
                                invoked: op.invoked,
                                granted: op.completed.expect("a granted acquire completed"),
                            },
                            end: None,
                        });
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
                Some((token, op.invoked))
            }
            OpKind::Lost { token } => {
                report.losses += 1;
                Some((token, op.invoked))
            }
        };
        if let Some((token, at)) = end {
            let e = ends.entry((&op.key, &op.session, token)).or_insert(at);
            *e = (*e).min(at);
        }
    }

    for (key, holds) in holds.iter_mut() {
        for h in holds.iter_mut() {
            h.end = ends
                .get(&(*key, h.grant.session.as_str(), h.grant.token))
                .copied();
        }
        overlaps(key, holds, &mut report.violations);
        tokens_in_order(key, holds, &mut report.violations);
    }

    // Stuck locks: still held long after the faults healed.
    if let Some(healed_at) = recorded.healed_at {
        for f in &recorded.finals {
            let Some(token) = f.token else { continue };
            if f.observed < healed_at + 2 * ttl {
                continue; // too early to call it stuck
            }
            let grant = holds
                .get(f.key.as_str())
                .and_then(|h| h.iter().find(|h| h.grant.token == token))
                .map(|h| &h.grant);
            let stuck = match grant {
                // Nobody recorded this grant: no recorded client can be
                // keeping it alive.
                None => true,
                Some(g) => {
                    let quiet = last_activity
                        .get(g.session.as_str())
                        .is_none_or(|t| *t < healed_at);
                    quiet && f.observed.duration_since(g.granted) > 2 * ttl
                }
            };
            if stuck {
                report.violations.push(Violation::Stuck {
                    key: f.key.clone(),
                    token,
                    session: grant.map(|g| g.session.clone()),
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

/// Rule 1: holds of one key by different sessions must not overlap. A
/// sweep in order of observed grant, against the hold that ends last so far.
fn overlaps(key: &str, holds: &mut [Hold], out: &mut Vec<Violation>) {
    holds.sort_by_key(|h| h.grant.granted);
    let mut longest: Option<&Hold> = None;
    for h in holds.iter() {
        if let Some(prev) = longest {
            let reentrant =
                prev.grant.session == h.grant.session && prev.grant.token == h.grant.token;
            let still_held = prev.end.is_none_or(|end| h.grant.granted < end);
            if still_held && !reentrant {
                out.push(Violation::Overlap {
                    key: key.to_owned(),
                    first: prev.grant.clone(),
                    second: h.grant.clone(),
                });
            }
        }
        let ends_later = match (longest.map(|l| l.end), h.end) {
            (None, _) => true,
            (Some(None), _) => false,
            (Some(Some(_)), None) => true,
            (Some(Some(a)), Some(b)) => b > a,
        };
        if ends_later {
            longest = Some(h);
        }
    }
}

/// Rule 2: a grant requested after another was observed must carry a
/// higher token; one token never goes to two sessions.
fn tokens_in_order(key: &str, holds: &[Hold], out: &mut Vec<Violation>) {
    let mut by_observed: Vec<&Grant> = holds.iter().map(|h| &h.grant).collect();
    by_observed.sort_by_key(|g| g.granted);
    let mut by_invoked: Vec<&Grant> = holds.iter().map(|h| &h.grant).collect();
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
    for g in holds.iter().map(|h| &h.grant) {
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
                Violation::Overlap { .. } => "overlap",
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
        assert_eq!(kinds(&r), ["token"], "{r}");

        // Both at once: b granted a lower token while a holds.
        let (h, l) = (History::new(), FencedLedger::new());
        let a = h.acquire_invoked("k", "a");
        h.granted(a, t(5));
        let b = h.acquire_invoked("k", "b");
        h.granted(b, t(3));
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["overlap", "token"], "{r}");
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
        let ago = |s| {
            Instant::now()
                .checked_sub(Duration::from_secs(s))
                .expect("uptime")
        };
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
                at: Instant::now(),
            });
        let r = check(&h, &l, TTL);
        assert_eq!(kinds(&r), ["ledger"], "{r}");
    }
}
