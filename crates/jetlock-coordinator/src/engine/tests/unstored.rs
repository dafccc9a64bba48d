//! Unstored releases (`jetlock.now.release.<session>`): a handoff in one
//! write, and nothing that rests on a stream sequence the release lacks.

use super::*;

impl Sim {
    /// Sends an unstored release of `k`.
    fn release_unstored(&mut self, session: &str, id: &str, token: u64) {
        let body = json!({"v": 1, "id": id, "key": "k", "token": token});
        let subject = protocol::unstored_release_subject(session);
        self.engine
            .unstored_release(&subject, &serde_json::to_vec(&body).unwrap(), self.now);
        self.settle();
    }

    fn released(&self, session: &str, id: &str) -> usize {
        self.answers_to(session)
            .iter()
            .filter(|a| matches!(a, Answer::Released { re, .. } if re == id))
            .count()
    }
}

#[test]
fn an_unstored_release_hands_the_lock_on_in_one_write() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").expect("free lock granted");
    sim.acquire("w", "a", 60_000);
    let (writes, deleted) = (sim.bucket.seq, sim.deleted.len());
    sim.release_unstored("h", "r", token);
    assert_eq!(sim.released("h", "r"), 1);
    assert!(sim.grant_token("w", "a").is_some_and(|t| t > token));
    assert_eq!(sim.holder().as_deref(), Some("w"));
    assert_eq!(sim.bucket.seq - writes, 1, "the handoff is the only write");
    // The waiter's acquire is deleted; the release has no message.
    assert_eq!(sim.deleted.len() - deleted, 1);
    assert!(!sim.deleted.contains(&0));
}

#[test]
fn an_unstored_release_without_waiters_frees_the_lock() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.release_unstored("h", "r", token);
    assert_eq!(sim.released("h", "r"), 1);
    assert_eq!(sim.holder(), None);
    assert!(!sim.deleted.contains(&0));
}

#[test]
fn an_unstored_release_of_another_hold_is_dropped_unanswered() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("x", "a", 60_000);
    let answers = sim.answers.len();
    sim.reads = Some(Vec::new());
    // Another session's lock, a stale token, a token not granted yet: no
    // answer, no queued operation, no read (the client releases another
    // way, which answers it).
    sim.release_unstored("x", "r1", token);
    sim.release_unstored("h", "r2", token - 1);
    sim.release_unstored("h", "r3", token + 1);
    // A request id the session used before: a second copy, dropped too.
    sim.release_unstored("h", "a", token);
    assert_eq!(sim.answers.len(), answers);
    assert_eq!(sim.reads.take().map(|r| r.len()), Some(0));
    assert_eq!(sim.holder().as_deref(), Some("h"));
    // The hold's own release goes through.
    sim.release_unstored("h", "r4", token);
    assert_eq!(sim.released("h", "r4"), 1);
    assert_eq!(sim.holder().as_deref(), Some("x"));
    assert!(!sim.deleted.contains(&0));
}

#[test]
fn an_unstored_release_whose_ack_is_lost_is_not_run_twice() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("w", "a", 60_000);
    sim.acquire("v", "a", 60_000);
    let writes = sim.bucket.seq;
    sim.lose_acks = 1;
    sim.release_unstored("h", "r", token);
    // The handoff landed; the read after the lost ack shows `w` holding
    // with the old hold ended: the release is answered, `v` still waits.
    assert_eq!(sim.released("h", "r"), 1);
    assert_eq!(sim.holder().as_deref(), Some("w"));
    assert!(sim.grant_token("w", "a").is_some());
    assert!(sim.grant_token("v", "a").is_none());
    assert_eq!(sim.bucket.seq - writes, 1);
}

#[test]
fn only_the_keys_owner_takes_an_unstored_release_once_ready() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    // Another coordinator joins and the ring gives it `k`: this one keeps
    // no mirror of an unstored release, so it leaves it alone.
    let key = LockName::new("k").unwrap().key().to_owned();
    let beat = |id: String, leaving| CoordinatorBeat {
        v: 1,
        id,
        conn: None,
        now_ms: None,
        leaving,
    };
    for i in 0.. {
        sim.engine
            .coordinator_beat(beat(format!("c{i}"), false), sim.now);
        if sim.engine.ring().owner(&key) != "me" {
            break;
        }
        sim.engine
            .coordinator_beat(beat(format!("c{i}"), true), sim.now);
    }
    sim.release_unstored("h", "r", token);
    assert_eq!(sim.released("h", "r"), 0);
    assert_eq!(sim.holder().as_deref(), Some("h"));
    // A coordinator still catching up takes none either.
    let mut fresh = Engine::new("fresh".into(), EngineConfig::default());
    let body = json!({"v": 1, "id": "r", "key": "k", "token": token});
    fresh.unstored_release(
        &protocol::unstored_release_subject("h"),
        &serde_json::to_vec(&body).unwrap(),
        sim.now,
    );
    assert!(fresh.take_actions().is_empty());
}

#[test]
fn bad_unstored_releases_change_nothing() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    let cases: [(&str, &[u8]); 4] = [
        (
            "jetlock.now.release.*",
            br#"{"v":1,"id":"r","key":"k","token":1}"#,
        ),
        ("jetlock.now.release.h", b"not json"),
        (
            "jetlock.now.release.h",
            br#"{"v":2,"id":"r","key":"k","token":1}"#,
        ),
        ("jetlock.now.release.h", br#"{"v":1,"id":"r","key":"k"}"#),
    ];
    for (subject, body) in cases {
        sim.engine.unstored_release(subject, body, sim.now);
        sim.settle();
    }
    assert_eq!(sim.holder().as_deref(), Some("h"));
    assert!(sim.grant_token("h", "a") == Some(token));
    assert_eq!(sim.released("h", "r"), 0);
    // The bad bodies of a well-named session are answered as errors.
    assert!(sim.error_code("h", "r").is_some());
}
