//! Partitioned reading: a partition gained from a coordinator that left is
//! acted on only once it is read, and what was refused meanwhile is
//! answered then.

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
