//! Judging locks with several holders (read/write locks, semaphores) by
//! what their holders believed: each hold is the interval from just after
//! its acquire returned to just before its release was called, on this
//! process's monotonic clock. Two recorded intervals that intersect were
//! believed at the same moment; only that (never a duration) is judged.

use jetlock::FencingToken;
use std::sync::Mutex;
use std::time::Instant;

/// What a hold was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    Read,
    Write,
    Permit,
}

/// One believed hold.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub kind: HoldKind,
    pub token: FencingToken,
    pub from: Instant,
    pub until: Instant,
}

impl Held {
    fn overlaps(&self, other: &Held) -> bool {
        self.from < other.until && other.from < self.until
    }
}

/// The holds of one lock, recorded by many tasks.
#[derive(Debug, Default)]
pub struct Holds {
    holds: Mutex<Vec<Held>>,
}

impl Holds {
    /// Records a hold believed from `from` (taken right after acquire
    /// returned) to now (call it right before releasing).
    pub fn record(&self, kind: HoldKind, token: FencingToken, from: Instant) {
        self.record_until(kind, token, from, Instant::now());
    }

    /// Records a hold believed from `from` until `until`: under faults, the
    /// earliest of the release's call, the loss's observation and the
    /// holder's own deadline read then (`PartGuard::deadline`; the rule of
    /// `belief.rs`, docs/RELIABILITY.md "Beliefs"). A hold granted at or
    /// past that end was never believed, and is not kept: an empty
    /// interval would read as overlapping whatever spans it.
    pub fn record_until(&self, kind: HoldKind, token: FencingToken, from: Instant, until: Instant) {
        if until <= from {
            return;
        }
        self.holds.lock().unwrap().push(Held {
            kind,
            token,
            from,
            until,
        });
    }

    pub fn all(&self) -> Vec<Held> {
        self.holds.lock().unwrap().clone()
    }

    /// Read/write rules: no write overlaps another hold, and a write's
    /// token is above every hold that ended before it began and below
    /// every hold that began after it ended. Returns what broke them.
    pub fn rw_violations(&self) -> Vec<String> {
        let holds = self.all();
        let mut out = Vec::new();
        for w in holds.iter().filter(|h| h.kind == HoldKind::Write) {
            for h in &holds {
                if std::ptr::eq(w, h) {
                    continue;
                }
                if w.overlaps(h) {
                    out.push(format!(
                        "write {} overlaps {:?} {}",
                        w.token, h.kind, h.token
                    ));
                } else if h.until <= w.from && h.token >= w.token {
                    out.push(format!(
                        "write {} is not above the earlier {:?} {}",
                        w.token, h.kind, h.token
                    ));
                } else if h.from >= w.until && h.token <= w.token {
                    out.push(format!(
                        "{:?} {} after write {} is not above it",
                        h.kind, h.token, w.token
                    ));
                }
            }
        }
        out
    }

    /// The most holds believed at one moment.
    pub fn most_at_once(&self) -> usize {
        let mut edges: Vec<(Instant, i32)> = self
            .all()
            .iter()
            .flat_map(|h| [(h.from, 1), (h.until, -1)])
            .collect();
        // At one instant, ends before starts: touching is not overlapping.
        edges.sort();
        let (mut now, mut most) = (0i32, 0i32);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        most as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, from: u64, until: u64) -> (Instant, Instant) {
        (
            base + Duration::from_millis(from),
            base + Duration::from_millis(until),
        )
    }

    fn holds(list: &[(HoldKind, u64, u64, u64)]) -> Holds {
        let base = Instant::now();
        let h = Holds::default();
        for &(kind, token, from, until) in list {
            let (from, until) = at(base, from, until);
            h.holds.lock().unwrap().push(Held {
                kind,
                token: FencingToken(token),
                from,
                until,
            });
        }
        h
    }

    #[test]
    fn overlapping_readers_are_fine_and_a_writer_among_them_is_caught() {
        use HoldKind::*;
        let ok = holds(&[(Read, 1, 0, 10), (Read, 2, 5, 15), (Write, 3, 15, 20)]);
        assert!(ok.rw_violations().is_empty(), "{:?}", ok.rw_violations());
        assert_eq!(ok.most_at_once(), 2);
        let bad = holds(&[(Read, 1, 0, 10), (Write, 3, 9, 20)]);
        assert_eq!(bad.rw_violations().len(), 1);
        let low = holds(&[(Read, 5, 0, 10), (Write, 3, 11, 20)]);
        assert_eq!(low.rw_violations().len(), 1);
        let after = holds(&[(Write, 5, 0, 10), (Read, 4, 11, 20)]);
        assert_eq!(after.rw_violations().len(), 1);
    }

    #[test]
    fn a_hold_ends_at_its_own_deadline_and_one_granted_past_it_is_no_belief() {
        let base = Instant::now();
        let h = Holds::default();
        let (from, deadline) = at(base, 0, 10);
        // Observed lost at 30; its deadline was 10; a writer got in at 15.
        h.record_until(HoldKind::Read, FencingToken(1), from, deadline);
        let (w_from, w_until) = at(base, 15, 20);
        h.record_until(HoldKind::Write, FencingToken(2), w_from, w_until);
        // Granted past its deadline (a stopped process waking): empty.
        let (late, _) = at(base, 18, 0);
        h.record_until(HoldKind::Read, FencingToken(1), late, deadline);
        assert_eq!(h.all().len(), 2);
        assert!(h.rw_violations().is_empty(), "{:?}", h.rw_violations());
        assert_eq!(h.most_at_once(), 1);
    }

    #[test]
    fn most_at_once_counts_touching_holds_apart() {
        use HoldKind::*;
        let h = holds(&[(Permit, 1, 0, 10), (Permit, 2, 10, 20), (Permit, 3, 5, 12)]);
        assert_eq!(h.most_at_once(), 2);
    }
}
