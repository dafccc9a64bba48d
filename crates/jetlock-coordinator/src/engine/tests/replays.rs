//! Case 3 of issue 13: a coordinator write that landed with its ack lost,
//! and a request replayed after it was applied, must not run twice.

use super::*;

impl Sim {
    /// A lock `k` held by `h` with `holds` reentrant holds (JSON session:
    /// owner = session); returns its token.
    fn held_by_h(&mut self, holds: u32) -> u64 {
        self.acquire("h", "a0", 0);
        let token = self.grant_token("h", "a0").expect("free lock granted");
        for i in 1..holds {
            self.acquire("h", &format!("a{i}"), 0);
        }
        assert_eq!(self.holds(), Some(holds));
        token
    }

    fn holds(&self) -> Option<u32> {
        match self.bucket.keys.get("k") {
            Some(Current::Held { record, .. }) => Some(record.holds),
            _ => None,
        }
    }

    /// Every coordinator restarts: a new engine that knows only the bucket
    /// and the requests nobody deleted (`undeleted`, in stream order).
    fn restart(&mut self, undeleted: &[u64]) {
        self.restart_with(undeleted, false, &["h", "w"]);
    }

    /// [`Sim::restart`], reading the requests before the bucket when
    /// `requests_first`, and hearing only the heartbeats of `beating`
    /// (before anything else) until it is ready.
    fn restart_with(&mut self, undeleted: &[u64], requests_first: bool, beating: &[&str]) {
        let mut engine = Engine::new("me-again".into(), EngineConfig::default());
        for session in beating {
            engine.heartbeat(session, Heartbeat::default(), self.now);
        }
        let replay = |engine: &mut Engine| {
            for (seq, subject, body) in self.sent.iter().filter(|(s, ..)| undeleted.contains(s)) {
                engine.request(*seq, subject, body, Duration::ZERO, self.now);
            }
        };
        if requests_first {
            replay(&mut engine);
        }
        for (key, _) in self.bucket.keys.clone() {
            let (current, stamp) = self.bucket.read(&key);
            let name = LockName::from_key(&key).unwrap();
            engine.observed_change(&name, current, false, stamp, self.now);
        }
        if !requests_first {
            replay(&mut engine);
        }
        engine.set_ready(self.now);
        engine.proof_acked(self.now, self.now, self.now);
        self.engine = engine;
        self.answers.clear();
        self.settle();
    }

    /// The answers to request `re` of `session`.
    fn answers_re(&self, session: &str, re: &str) -> Vec<Answer> {
        self.answers_to(session)
            .into_iter()
            .filter(|a| a.re() == Some(re))
            .cloned()
            .collect()
    }
}

fn released(holds: u32) -> impl Fn(&Answer) -> bool {
    move |a| matches!(a, Answer::Released { holds: h, .. } if *h == holds)
}

#[test]
fn a_partial_release_whose_ack_was_lost_is_not_run_again() {
    // With and without the bucket watch showing the write before its
    // (lost) result.
    for watch_first in [None, Some(true), Some(false)] {
        let mut sim = Sim::new();
        sim.watch_first = watch_first;
        let token = sim.held_by_h(2);
        let writes = sim.bucket.seq;
        sim.lose_acks = 1;
        sim.release("h", "r1", token);
        assert_eq!(sim.bucket.seq, writes + 1, "one write ({watch_first:?})");
        assert_eq!(sim.holds(), Some(1), "one hold left ({watch_first:?})");
        let answers = sim.answers_re("h", "r1");
        assert!(
            matches!(answers.as_slice(), [a] if released(1)(a)),
            "{watch_first:?}: {answers:?}"
        );
        sim.release("h", "r2", token);
        assert_eq!(sim.holder(), None, "the last release frees it");
    }
}

#[test]
fn a_reentrant_acquire_whose_ack_was_lost_is_counted_once() {
    for watch_first in [None, Some(true), Some(false)] {
        let mut sim = Sim::new();
        sim.watch_first = watch_first;
        let token = sim.held_by_h(1);
        sim.lose_acks = 1;
        sim.acquire("h", "again", 0);
        assert_eq!(sim.holds(), Some(2), "{watch_first:?}");
        let answers = sim.answers_re("h", "again");
        assert!(
            matches!(answers.as_slice(), [Answer::Granted { holds: 2, .. }]),
            "{watch_first:?}: {answers:?}"
        );
        sim.release("h", "r1", token);
        sim.release("h", "r2", token);
        assert_eq!(sim.holder(), None, "freed after the last release");
    }
}

#[test]
fn a_lost_ack_is_recognised_by_the_write_id_alone() {
    // A record whose applied sequences are unreadable (another request
    // stream's): the write id still tells that the write landed.
    let mut sim = Sim::new();
    let token = sim.held_by_h(2);
    sim.reads = Some(Vec::new());
    sim.lose_acks = 1;
    sim.release("h", "r1", token);
    let reads = sim.reads.take().expect("set above");
    assert_eq!(reads.len(), 1, "a failed write is followed by a read");
    let (current, mut stamp) = sim.bucket.read("k");
    stamp.applied = Applied::default();
    sim.engine
        .read_done(&reads[0], Some((current, stamp)), sim.now);
    sim.settle();
    assert_eq!(sim.holds(), Some(1));
    assert!(sim.answers_re("h", "r1").iter().all(released(1)));
}

#[test]
fn a_write_that_did_not_land_is_run_again_after_the_read() {
    // The read shows someone else's message: the work goes on.
    let mut sim = Sim::new();
    let token = sim.held_by_h(2);
    sim.reads = Some(Vec::new());
    sim.lose_acks = 1;
    sim.release("h", "r1", token);
    let reads = sim.reads.take().expect("set above");
    // Undo the landed write: as if it never reached the server.
    let Some(Current::Held { mut record, .. }) = sim.bucket.keys.get("k").cloned() else {
        panic!("held");
    };
    record.holds = 2;
    let undone = Current::Held {
        revision: sim.bucket.seq - 1,
        record,
    };
    sim.bucket.keys.insert("k".into(), undone.clone());
    sim.bucket.stamps.insert("k".into(), Stamp::default());
    sim.engine
        .read_done(&reads[0], Some((undone, Stamp::default())), sim.now);
    sim.settle();
    assert_eq!(sim.holds(), Some(1), "the release ran once, after the read");
    assert!(sim.answers_re("h", "r1").iter().all(released(1)));
}

#[test]
fn a_full_restart_answers_replayed_holder_operations_without_running_them() {
    let mut sim = Sim::new();
    let token = sim.held_by_h(3);
    sim.release("h", "r1", token);
    sim.send(
        "renew",
        "h",
        json!({"v": 1, "id": "n1", "key": "k", "token": token, "ttl_ms": 20_000}),
    );
    assert_eq!(sim.holds(), Some(2));
    let writes = sim.bucket.seq;
    // Nothing was deleted: every request is replayed, the grant, both
    // reentrant acquires, the release and the renewal.
    let all: Vec<u64> = sim.sent.iter().map(|(s, ..)| *s).collect();
    sim.restart(&all);
    assert_eq!(sim.bucket.seq, writes, "nothing written again");
    assert_eq!(sim.holds(), Some(2), "the hold count is what it was");
    assert!(sim.answers_re("h", "r1").iter().all(released(2)));
    assert!(matches!(
        sim.answers_re("h", "a2").as_slice(),
        [Answer::Granted { holds: 2, .. }]
    ));
    assert!(matches!(
        sim.answers_re("h", "n1").as_slice(),
        [Answer::Renewed { ttl_ms: 20_000, .. }]
    ));
    assert_eq!(sim.deleted.len(), all.len() * 2, "each deleted (again)");
    // New operations after the restart run as usual.
    sim.release("h", "r2", token);
    sim.release("h", "r3", token);
    assert_eq!(sim.holder(), None);
}

#[test]
fn a_replayed_release_that_ended_the_hold_is_answered_released() {
    // Handed off to a waiter, and released with nobody waiting.
    let mut sim = Sim::new();
    let token = sim.held_by_h(1);
    let waited = sim.acquire("w", "q", 60_000);
    sim.release("h", "r", token);
    let handoff = sim.seq;
    let next = sim.grant_token("w", "q").expect("handed off");
    sim.restart(&[waited, handoff]);
    assert!(
        sim.answers_re("h", "r").iter().all(released(0)),
        "{:?}",
        sim.answers
    );
    assert!(matches!(
        sim.answers_re("w", "q").as_slice(),
        [Answer::Granted { holds: 1, token, .. }] if *token == next
    ));
    assert_eq!(sim.holds(), Some(1), "w's grant is not counted twice");
    sim.release("w", "last", next);
    let last = sim.seq;
    assert_eq!(sim.holder(), None);
    sim.restart(&[last]);
    assert!(sim.answers_re("w", "last").iter().all(released(0)));
    assert!(!sim.answers_re("w", "last").is_empty());
}

#[test]
fn a_takeover_answers_what_the_dead_owner_wrote_but_did_not_answer() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    let name = LockName::new("k").unwrap();
    let record = |holds| LockRecord {
        owner: "h".into(),
        session: "h".into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds,
        token: 1,
    };
    let stamp = |hold| Stamp {
        write_id: Some(format!("{other}.1")),
        applied: Applied {
            hold,
            ended: 0,
            grant: 0,
        },
    };
    let held = |revision, holds| Current::Held {
        revision,
        record: record(holds),
    };
    sim.engine
        .observed_change(&name, held(1, 2), false, stamp(0), sim.now);
    sim.engine.heartbeat("h", Heartbeat::default(), sim.now);
    sim.release("h", "r", 1);
    let r = sim.seq;
    // The owner wrote the partial release, then died before answering.
    sim.engine
        .observed_change(&name, held(2, 1), false, stamp(r), sim.now);
    // A Rust client's own renewal of the same grant carries no stamp.
    sim.engine
        .observed_change(&name, held(3, 1), false, Stamp::default(), sim.now);
    sim.bucket.keys.insert("k".into(), held(3, 1));
    sim.bucket.seq = 3;
    leave(&mut sim, &other);
    assert!(
        matches!(sim.answers_re("h", "r").as_slice(), [a] if released(1)(a)),
        "{:?}",
        sim.answers
    );
    assert_eq!(sim.bucket.seq, 3, "not run again");
    assert_eq!(sim.holds(), Some(1));
}

#[test]
fn a_reentry_replayed_before_its_key_is_known_is_run_before_the_holds_later_operations() {
    // Seed 605 of the simulation: a restarted coordinator read a reentrant
    // try-lock before the bucket showed the key, filed it as a waiter and
    // dropped it as answered by another coordinator; a later renewal of the
    // hold was applied, and the next restart took the reentry for applied
    // too: the client counted a hold the bucket never had.
    let mut sim = Sim::new();
    let token = sim.held_by_h(1);
    let waited = sim.acquire("w", "q", 60_000);
    // h's reentrant try-lock reaches the stream while no coordinator runs.
    sim.seq += 1;
    let reentry = sim.seq;
    let subject = "jetlock.req.acquire.h".to_owned();
    let body = serde_json::to_vec(&json!({"v": 1, "id": "a1", "key": "k", "wait_ms": 0})).unwrap();
    sim.sent.push((reentry, subject, body));
    sim.restart_with(&[waited, reentry], true, &["h", "w"]);
    assert_eq!(
        sim.holds(),
        Some(2),
        "the reentry is run: {:?}",
        sim.answers
    );
    assert!(matches!(
        sim.answers_re("h", "a1").as_slice(),
        [Answer::Granted { holds: 2, .. }]
    ));
    // A later operation of the hold, then a restart that replays the
    // reentry again: answered from the hold, which has it.
    sim.send(
        "renew",
        "h",
        json!({"v": 1, "id": "n1", "key": "k", "token": token, "ttl_ms": 20_000}),
    );
    sim.restart_with(&[waited, reentry], true, &["h", "w"]);
    assert_eq!(sim.holds(), Some(2));
    sim.release("h", "r1", token);
    assert_eq!(sim.holds(), Some(1), "h still holds after one release");
    sim.release("h", "r2", token);
    assert_eq!(sim.holder().as_deref(), Some("w"), "then w's turn");
}

#[test]
fn waits_of_a_session_learned_only_from_the_replay_are_granted_once_it_beats() {
    // A session whose client ended while no coordinator ran (its `leaving`
    // beat unheard) is known to a restarted coordinator only from the
    // waits it replays: they are granted to nobody until a heartbeat says
    // the session is there.
    let mut sim = Sim::new();
    let token = sim.held_by_h(1);
    let gone = sim.acquire("w", "q", 60_000);
    sim.restart_with(&[gone], false, &["h"]);
    sim.release("h", "r", token);
    assert_eq!(sim.holder(), None, "not handed to an unheard session");
    assert!(sim.grant_token("w", "q").is_none());
    // Someone who is there is served meanwhile.
    sim.acquire("x", "t", 0);
    let t = sim
        .grant_token("x", "t")
        .expect("a heard session is granted");
    sim.release("x", "xr", t);
    // w beats after all: its wait is granted, in its place.
    sim.engine.heartbeat("w", hb(), sim.now);
    sim.settle();
    assert_eq!(sim.holder().as_deref(), Some("w"));
    assert!(sim.grant_token("w", "q").is_some());
}

#[test]
fn waiters_read_while_catching_up_hear_queued_once_ready() {
    let mut sim = Sim::new();
    sim.held_by_h(1);
    let w1 = sim.acquire("w", "w1", 60_000);
    let w2 = sim.acquire("w", "w2", 60_000);
    let t = sim.acquire("w", "t", 0);
    // Every coordinator restarts; the waiters' requests were not deleted.
    sim.restart(&[w1, w2, t]);
    let places: Vec<(String, u32)> = sim
        .answers_to("w")
        .into_iter()
        .filter_map(|a| match a {
            Answer::Queued { re, position, .. } => Some((re.clone(), *position)),
            _ => None,
        })
        .collect();
    assert_eq!(places, [("w1".to_owned(), 1), ("w2".to_owned(), 2)]);
    assert_eq!(sim.holder().as_deref(), Some("h"), "nothing else changed");
}
