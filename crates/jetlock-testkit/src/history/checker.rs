//! The judgement of a run: beliefs that overlap, tokens that do not rise,
//! operations never answered, locks stuck after the faults healed, and a
//! ledger that went back.

use super::ledger::FencedLedger;
use super::recorder::{AcquireOutcome, History, OpKind, ReleaseOutcome};
use crate::belief::{judge, Belief, BeliefCounts, BeliefViolation, Ended, Mono};
use jetlock::FencingToken;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

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
