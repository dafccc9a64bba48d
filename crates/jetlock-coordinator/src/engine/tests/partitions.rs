//! Partitioned reading: a partition gained from a coordinator that left is
//! acted on only once it is read, and what was refused meanwhile is
//! answered then. So is what a starting coordinator refused before it was
//! ready.

use super::*;

#[test]
fn a_refusal_read_while_a_gained_partition_is_read_is_sent_once_it_is() {
    let mut sim = Sim::new();
    sim.engine.set_partitions(16);
    let (all, _) = sim
        .engine
        .take_partition_change()
        .expect("told what to read");
    assert_eq!(all.len(), 16, "alone it reads every partition");
    coordinator_beat(&mut sim, "c1", false);
    let (mine, _) = sim
        .engine
        .take_partition_change()
        .expect("the ring changed");
    let p = (0..16).find(|p| !mine.contains(p)).expect("c1 owns some");
    // c1 leaves: its partitions are this one's again, not read yet.
    coordinator_beat(&mut sim, "c1", true);
    let (_, generation) = sim
        .engine
        .take_partition_change()
        .expect("the ring changed");
    assert!(sim.engine.partitions_catching_up() > 0);
    let subject = protocol::partitioned_request_subject(p, protocol::Op::Acquire, "s1");
    sim.engine
        .request(7, &subject, b"{", Duration::ZERO, sim.now);
    sim.settle();
    assert!(
        sim.answers_to("s1").is_empty(),
        "nothing sent while it is read"
    );
    assert!(sim.deleted.is_empty());
    sim.engine.partitions_caught_up(generation, sim.now);
    sim.settle();
    let answers = sim.answers_to("s1");
    assert!(
        matches!(
            answers.as_slice(),
            [Answer::Error {
                code: ErrorCode::BadRequest,
                ..
            }]
        ),
        "{answers:?}"
    );
    assert_eq!(sim.deleted, [7]);
    assert_eq!(sim.engine.partitions_catching_up(), 0);
}

/// A coordinator restarting alone is the only one to read what was sent
/// while it was down: its refusals go out once it is ready, read from the
/// message alone or decided by the lock's state.
#[test]
fn refusals_read_while_starting_alone_are_sent_once_ready() {
    let mut sim = Sim::starting();
    let bad = sim.send(
        "acquire",
        "s1",
        json!({"v": 1, "id": "b1", "key": "k", "ttl_ms": 0}),
    );
    sim.acquire("s2", "a", 0);
    let dup = sim.acquire("s2", "a", 0);
    assert!(sim.answers.is_empty(), "nothing leaves before ready");
    assert!(sim.deleted.is_empty());
    sim.engine.set_ready(sim.now);
    sim.settle();
    assert_eq!(sim.error_code("s1", "b1"), Some(ErrorCode::InvalidTtl));
    assert!(
        sim.grant_token("s2", "a").is_some(),
        "the first one is granted"
    );
    assert_eq!(sim.error_code("s2", "a"), Some(ErrorCode::Duplicate));
    assert!(sim.deleted.contains(&bad) && sim.deleted.contains(&dup));
}

/// Another coordinator's done note says it answered the refusal: it is not
/// sent again.
#[test]
fn a_refusal_another_coordinator_answered_is_not_sent_again_once_ready() {
    let mut sim = Sim::starting();
    sim.send(
        "acquire",
        "s1",
        json!({"v": 1, "id": "b1", "key": "k", "ttl_ms": 0}),
    );
    sim.engine.answered("s1", "b1", sim.now);
    sim.engine.set_ready(sim.now);
    sim.settle();
    assert!(sim.answers_to("s1").is_empty(), "{:?}", sim.answers);
}

/// With another coordinator live, a refusal the lock's state decided is
/// left to it: it read the request too and may have granted it. One read
/// from the message alone says the same whoever sends it.
#[test]
fn a_state_decided_refusal_is_not_sent_at_ready_while_another_coordinator_lives() {
    let mut sim = Sim::starting();
    coordinator_beat(&mut sim, "c1", false);
    let mut sent_bad = false;
    for i in 0..16 {
        let s = format!("s{i}");
        let acquire = json!({"v": 1, "id": "a", "key": format!("k{i}")});
        sim.send("acquire", &s, acquire.clone());
        sim.send("acquire", &s, acquire);
        sim.send(
            "acquire",
            &s,
            json!({"v": 1, "id": "b", "key": "k", "ttl_ms": 0}),
        );
    }
    sim.engine.set_ready(sim.now);
    sim.settle();
    for i in 0..16 {
        let s = format!("s{i}");
        assert_ne!(sim.error_code(&s, "a"), Some(ErrorCode::Duplicate), "{s}");
        sent_bad |= sim.error_code(&s, "b") == Some(ErrorCode::InvalidTtl);
    }
    assert!(
        sent_bad,
        "the sessions this coordinator owns hear their bad requests"
    );
}
