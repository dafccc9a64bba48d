//! Proof of hearing and agreed deaths: a coordinator that cannot prove it
//! hears the quorum declares nobody dead and confirms nobody; a death by
//! silence waits for the others.

use super::*;

#[test]
fn a_coordinator_that_cannot_prove_it_hears_the_quorum_declares_nobody_dead() {
    let mut sim = Sim::new();
    sim.acquire("s", "a1", 0);
    let token = sim.grant_token("s", "a1").expect("granted");
    // Our server lost its routes (its own echo still comes back): proof
    // beats are not stored, and the session's heartbeats on the other side
    // never arrive, for far longer than its timeout.
    sim.quorum = false;
    for _ in 0..100 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        !sim.events.iter().any(|e| e.kind == EventKind::SessionDown),
        "a coordinator without proof of hearing declared a session dead"
    );
    // Healed: the silence was ours, so the session counts as heard from
    // the first stored beat and has its whole timeout to heartbeat.
    sim.quorum = true;
    sim.advance(Duration::from_millis(50));
    sim.advance(Duration::from_millis(50));
    assert!(!sim.events.iter().any(|e| e.kind == EventKind::SessionDown));
    assert!(matches!(
        sim.bucket.keys.get("k"),
        Some(Current::Held { .. })
    ));
    sim.engine.heartbeat("s", hb(), sim.now);
    for _ in 0..10 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(!sim.events.iter().any(|e| e.kind == EventKind::SessionDown));
    // While we provably hear, silence is the session's: it dies.
    for _ in 0..40 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.events
            .iter()
            .any(|e| e.kind == EventKind::SessionDown && e.subject.as_deref() == Some("s")),
        "the silent session was declared dead once we heard the quorum (token {token})"
    );
}

#[test]
fn a_death_waits_for_a_proof_beat_sent_after_its_deadline() {
    let mut sim = Sim::new();
    sim.acquire("s", "a1", 0);
    // Time passes with no proof beat at all (none sent: the runtime is
    // slow), past the session's deadline.
    sim.now += Duration::from_millis(950);
    sim.engine.tick(sim.now);
    let actions = sim.engine.take_actions();
    assert!(
        actions.contains(&Action::Prove),
        "asks for proof: {actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Write(_))));
    // A beat sent before the gap and stored now proves nothing after it.
    let long_ago = sim.now - Duration::from_millis(900);
    sim.engine.proof_acked(long_ago, long_ago, sim.now);
    assert!(sim
        .engine
        .take_actions()
        .iter()
        .all(|a| !matches!(a, Action::Write(_))));
}

#[test]
fn a_coordinator_that_cannot_prove_it_hears_the_quorum_confirms_no_session() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        confirm_with_proof: true,
        ..EngineConfig::default()
    });
    // Cut off with the client's server: its heartbeats arrive here, and
    // nowhere else.
    sim.quorum = false;
    sim.engine.heartbeat_to("s", hb(), "r1".into(), sim.now);
    sim.settle();
    for _ in 0..25 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.acks.is_empty(),
        "answered alive without proof of hearing"
    );
    // Healed: a heartbeat read once the new span of hearing has settled
    // (150 ms) is answered with the first beat after it; the one from the
    // cut is not (a client has long heartbeated again), nor one read right
    // after the heal (it may have been sent during the cut).
    sim.quorum = true;
    sim.engine.heartbeat_to("s", hb(), "r-heal".into(), sim.now);
    for _ in 0..4 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.acks.is_empty(),
        "answered a heartbeat read as the cut healed"
    );
    sim.engine.heartbeat_to("s", hb(), "r2".into(), sim.now);
    sim.settle();
    assert!(sim.acks.is_empty(), "answered before a beat sent after it");
    sim.advance(Duration::from_millis(50));
    let replies: Vec<_> = sim
        .acks
        .iter()
        .map(|(r, a)| (r.as_str(), a.alive))
        .collect();
    assert_eq!(replies, [("r2", true)]);
    // `alive: false` needs no proof.
    let leaving = Heartbeat {
        leaving: true,
        ..hb()
    };
    sim.quorum = false;
    sim.engine.heartbeat_to("s", leaving, "r3".into(), sim.now);
    sim.settle();
    assert_eq!(
        sim.acks.last().map(|(r, a)| (r.as_str(), a.alive)),
        Some(("r3", false))
    );
}

#[test]
fn a_death_by_silence_stands_only_once_the_other_coordinators_heard_nothing_either() {
    let mut sim = Sim::new();
    let other = "c-other".to_owned();
    let beat = |sim: &mut Sim| {
        let b = CoordinatorBeat {
            v: 1,
            id: other.clone(),
            conn: None,
            now_ms: None,
            leaving: false,
        };
        let now = sim.now;
        sim.engine.coordinator_beat(b, now);
    };
    let alive = |sim: &Sim| sim.engine.live_sessions() == 1;
    // Runs 50 ms steps (proof beats all along) until a question is asked.
    let asked = |sim: &mut Sim| {
        for _ in 0..100 {
            sim.advance(Duration::from_millis(50));
            beat(sim);
            if let Some(q) = sim.asked.pop() {
                return q;
            }
        }
        panic!("never asked");
    };
    beat(&mut sim);
    sim.engine.heartbeat("s", hb(), sim.now);
    let heard_here = sim.now;

    let (round, sessions) = asked(&mut sim);
    assert_eq!(sessions, ["s"]);
    assert!(sim.now >= heard_here + Duration::from_millis(900));
    assert!(alive(&sim), "overdue here, not dead before the answer");
    // Unanswered: it stays alive, and is asked about again.
    let (round, _) = {
        let late = asked(&mut sim);
        assert_ne!(late.0, round);
        late
    };
    assert!(alive(&sim), "an unanswered question kills nobody");
    // The other heard a heartbeat that never reached us, 200 ms ago.
    let now = sim.now;
    sim.engine.heard_reply(&other, round, &[Some(200)], now);
    sim.settle();
    assert!(alive(&sim), "revived from when the other heard it");
    // Silence on both: asked again, and dead once the other counts it
    // overdue too.
    let (round, _) = asked(&mut sim);
    let now = sim.now;
    assert_eq!(
        sim.engine.heard_query(&["s".into()], now),
        [None],
        "overdue here: what this one would answer"
    );
    sim.engine.heard_reply(&other, round, &[None], now);
    sim.settle();
    assert!(!alive(&sim), "dead once nobody heard it for its timeout");
    assert_eq!(
        sim.engine.heartbeat("s", hb(), sim.now).map(|a| a.alive),
        Some(false)
    );
}

/// The simulation's seed 1202 (two coordinators): a heartbeat reached only
/// the other coordinator, which confirmed it and then crashed. This one,
/// alone now, must not count the session's silence from the heartbeat
/// before: the client's deadline runs from the one confirmed.
#[test]
fn a_coordinator_that_left_may_have_confirmed_a_heartbeat_this_one_missed() {
    let mut sim = Sim::new();
    coordinator_beat(&mut sim, "c-other", false);
    let alive = |sim: &Sim| sim.engine.live_sessions() == 1;
    sim.engine.heartbeat("s", hb(), sim.now);
    // The next heartbeat, 400 ms later, reaches only the other, which
    // answers it alive: the client believes until 400 + 810 ms.
    sim.advance(Duration::from_millis(400));
    coordinator_beat(&mut sim, "c-other", false);
    let confirmed_elsewhere = sim.now;
    // The other leaves 100 ms later; nothing more is heard.
    sim.advance(Duration::from_millis(100));
    coordinator_beat(&mut sim, "c-other", true);
    let client_deadline = confirmed_elsewhere + Duration::from_millis(810);
    while sim.now < client_deadline {
        sim.advance(Duration::from_millis(50));
        assert!(
            alive(&sim),
            "declared dead at {:?} while the client believes",
            sim.now
        );
    }
    // Silence for a whole timeout after the departure: dead.
    for _ in 0..40 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(!alive(&sim), "dead once silent for its timeout since");
}
