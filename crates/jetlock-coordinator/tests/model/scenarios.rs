//! The configurations the checker explores. Each case of issue 13 has a
//! scenario that gives its fault room to happen; `everything` lets every
//! fault happen in one run.

use crate::config::*;

/// Clock constants in ticks. Session timeouts: default and minimum 2, the
/// longest 4; reconnect grace 1; lease 6.
pub fn base(name: &'static str) -> Config {
    Config {
        name,
        fixes: Fixes::ALL,
        scripts: vec![
            vec![Op::Acquire(0), Op::Release(0)],
            vec![Op::Acquire(0), Op::Release(0)],
        ],
        client_timeout: vec![4, 4],
        coordinators: 2,
        keys: 1,
        home: vec![0],
        partitioned: false,
        moves: 0,
        unstored: false,
        client_side: vec![0, 0],
        coord_side: vec![0, 0],
        max_timeout: vec![4, 4],
        min_timeout: 2,
        default_timeout: 2,
        reconnect_grace: 1,
        lease: 6,
        horizon: 4,
        settle: 7,
        losses: 0,
        loss_kinds: HB | HB_ANSWER | ADVISORY | PROBE,
        dups: 0,
        dup_kinds: HB | HB_ANSWER | ANSWER | ADVISORY | PROBE,
        lost_acks: 0,
        restarts: 0,
        reconnects: 0,
        silences: 1,
        reorders: 0,
        split: None,
        check_liveness: true,
    }
}

/// Case 1: a coordinator restarts and replays a request of a session it
/// has not heard beat yet (client 0 states 4 ticks, the default is 2).
pub fn c1_replay() -> Config {
    Config {
        restarts: 1,
        ..base("c1: restart, replay, silence")
    }
}

/// Case 2: client 0 reconnects (its old connection reported `Client Closed`).
pub fn c2_reconnect() -> Config {
    Config {
        reconnects: 1,
        losses: 1,
        dups: 1,
        ..base("c2: reconnect, loss, dup")
    }
}

/// Case 3: a reentrant hold, a coordinator write whose ack is lost, and a
/// restart with replay.
pub fn c3_lost_ack() -> Config {
    Config {
        scripts: vec![
            vec![
                Op::Acquire(0),
                Op::Acquire(0),
                Op::Release(0),
                Op::Release(0),
            ],
            vec![Op::Acquire(0), Op::Release(0)],
        ],
        lost_acks: 1,
        restarts: 1,
        ..base("c3: reentrant, lost ack, restart")
    }
}

/// Case 4: coordinator 0, the key's home, is on the side of a route
/// partition without the JetStream quorum; the clients are on the other.
pub fn c4_route() -> Config {
    Config {
        coord_side: vec![1, 0],
        split: Some((SplitKind::Route, 5)),
        ..base("c4: route partition")
    }
}

/// Case 5a: a live config change lowered the longest timeout on
/// coordinator 1 (the key's home) first, so it clamps client 0's 4 to 2.
/// No message is lost here: with one lost heartbeat the fixed protocol
/// fails too (`c5_mixed_clamp_with_loss`).
pub fn c5_mixed_clamp() -> Config {
    Config {
        max_timeout: vec![4, 2],
        home: vec![1],
        dups: 1,
        ..base("c5a: coordinators clamp differently")
    }
}

/// The same with heartbeats that may be lost: coordinator 1 learns client 0
/// from its request (C1: its own longest timeout, 2) and client 0 never
/// hears that 2.
pub fn c5_mixed_clamp_with_loss() -> Config {
    Config {
        losses: 1,
        loss_kinds: HB,
        ..c5_mixed_clamp()
    }
}

/// Case 5b: heartbeat answers may be lost, so a client can hold a lock with
/// no session confirmation yet.
pub fn c5_unconfirmed() -> Config {
    Config {
        losses: 2,
        loss_kinds: HB_ANSWER,
        ..base("c5b: lost heartbeat answers")
    }
}

/// Case 5c: coordinator 0's connection stalls (it hears nothing, not its
/// own beat either) for up to 4 ticks.
pub fn c5_cut() -> Config {
    Config {
        split: Some((SplitKind::CutCoordinator0, 4)),
        ..base("c5c: coordinator 0 cut off")
    }
}

/// Every fault kind may happen in one run, once each.
pub fn everything() -> Config {
    Config {
        scripts: vec![
            vec![
                Op::Acquire(0),
                Op::Acquire(0),
                Op::Release(0),
                Op::Release(0),
            ],
            vec![Op::Acquire(0), Op::Release(0)],
        ],
        losses: 1,
        dups: 1,
        lost_acks: 1,
        restarts: 1,
        reconnects: 1,
        reorders: 1,
        coord_side: vec![1, 0],
        split: Some((SplitKind::Route, 3)),
        horizon: 3,
        ..base("all faults, 2 clients, 1 key")
    }
}

/// Three clients on two keys, with message loss and duplication.
pub fn three_clients() -> Config {
    Config {
        scripts: vec![
            vec![Op::Acquire(0), Op::Release(0)],
            vec![
                Op::Acquire(0),
                Op::Acquire(1),
                Op::Release(1),
                Op::Release(0),
            ],
            vec![Op::Acquire(1), Op::Release(1)],
        ],
        client_timeout: vec![4, 4, 4],
        keys: 2,
        home: vec![0, 1],
        client_side: vec![0, 0, 0],
        losses: 1,
        dups: 1,
        horizon: 3,
        ..base("3 clients, 2 keys, loss, dup")
    }
}

/// The mutation runs' scenarios: for each case the smallest found that
/// still shows it when its fix is reverted, so that run ends in seconds.
/// Each client acquires once and never releases (exclusion is what they
/// check; with no release a waiter waits to the end, so they do not check
/// liveness). Run with every fix on, each shows no counterexample.
fn small(name: &'static str) -> Config {
    Config {
        scripts: vec![vec![Op::Acquire(0)], vec![Op::Acquire(0)]],
        silences: 0,
        check_liveness: false,
        settle: 1,
        ..base(name)
    }
}

/// Case 1: client 0 stops beating at once, coordinator 0 restarts and
/// learns it from its request; the silence lasts to the horizon.
pub fn c1_small() -> Config {
    Config {
        restarts: 1,
        silences: 1,
        horizon: 3,
        ..small("c1 small: restart, silence")
    }
}

/// Case 2: one reconnect in the first tick.
pub fn c2_small() -> Config {
    Config {
        reconnects: 1,
        horizon: 1,
        ..small("c2 small: reconnect")
    }
}

/// Case 3: a reentrant hold and a lost ack in the first tick.
pub fn c3_small() -> Config {
    Config {
        scripts: vec![
            vec![
                Op::Acquire(0),
                Op::Acquire(0),
                Op::Release(0),
                Op::Release(0),
            ],
            vec![Op::Acquire(0)],
        ],
        lost_acks: 1,
        horizon: 1,
        ..small("c3 small: reentrant, lost ack")
    }
}

/// Case 4: the route partition with 2-tick sessions (a death after three
/// ticks of silence), healed by the horizon.
pub fn c4_small() -> Config {
    Config {
        client_timeout: vec![2, 2],
        coord_side: vec![1, 0],
        split: Some((SplitKind::Route, 5)),
        horizon: 4,
        ..small("c4 small: route partition")
    }
}

/// Confirmations across a route partition: client 0 and coordinator 0 are
/// on the side without the quorum, client 1 and coordinator 1 (the key's
/// home) on the other. Coordinator 1 stops hearing client 0 and declares
/// it dead; what coordinator 0 answers client 0 meanwhile decides whether
/// client 0 goes on believing.
pub fn c4_confirm() -> Config {
    Config {
        client_side: vec![1, 0],
        coord_side: vec![1, 0],
        home: vec![1],
        split: Some((SplitKind::Route, 5)),
        silences: 1,
        horizon: 5,
        ..small("c4b small: client cut off with its coordinator")
    }
}

/// Case 5a: coordinators clamp differently and client 0 stops beating.
/// As in case 1, faults go on through the tick of the death.
pub fn c5a_small() -> Config {
    Config {
        max_timeout: vec![4, 2],
        home: vec![1],
        silences: 1,
        horizon: 4,
        ..small("c5a small: coordinators clamp differently")
    }
}

/// Case 5b: client 0's first heartbeat answer is lost and it stops
/// beating. One coordinator: with two, both answers must be lost, and the
/// answers in flight make the run about a hundred times larger.
pub fn c5b_small() -> Config {
    Config {
        client_timeout: vec![2, 2],
        coordinators: 1,
        coord_side: vec![0],
        max_timeout: vec![4],
        losses: 1,
        loss_kinds: HB_ANSWER,
        silences: 1,
        horizon: 4,
        ..small("c5b small: lost heartbeat answers")
    }
}

/// Case 5c: coordinator 0 (the key's home) stalls for two ticks, shorter
/// than the old echo cut-off of three, after last hearing client 0.
pub fn c5c_small() -> Config {
    Config {
        client_timeout: vec![2, 2],
        split: Some((SplitKind::CutCoordinator0, 4)),
        horizon: 5,
        ..small("c5c small: coordinator 0 stalls")
    }
}

/// Fix 8: core NATS loses a heartbeat on its way to one subscriber only.
/// The copies of client 0's beats of t=1 and t=2 to coordinator 0 (the
/// key's home) may be lost while coordinator 1 hears and confirms them:
/// client 0 counts its deadline from t=2, coordinator 0 last heard it at
/// t=0 and may declare it dead at t=3.
pub fn c8_small() -> Config {
    Config {
        client_timeout: vec![2, 2],
        losses: 2,
        loss_kinds: HB,
        horizon: 3,
        ..small("c8 small: heartbeat lost to one coordinator")
    }
}

/// Partitioned coordinators (docs/SCALING.md, "Partitioned coordinators"):
/// each reads only the requests of the keys it owns, and key 0 moves once
/// to the other while a client's heartbeats may stop or one be lost.
pub fn partition_move() -> Config {
    Config {
        partitioned: true,
        moves: 1,
        horizon: 2,
        ..base("partitions: a move, silence")
    }
}

/// A move, a restart (which replays only the keys the coordinator owns)
/// and a write whose ack is lost.
pub fn partition_move_restart() -> Config {
    Config {
        partitioned: true,
        moves: 1,
        restarts: 1,
        lost_acks: 1,
        horizon: 3,
        ..small("partitions: a move, lost ack, restart")
    }
}

/// Sessions holding keys of both coordinators while a heartbeat is lost to
/// one of them: the death of a session with locks in two partitions, with
/// one of them moving.
pub fn partition_two_owners() -> Config {
    Config {
        scripts: vec![
            vec![Op::Acquire(0), Op::Acquire(1)],
            vec![Op::Acquire(1), Op::Acquire(0)],
        ],
        keys: 2,
        home: vec![0, 1],
        partitioned: true,
        moves: 1,
        client_timeout: vec![2, 2],
        losses: 2,
        loss_kinds: HB,
        horizon: 3,
        ..small("partitions: two owners, heartbeats lost to one")
    }
}

/// The partitioned runs of CI's debug build: a move and a lost ack in the
/// first two ticks, two clients acquiring once.
pub fn partition_small() -> Config {
    Config {
        partitioned: true,
        moves: 1,
        lost_acks: 1,
        horizon: 2,
        ..small("partitions small: a move, lost ack")
    }
}

/// A handoff across a move (CI's debug build): client 0 releases, client
/// 1 waits, the key moves in the first tick; liveness is checked.
pub fn partition_handoff_small() -> Config {
    Config {
        partitioned: true,
        moves: 1,
        silences: 0,
        horizon: 1,
        settle: 4,
        ..base("partitions small: a handoff across a move")
    }
}

/// Unstored releases (protocol 1.8): client 0's release goes unstored, and
/// a copy may be lost or duplicated while the key moves; liveness is
/// checked.
pub fn unstored() -> Config {
    Config {
        unstored: true,
        moves: 1,
        losses: 1,
        loss_kinds: UNSTORED,
        dups: 1,
        dup_kinds: UNSTORED,
        silences: 0,
        horizon: 2,
        ..base("unstored: lost, duplicated, a move")
    }
}

/// Unstored releases with a coordinator restart and a write whose ack is
/// lost (the release's handoff, or the grant before it).
pub fn unstored_restart() -> Config {
    Config {
        unstored: true,
        restarts: 1,
        lost_acks: 1,
        losses: 1,
        loss_kinds: UNSTORED,
        silences: 0,
        horizon: 2,
        ..base("unstored: lost, restart, lost ack")
    }
}

/// Unstored releases in CI's debug build: lost, or carried out across a
/// move, in the first tick.
pub fn unstored_small() -> Config {
    Config {
        unstored: true,
        moves: 1,
        losses: 1,
        loss_kinds: UNSTORED,
        silences: 0,
        horizon: 1,
        settle: 4,
        ..base("unstored small: lost, or across a move")
    }
}
