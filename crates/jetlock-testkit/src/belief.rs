//! Beliefs: when each client believed it held a key, on one clock that
//! every process on the machine shares (`CLOCK_MONOTONIC`), and the two
//! rules that judge them (see `docs/RELIABILITY.md`, "History checker").
//!
//! A client believes it holds a key from the moment it received the grant
//! until its release starts or `lost()` fires. A process that was stopped
//! (SIGSTOP) or starved past the deadline it computed on its own clock
//! (`LockGuard::deadline`) cannot act on the loss until it runs again, but
//! the contract has it give the lock up *at* that deadline: its belief ends
//! there, not when it wakes. So a belief ends at the earliest of the release
//! invocation, the loss observation, and the client's own deadline as read
//! at that moment (the last value a renewal or a heartbeat answer set: once
//! the lease is over nothing moves it on).
#![allow(dead_code)]

use jetlock::FencingToken;
use std::fmt;
use std::time::{Duration, Instant};

/// A `CLOCK_MONOTONIC` reading in nanoseconds. Comparable across the
/// processes of one machine, unlike `Instant` (not serialisable), so a
/// holder process prints it and the test records it beside its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(pub u64);

impl Mono {
    pub fn now() -> Mono {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
        Mono(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// `at` on this clock: its distance from now, added to now. (On Linux
    /// `Instant` is `CLOCK_MONOTONIC` already; its inside is not public.)
    pub fn of(at: Instant) -> Mono {
        let (now, mono) = (Instant::now(), Mono::now());
        if at >= now {
            mono + (at - now)
        } else {
            mono - (now - at)
        }
    }

    /// Milliseconds from `earlier` to `self` (negative when before).
    pub fn ms_since(self, earlier: Mono) -> f64 {
        (self.0 as f64 - earlier.0 as f64) / 1e6
    }

    /// `self` moved back by `d` (test histories set in the past).
    pub fn ago(d: Duration) -> Mono {
        Mono::now() - d
    }
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0 + d.as_nanos() as u64)
    }
}

impl std::ops::Sub<Duration> for Mono {
    type Output = Mono;
    fn sub(self, d: Duration) -> Mono {
        Mono(self.0.saturating_sub(d.as_nanos() as u64))
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a belief ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client started its release.
    Released,
    /// The client observed `lost()`.
    Lost,
    /// The client's own deadline passed before it released or observed the
    /// loss (a paused or starved process).
    Deadline,
    /// No end recorded: believed to the end of the history.
    Open,
}

/// One client's belief that it held `key` with `token`.
#[derive(Debug, Clone)]
pub struct Belief {
    pub key: String,
    pub session: String,
    pub token: FencingToken,
    /// When its acquire was invoked.
    pub invoked: Mono,
    /// When the grant was received: the belief starts.
    pub start: Mono,
    /// When the belief ended (`None`: [`Ended::Open`]).
    pub end: Option<Mono>,
    pub ended: Ended,
}

impl Belief {
    /// Ends the belief at the earliest of its end events: `at` (a release
    /// invoked, a loss observed) and `deadline`, the client's own deadline
    /// read then. Never before its start: a grant already past the
    /// client's deadline is an empty belief.
    pub fn end_at(&mut self, at: Mono, how: Ended, deadline: Option<Mono>) {
        let (at, how) = match deadline {
            Some(d) if d < at => (d.max(self.start), Ended::Deadline),
            _ => (at, how),
        };
        if self.end.is_none_or(|e| at < e) {
            self.end = Some(at);
            self.ended = how;
        }
    }

    fn same_hold(&self, other: &Belief) -> bool {
        self.session == other.session && self.token == other.token
    }

    fn end_or_max(&self) -> Mono {
        self.end.unwrap_or(Mono(u64::MAX))
    }
}

/// What the belief rules found on one history.
#[derive(Debug, Default)]
pub struct BeliefCounts {
    pub beliefs: u64,
    /// Beliefs ended by the client's own deadline before it released or
    /// observed the loss.
    pub ended_by_deadline: u64,
    /// Beliefs that began while another session's belief of the key lasted.
    pub overlapping: u64,
    /// The longest such overlap.
    pub longest_overlap_ms: f64,
}

/// Two beliefs of one key at once, or tokens that went down in belief
/// order.
#[derive(Debug, Clone)]
pub enum BeliefViolation {
    /// `second` began while `first` (another session) still believed, for
    /// `overlap_ms`.
    Overlap {
        first: Belief,
        second: Belief,
        overlap_ms: f64,
    },
    /// `later` began after `earlier` did, with no higher token.
    TokenNotRising { earlier: Belief, later: Belief },
}

impl fmt::Display for BeliefViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BeliefViolation::Overlap {
                first,
                second,
                overlap_ms,
            } => write!(
                f,
                "overlapping beliefs on {}: {} (token {}, ended {:?}) and {} (token {}) \
                 believed at once for {overlap_ms:.1} ms",
                first.key, first.session, first.token, first.ended, second.session, second.token
            ),
            BeliefViolation::TokenNotRising { earlier, later } => write!(
                f,
                "token did not rise in belief order on {}: {} believed {} after {} believed {}",
                later.key, later.session, later.token, earlier.session, earlier.token
            ),
        }
    }
}

/// Judges the beliefs of one key: no two sessions believe at one instant
/// (reentrant beliefs of one hold are one belief), and tokens rise in the
/// order beliefs began.
pub fn judge(beliefs: &mut [Belief], counts: &mut BeliefCounts, out: &mut Vec<BeliefViolation>) {
    beliefs.sort_by_key(|b| b.start);
    // The belief of another hold that ends last among those begun so far.
    let mut longest: Option<&Belief> = None;
    // The highest token among beliefs begun so far.
    let mut highest: Option<&Belief> = None;
    for b in beliefs.iter() {
        counts.beliefs += 1;
        if b.ended == Ended::Deadline {
            counts.ended_by_deadline += 1;
        }
        if let Some(prev) = longest {
            let end = prev.end_or_max();
            if !prev.same_hold(b) && b.start < end && b.start < b.end_or_max() {
                let overlap_ms = end.min(b.end_or_max()).ms_since(b.start);
                counts.overlapping += 1;
                counts.longest_overlap_ms = counts.longest_overlap_ms.max(overlap_ms);
                out.push(BeliefViolation::Overlap {
                    first: prev.clone(),
                    second: b.clone(),
                    overlap_ms,
                });
            }
        }
        if let Some(h) = highest {
            if !h.same_hold(b) && b.token <= h.token {
                out.push(BeliefViolation::TokenNotRising {
                    earlier: h.clone(),
                    later: b.clone(),
                });
            }
        }
        if longest.is_none_or(|l| b.end_or_max() > l.end_or_max()) {
            longest = Some(b);
        }
        if highest.is_none_or(|h| b.token > h.token) {
            highest = Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules must be able to fail: hand-made beliefs.
    use super::*;

    fn belief(session: &str, token: u64, start_ms: u64, end_ms: Option<u64>) -> Belief {
        let base = Mono(1_000_000_000_000);
        let ms = |m: u64| base + Duration::from_millis(m);
        Belief {
            key: "k".into(),
            session: session.into(),
            token: FencingToken(token),
            invoked: ms(start_ms.saturating_sub(1)),
            start: ms(start_ms),
            end: end_ms.map(ms),
            ended: if end_ms.is_some() {
                Ended::Released
            } else {
                Ended::Open
            },
        }
    }

    fn run(mut beliefs: Vec<Belief>) -> (BeliefCounts, Vec<&'static str>) {
        let (mut counts, mut out) = (BeliefCounts::default(), Vec::new());
        judge(&mut beliefs, &mut counts, &mut out);
        let kinds = out
            .iter()
            .map(|v| match v {
                BeliefViolation::Overlap { .. } => "overlap",
                BeliefViolation::TokenNotRising { .. } => "token",
            })
            .collect();
        (counts, kinds)
    }

    #[test]
    fn belief_disjoint_beliefs_with_rising_tokens_pass() {
        let (c, kinds) = run(vec![
            belief("a", 1, 0, Some(10)),
            belief("b", 2, 10, Some(20)),
            belief("a", 3, 25, None),
            // A reentrant acquisition of the same hold is the same belief.
            belief("a", 3, 30, Some(40)),
        ]);
        assert!(kinds.is_empty(), "{kinds:?}");
        assert_eq!((c.beliefs, c.overlapping), (4, 0));
    }

    #[test]
    fn belief_catches_overlaps_and_tokens_going_down() {
        let (c, kinds) = run(vec![
            belief("a", 5, 0, Some(100)),
            belief("b", 6, 40, Some(60)),
        ]);
        assert_eq!(kinds, ["overlap"]);
        assert_eq!(c.overlapping, 1);
        assert!((c.longest_overlap_ms - 20.0).abs() < 1e-6);
        // An open belief overlaps everything after it.
        let (_, kinds) = run(vec![
            belief("a", 5, 0, None),
            belief("b", 6, 500, Some(600)),
        ]);
        assert_eq!(kinds, ["overlap"]);
        // Disjoint, but the later belief has a lower token.
        let (_, kinds) = run(vec![
            belief("a", 5, 0, Some(10)),
            belief("b", 4, 20, Some(30)),
        ]);
        assert_eq!(kinds, ["token"]);
    }

    #[test]
    fn belief_ends_at_the_clients_own_deadline() {
        // a was paused: it observed the loss at 900 ms, but its own deadline
        // was 300 ms; b's grant at 500 ms is no overlap.
        let mut a = belief("a", 5, 0, None);
        let base = a.start;
        a.end_at(
            base + Duration::from_millis(900),
            Ended::Lost,
            Some(base + Duration::from_millis(300)),
        );
        assert_eq!(a.ended, Ended::Deadline);
        let (c, kinds) = run(vec![a.clone(), belief("b", 6, 500, Some(600))]);
        assert!(kinds.is_empty(), "{kinds:?}");
        assert_eq!(c.ended_by_deadline, 1);
        // Had its deadline been later than b's grant, they overlap.
        let mut a = belief("a", 5, 0, None);
        a.end_at(
            base + Duration::from_millis(900),
            Ended::Lost,
            Some(base + Duration::from_millis(700)),
        );
        let (c, kinds) = run(vec![a, belief("b", 6, 500, Some(600))]);
        assert_eq!(kinds, ["overlap"]);
        assert!((c.longest_overlap_ms - 100.0).abs() < 1e-6);
    }
}
