//! Policies and quotas: refusals with their codes that change nothing.

use super::*;

#[test]
fn policies_refuse_long_leases_and_long_queues_and_change_nothing() {
    let mut sim = Sim::new();
    let mut cfg = EngineConfig::default();
    cfg.policies.push((
        LockName::new("k").unwrap(),
        PrefixLimits {
            max_ttl_ms: Some(2000),
            max_waiters: Some(1),
            ..PrefixLimits::default()
        },
    ));
    sim.engine.set_config(cfg);
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "long", "key": "k", "ttl_ms": 5000}),
    );
    assert_eq!(sim.error_code("h", "long"), Some(ErrorCode::InvalidTtl));
    assert_eq!(sim.bucket.seq, 0, "nothing written");
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "a", "key": "k", "ttl_ms": 2000}),
    );
    assert!(sim.grant_token("h", "a").is_some());
    for w in ["w1", "w2"] {
        let body = json!({"v": 1, "id": "a", "key": "k", "ttl_ms": 2000, "wait_ms": 60_000});
        sim.send("acquire", w, body);
    }
    assert_eq!(sim.error_code("w1", "a"), None, "w1 waits");
    assert_eq!(sim.error_code("w2", "a"), Some(ErrorCode::QueueFull));
    assert_eq!(sim.engine.queue_len("k"), 1);
    // The holder's reentry is not a waiter.
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "b", "key": "k", "ttl_ms": 2000}),
    );
    assert!(sim.grant_token("h", "b").is_some());
}

#[test]
fn only_the_preempt_subject_preempts_and_a_policy_can_forbid_it() {
    let mut sim = Sim::new();
    let t = sim.acquire("h", "a", 0);
    assert!(sim.grant_token("h", "a").is_some(), "h holds k ({t})");
    let notices = |sim: &Sim| {
        sim.answers
            .iter()
            .filter(|(s, a)| s == "h" && matches!(a, Answer::RevokeNotice { .. }))
            .count()
    };
    // On the acquire subject: refused, nothing queued, the holder untold.
    sim.engine.heartbeat("p", hb(), sim.now);
    let body = json!({"v": 1, "id": "p1", "key": "k", "wait_ms": 60_000, "preempt": true});
    sim.send("acquire", "p", body);
    assert_eq!(sim.error_code("p", "p1"), Some(ErrorCode::NotPermitted));
    assert_eq!(sim.engine.queue_len("k"), 0);
    assert_eq!(notices(&sim), 0);
    // A policy that forbids preemption refuses the preempt subject too.
    let mut cfg = EngineConfig::default();
    let forbid = PrefixLimits {
        preempt: Some(false),
        ..PrefixLimits::default()
    };
    cfg.policies.push((LockName::new("k").unwrap(), forbid));
    sim.engine.set_config(cfg);
    sim.send(
        "preempt",
        "p",
        json!({"v": 1, "id": "p2", "key": "k", "wait_ms": 60_000}),
    );
    assert_eq!(sim.error_code("p", "p2"), Some(ErrorCode::NotPermitted));
    assert_eq!(sim.engine.queue_len("k"), 0);
    assert_eq!(notices(&sim), 0);
    // Without the policy the preempt subject asks the holder to give way.
    sim.engine.set_config(EngineConfig::default());
    sim.send(
        "preempt",
        "p",
        json!({"v": 1, "id": "p3", "key": "k", "wait_ms": 60_000}),
    );
    assert_eq!(sim.error_code("p", "p3"), None);
    assert_eq!(notices(&sim), 1, "{:?}", sim.answers);
}

#[test]
fn session_quotas_refuse_more_locks_and_waits_and_count_again_after_releases() {
    let mut sim = Sim::new();
    let cfg = EngineConfig {
        max_locks_per_session: 2,
        max_waits_per_session: 1,
        ..EngineConfig::default()
    };
    sim.engine.set_config(cfg);
    for s in ["s", "h"] {
        sim.engine.heartbeat(s, hb(), sim.now);
    }
    let take = |sim: &mut Sim, s: &str, id: &str, key: &str, wait_ms: u64| {
        sim.send(
            "acquire",
            s,
            json!({"v": 1, "id": id, "key": key, "wait_ms": wait_ms}),
        );
    };
    take(&mut sim, "s", "a", "k1", 0);
    take(&mut sim, "s", "b", "k2", 0);
    let t1 = sim.grant_token("s", "a").expect("first lock");
    assert!(sim.grant_token("s", "b").is_some(), "second lock");
    take(&mut sim, "s", "c", "k3", 0);
    assert_eq!(sim.error_code("s", "c"), Some(ErrorCode::TooManyLocks));
    // A reentry is not a new lock.
    take(&mut sim, "s", "a2", "k1", 0);
    assert!(sim.grant_token("s", "a2").is_some());
    // Waits: one, then refused; nothing was queued for the refused one.
    take(&mut sim, "h", "x", "busy1", 0);
    take(&mut sim, "h", "y", "busy2", 0);
    let w = EngineConfig {
        max_locks_per_session: 0,
        max_waits_per_session: 1,
        ..EngineConfig::default()
    };
    sim.engine.set_config(w);
    take(&mut sim, "s", "w1", "busy1", 60_000);
    take(&mut sim, "s", "w2", "busy2", 60_000);
    assert_eq!(sim.error_code("s", "w1"), None, "waits");
    assert_eq!(sim.error_code("s", "w2"), Some(ErrorCode::TooManyWaits));
    assert_eq!(sim.engine.queue_len("busy2"), 0);
    // After releases the session is counted again (at most once a second).
    sim.engine.set_config(EngineConfig {
        max_locks_per_session: 2,
        max_waits_per_session: 0,
        ..EngineConfig::default()
    });
    for id in ["r1", "r2"] {
        sim.send(
            "release",
            "s",
            json!({"v": 1, "id": id, "key": "k1", "token": t1}),
        );
    }
    sim.now += Duration::from_secs(1);
    sim.engine.heartbeat("s", hb(), sim.now);
    take(&mut sim, "s", "d", "k3", 0);
    assert!(
        sim.grant_token("s", "d").is_some(),
        "{:?}",
        sim.error_code("s", "d")
    );
}

#[test]
fn sessions_per_prefix_are_bounded_and_a_refused_session_changes_nothing() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        max_sessions_per_prefix: 2,
        ..EngineConfig::default()
    });
    let ack = |sim: &mut Sim, session: &str| {
        let now = sim.now;
        sim.engine.heartbeat(session, hb(), now).expect("answered")
    };
    assert!(ack(&mut sim, "team.a").alive);
    assert!(ack(&mut sim, "team.b").alive);
    assert!(ack(&mut sim, "team.a").alive, "a live session beats on");
    let refused = ack(&mut sim, "team.c");
    assert!(!refused.alive);
    assert_eq!(refused.refused, Some(ErrorCode::TooManySessions));
    assert_eq!(sim.engine.stats.sessions_refused, 1);
    // Other prefixes have room of their own.
    assert!(ack(&mut sim, "other.a").alive);
    assert!(ack(&mut sim, "team.x.a").alive);
    // A request of a refused session is answered and changes nothing.
    sim.send(
        "acquire",
        "team.c",
        json!({"v": 1, "id": "q", "key": "k", "wait_ms": 0}),
    );
    assert_eq!(
        sim.error_code("team.c", "q"),
        Some(ErrorCode::TooManySessions)
    );
    assert_eq!(sim.holder(), None);
    // Refused is not dead: once a session of the prefix ends, it starts.
    let leaving = Heartbeat {
        leaving: true,
        ..hb()
    };
    let now = sim.now;
    sim.engine.heartbeat("team.a", leaving, now);
    assert!(ack(&mut sim, "team.c").alive);
    assert!(!ack(&mut sim, "team.d").alive);
}
