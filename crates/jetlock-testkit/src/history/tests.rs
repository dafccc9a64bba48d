//! The checker must be able to fail, or the tests built on it prove
//! nothing: hand-made bad histories, one per violation kind.
use super::*;
use crate::belief::{BeliefViolation, Mono};
use jetlock::FencingToken;
use std::time::Duration;

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
