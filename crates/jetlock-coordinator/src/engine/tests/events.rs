//! Events: each hold reported once with its cause, from whichever
//! coordinator acts.

use super::*;

/// (kind, token, session) of the lock events so far.
fn lock_events(sim: &Sim) -> Vec<(EventKind, Option<u64>, String)> {
    sim.events
        .iter()
        .filter(|e| e.kind.is_lock())
        .map(|e| (e.kind, e.token, e.session.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn each_hold_is_reported_once_with_its_cause_whenever_the_watch_shows_it() {
    for watch_first in [None, Some(true), Some(false)] {
        let mut sim = Sim::new();
        sim.watch_first = watch_first;
        sim.acquire("h", "a", 0);
        let t1 = sim.grant_token("h", "a").unwrap();
        sim.acquire("w", "a", 60_000);
        sim.advance(Duration::from_millis(40));
        sim.release("h", "r1", t1);
        let t2 = sim.grant_token("w", "a").unwrap();
        sim.release("w", "r2", t2);
        use EventKind::*;
        let (h, w) = (String::from("h"), String::from("w"));
        assert_eq!(
            lock_events(&sim),
            [
                (Granted, Some(t1), h.clone()),
                (Released, Some(t1), h),
                (Granted, Some(t2), w.clone()),
                (Released, Some(t2), w),
            ],
            "watch_first {watch_first:?}"
        );
        let grants: Vec<&Event> = sim.events.iter().filter(|e| e.kind == Granted).collect();
        assert_eq!(grants[0].handoff, Some(false));
        assert_eq!(grants[1].handoff, Some(true), "one write from h to w");
        assert_eq!(grants[1].waited_ms, Some(40));
        assert_eq!(grants[1].lock.as_deref(), Some("k"));
    }
}

#[test]
fn grants_and_expiries_nobody_asked_us_for_are_reported_from_the_bucket() {
    let mut sim = Sim::new();
    let name = LockName::new("k").unwrap();
    let record = LockRecord {
        owner: "o".into(),
        session: "direct".into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds: 1,
        token: 0,
    };
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 7,
            record,
        },
        sim.now,
    );
    let marker = Current::Vacant { revision: 8 };
    sim.engine
        .observed_change(&name, marker, true, Stamp::default(), sim.now);
    sim.settle();
    let events: Vec<&Event> = sim.events.iter().filter(|e| e.kind.is_lock()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Granted);
    assert_eq!(events[0].waited_ms, None, "not queued here");
    assert_eq!(events[1].kind, EventKind::Expired);
    assert_eq!(events[1].cause.as_deref(), Some("lease"));
    assert_eq!(events[1].token, Some(7));
}

#[test]
fn revocations_and_session_deaths_name_their_cause() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let t1 = sim.grant_token("h", "a").unwrap();
    sim.send(
        "revoke",
        "ops",
        json!({"v": 1, "id": "v", "key": "k", "grace_ms": 0, "reason": "stuck"}),
    );
    let revoked = sim.events.iter().find(|e| e.kind == EventKind::Revoked);
    let revoked = revoked.expect("a revoked event");
    assert_eq!(revoked.token, Some(t1));
    assert_eq!(revoked.by.as_deref(), Some("ops"));
    assert_eq!(revoked.reason.as_deref(), Some("stuck"));
    sim.acquire("x", "b", 0);
    let t2 = sim.grant_token("x", "b").unwrap();
    sim.engine.heartbeat(
        "x",
        Heartbeat {
            leaving: true,
            ..hb()
        },
        sim.now,
    );
    sim.settle();
    let last = sim.events.iter().rfind(|e| e.kind.is_lock()).unwrap();
    assert_eq!(
        (last.kind, last.token, last.cause.as_deref()),
        (EventKind::Expired, Some(t2), Some("session"))
    );
    assert!(sim
        .events
        .iter()
        .any(|e| e.kind == EventKind::SessionDown && e.subject.as_deref() == Some("x")));
}

#[test]
fn a_departed_coordinator_is_reported_once_with_the_locks_taken_over() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    sim.acquire("h", "a", 60_000); // mirrored: the other coordinator owns k
    sim.events.clear();
    leave(&mut sim, &other);
    let down: Vec<&Event> = sim
        .events
        .iter()
        .filter(|e| e.kind == EventKind::CoordinatorDown)
        .collect();
    assert_eq!(down.len(), 1, "{:?}", sim.events);
    assert_eq!(down[0].subject.as_deref(), Some(other.as_str()));
    assert_eq!(down[0].cause.as_deref(), Some("left"));
    let takeover = sim
        .events
        .iter()
        .find(|e| e.kind == EventKind::Takeover)
        .expect("a takeover event");
    assert_eq!(takeover.keys, Some(1), "key k moved here");
    assert_eq!(takeover.cause, Some(format!("{other} left")));
    assert!(
        sim.grant_token("h", "a").is_some(),
        "and the waiter is granted"
    );
}
