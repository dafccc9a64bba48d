//! Several coordinators: the key's owner acts, the others mirror and take
//! over what the dead owner left.

use super::*;

/// A hold of `session` as the bucket records it.
fn record(session: &str) -> LockRecord {
    LockRecord {
        owner: session.into(),
        session: session.into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds: 1,
        token: 0,
    }
}

#[test]
fn a_release_the_dead_owner_carried_out_is_answered_released_after_takeover() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    let name = LockName::new("k").unwrap();
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 1,
            record: record("h"),
        },
        sim.now,
    );
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.release("h", "r", 1);
    // The owner handed the lock to w, then died before answering h.
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 2,
            record: record("w"),
        },
        sim.now,
    );
    leave(&mut sim, &other);
    let answers = sim.answers_to("h");
    assert!(
        matches!(answers.as_slice(), [Answer::Released { re, .. }] if re == "r"),
        "{answers:?}"
    );
}

#[test]
fn a_coordinator_that_does_not_own_the_key_only_mirrors() {
    let mut sim = Sim::new();
    // Find a ring where "other" owns key k.
    let mut other = 0;
    loop {
        let id = format!("c{other}");
        sim.engine.coordinator_beat(
            CoordinatorBeat {
                v: 1,
                id: id.clone(),
                conn: None,
                now_ms: None,
                leaving: false,
            },
            sim.now,
        );
        if sim.engine.ring().owner(LockName::new("k").unwrap().key()) == id {
            break;
        }
        sim.engine.coordinator_beat(
            CoordinatorBeat {
                v: 1,
                id,
                conn: None,
                now_ms: None,
                leaving: true,
            },
            sim.now,
        );
        other += 1;
    }
    sim.settle();
    sim.answers.clear();
    sim.acquire("h", "a", 60_000);
    assert!(sim.answers.is_empty(), "a mirror does not answer");
    assert_eq!(sim.bucket.seq, 0, "a mirror does not write");
    assert_eq!(sim.engine.queue_len(LockName::new("k").unwrap().key()), 1);
    // The owner leaves: this coordinator takes the key and grants.
    sim.engine.coordinator_beat(
        CoordinatorBeat {
            v: 1,
            id: format!("c{other}"),
            conn: None,
            now_ms: None,
            leaving: true,
        },
        sim.now,
    );
    sim.settle();
    assert!(sim.grant_token("h", "a").is_some());
}

#[test]
fn a_reentry_a_mirror_let_go_from_a_lagging_view_is_run_after_its_takeover() {
    // Seed 490 of the `partition` simulation: a coordinator cut off from
    // the others still saw w holding when h, which the owner had granted
    // the lock meanwhile, sent a reentrant try-lock. From its view the
    // try-lock was busy, so it let it go (the owner answers those). Then
    // it took the key over, ran h's later renewal and wrote that every
    // operation up to it was applied: the owner's write of the reentry
    // conflicted and took it for applied, and h counted a hold the bucket
    // never had (its release of it freed the lock).
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    let name = LockName::new("k").unwrap();
    sim.engine.heartbeat("w", hb(), sim.now);
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 1,
            record: record("w"),
        },
        sim.now,
    );
    let grant = sim.acquire("h", "a0", 60_000);
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "a1", "key": "k", "wait_ms": 0}),
    );
    sim.send(
        "renew",
        "h",
        json!({"v": 1, "id": "n1", "key": "k", "token": 2, "ttl_ms": 20_000}),
    );
    // The owner's grant to h shows at last; it has not run the reentry.
    sim.bucket.seq = 2;
    sim.bucket.keys.insert(
        "k".into(),
        Current::Held {
            revision: 2,
            record: record("h"),
        },
    );
    sim.bucket.stamps.insert(
        "k".into(),
        Stamp {
            write_id: Some(format!("{other}.1")),
            applied: Applied {
                hold: grant,
                ended: 0,
                grant,
            },
        },
    );
    let (current, stamp) = sim.bucket.read("k");
    sim.engine
        .observed_change(&name, current, false, stamp, sim.now);
    sim.settle();
    leave(&mut sim, &other);
    let holds = match sim.bucket.keys.get("k") {
        Some(Current::Held { record, .. }) => record.holds,
        other => panic!("k is {other:?}"),
    };
    assert_eq!(holds, 2, "the reentry is run: {:?}", sim.answers);
    let a1: Vec<_> = sim
        .answers_to("h")
        .into_iter()
        .filter(|a| a.re() == Some("a1"))
        .collect();
    assert!(
        matches!(a1.as_slice(), [Answer::Granted { holds: 2, .. }]),
        "{a1:?}"
    );
}

/// The dead owner refused a release (the hold was gone) and died before its
/// done note went out, and before answering a try-lock of the free key that
/// came next. The new owner settles the stale release first and grants the
/// try-lock. Before, the mirror let the try-lock go at its deadline (the
/// operation made the key look busy, so the owner would refuse it) and
/// nobody ever answered it; kept but decided before the operation, it
/// would be refused `busy` ("is held") on the free key.
#[test]
fn a_try_lock_of_a_free_key_after_takeover_is_not_refused_for_a_stale_operation() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.release("h", "r", 1);
    sim.acquire("t", "try", 0);
    leave(&mut sim, &other);
    sim.advance(Duration::from_millis(1));
    assert!(
        sim.grant_token("t", "try").is_some(),
        "{:?}",
        sim.answers_to("t")
    );
    assert_eq!(sim.error_code("h", "r"), Some(ErrorCode::NotHolder));
}
