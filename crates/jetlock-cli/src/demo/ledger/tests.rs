//! The ledger's rules, one request at a time.

use super::*;
use proptest::prelude::*;

fn ledger(fault: Option<Fault>) -> Ledger {
    let transfers = [
        (
            "m1",
            Transfer {
                from: 0,
                to: 1,
                amount: 30,
            },
        ),
        (
            "m2",
            Transfer {
                from: 1,
                to: 2,
                amount: 10,
            },
        ),
    ];
    Ledger::new(
        3,
        PARTITIONS,
        100,
        transfers.into_iter().map(|(id, t)| (id.to_owned(), t)),
        fault,
    )
}

/// Two partitions: `m1` (from account 0) is in partition 0, `m2` in 1.
const PARTITIONS: u32 = 2;

/// The partition of a transfer paid from `from`, under lease token 1.
fn own(from: u32) -> PartitionToken {
    PartitionToken {
        partition: from % PARTITIONS,
        token: 1,
    }
}

fn read(l: &mut Ledger, msg: &str, accounts: [u32; 2], tokens: [u64; 2]) -> Reply {
    read_in(l, own(accounts[0]), "w0.0", msg, accounts, tokens)
}

fn read_in(
    l: &mut Ledger,
    partition: PartitionToken,
    worker: &str,
    msg: &str,
    accounts: [u32; 2],
    tokens: [u64; 2],
) -> Reply {
    let r = ReadRequest {
        msg_id: msg.into(),
        worker: worker.into(),
        tokens: [0, 1].map(|i| AccountToken {
            account: accounts[i],
            token: tokens[i],
        }),
        lock_wait_us: 1500,
        handoff: false,
        partition,
    };
    l.handle("read", &serde_json::to_vec(&r).unwrap()).reply
}

fn write(l: &mut Ledger, msg: &str, set: [(u32, u64, i64); 2]) -> Handled {
    write_in(l, own(set[0].0), msg, set)
}

fn write_in(
    l: &mut Ledger,
    partition: PartitionToken,
    msg: &str,
    set: [(u32, u64, i64); 2],
) -> Handled {
    let w = WriteRequest {
        msg_id: msg.into(),
        worker: "w0.0".into(),
        set: set.map(|(account, token, balance)| NewBalance {
            account,
            token,
            balance,
        }),
        partition,
    };
    l.handle("write", &serde_json::to_vec(&w).unwrap())
}

fn held(l: &Ledger, name: &str) -> bool {
    l.invariants().iter().find(|i| i.name == name).unwrap().held
}

#[test]
fn a_transfer_reads_writes_and_marks_the_commit() {
    let mut l = ledger(None);
    let reply = read(&mut l, "m1", [0, 1], [5, 6]);
    assert_eq!(
        reply,
        Reply::Balances {
            balances: [100, 100]
        }
    );
    let done = write(&mut l, "m1", [(0, 5, 70), (1, 6, 130)]);
    assert_eq!(done.reply, Reply::Applied);
    assert_eq!(
        done.moment,
        Some(Moment::Committed {
            worker: "w0.0".into()
        })
    );
    assert_eq!(l.counts().applied, 1);
    assert!(l
        .invariants()
        .iter()
        .filter(|i| i.name != "every transfer applied exactly once")
        .all(|i| i.held));
    assert!(!held(&l, "every transfer applied exactly once"));
}

#[test]
fn a_redelivered_transfer_is_refused_as_a_duplicate() {
    let mut l = ledger(None);
    read(&mut l, "m1", [0, 1], [5, 6]);
    write(&mut l, "m1", [(0, 5, 70), (1, 6, 130)]);
    // The redelivery, under newer locks, reads the new balances.
    assert_eq!(
        read(&mut l, "m1", [0, 1], [9, 10]),
        Reply::Balances {
            balances: [70, 130]
        }
    );
    assert_eq!(
        write(&mut l, "m1", [(0, 9, 40), (1, 10, 160)]).reply,
        Reply::Duplicate
    );
    let c = l.counts();
    assert_eq!((c.applied, c.duplicates_refused, c.retries), (1, 1, 1));
    assert!(held(&l, "no transfer applied twice"));
    assert!(held(&l, "total balance conserved"));
}

#[test]
fn double_apply_fault_is_caught_by_the_invariants() {
    let mut l = ledger(Some(Fault::DoubleApply));
    write(&mut l, "m1", [(0, 5, 70), (1, 6, 130)]);
    assert_eq!(
        write(&mut l, "m1", [(0, 9, 40), (1, 10, 160)]).reply,
        Reply::Applied
    );
    assert!(!held(&l, "no transfer applied twice"));
}

#[test]
fn a_stale_write_is_fenced_off_and_changes_nothing() {
    let mut l = ledger(None);
    // The paused holder read with tokens 5, 6; a newer holder read with 7, 8.
    read(&mut l, "m1", [0, 1], [5, 6]);
    read(&mut l, "m1", [0, 1], [7, 8]);
    let reply = write(&mut l, "m1", [(0, 5, 70), (1, 6, 130)]).reply;
    assert_eq!(
        reply,
        Reply::Fenced {
            account: 0,
            presented: 5,
            highest: 7
        }
    );
    assert_eq!(
        read(&mut l, "m2", [1, 2], [6, 3]),
        Reply::Fenced {
            account: 1,
            presented: 6,
            highest: 8
        }
    );
    let c = l.counts();
    assert_eq!((c.applied, c.fenced_writes, c.fenced_reads), (0, 1, 1));
    assert_eq!(
        read(&mut l, "m1", [0, 1], [7, 8]),
        Reply::Balances {
            balances: [100, 100]
        }
    );
}

#[test]
fn skip_fence_fault_lets_a_lost_update_through_and_is_caught() {
    let mut l = ledger(Some(Fault::SkipFence));
    // Holder A of account 1 (token 6) reads, pauses; B moves 10 from 1 to 2.
    read(&mut l, "m1", [0, 1], [5, 6]);
    read(&mut l, "m2", [1, 2], [8, 9]);
    write(&mut l, "m2", [(1, 8, 90), (2, 9, 110)]);
    // A wakes and writes what it computed from its stale read.
    assert_eq!(
        write(&mut l, "m1", [(0, 5, 70), (1, 6, 130)]).reply,
        Reply::Applied
    );
    assert!(!held(&l, "total balance conserved"));
    assert!(!held(&l, "no stale write applied"));
}

#[test]
fn overdrafts_and_bad_requests_are_refused_and_change_nothing() {
    let mut l = ledger(None);
    let refused =
        |r: Reply, code: Refusal| matches!(r, Reply::Refused { code: c, .. } if c == code);
    assert!(refused(
        write(&mut l, "m1", [(0, 5, -1), (1, 6, 201)]).reply,
        Refusal::Overdraft
    ));
    assert!(refused(
        write(&mut l, "m1", [(1, 5, 0), (0, 6, 0)]).reply,
        Refusal::BadRequest
    ));
    assert!(refused(
        read(&mut l, "nope", [0, 1], [1, 1]),
        Refusal::UnknownTransfer
    ));
    assert!(refused(
        l.handle("delete", b"{}").reply,
        Refusal::BadRequest
    ));
    assert!(refused(
        l.handle("read", b"{\"msg_id\":1}").reply,
        Refusal::BadRequest
    ));
    assert_eq!(l.counts().refused, 5);
    assert_eq!(
        read(&mut l, "m1", [0, 1], [5, 6]),
        Reply::Balances {
            balances: [100, 100]
        }
    );
}

#[test]
fn a_deposed_partition_owner_is_fenced_off_and_moves_are_counted() {
    let mut l = ledger(None);
    let lease = |token| PartitionToken {
        partition: 0,
        token,
    };
    read_in(&mut l, lease(4), "w0.0", "m1", [0, 1], [5, 6]);
    // w1 took partition 0 over (a newer lease) while w0 slept.
    read_in(&mut l, lease(9), "w1.0", "m1", [0, 1], [7, 8]);
    assert_eq!(
        write_in(&mut l, lease(4), "m1", [(0, 7, 70), (1, 8, 130)]).reply,
        Reply::PartitionFenced {
            partition: 0,
            presented: 4,
            highest: 9
        }
    );
    assert_eq!(
        write_in(&mut l, lease(9), "m1", [(0, 7, 70), (1, 8, 130)]).reply,
        Reply::Applied
    );
    let c = l.counts();
    assert_eq!((c.fenced_partition, c.partition_moves), (1, 1));
    assert_eq!(
        l.partition_owners(),
        [("w1".to_owned(), 1)].into_iter().collect()
    );
    assert!(held(&l, "every transfer applied under its own partition"));
}

#[test]
fn a_transfer_applied_under_another_partition_fails_the_invariant() {
    let mut l = ledger(None);
    let other = PartitionToken {
        partition: 1,
        token: 3,
    };
    assert_eq!(
        write_in(&mut l, other, "m1", [(0, 5, 70), (1, 6, 130)]).reply,
        Reply::Applied
    );
    assert!(!held(&l, "every transfer applied under its own partition"));
    let unknown = PartitionToken {
        partition: PARTITIONS,
        token: 3,
    };
    assert!(matches!(
        write_in(&mut l, unknown, "m2", [(1, 7, 90), (2, 8, 110)]).reply,
        Reply::Refused {
            code: Refusal::BadRequest,
            ..
        }
    ));
}

#[test]
fn process_once_notes_are_counted() {
    let mut l = ledger(None);
    for note in ["\"already_done\"", "\"busy\"", "\"lost\"", "\"busy\""] {
        l.handle("once", note.as_bytes());
    }
    let c = l.counts();
    assert_eq!((c.once_already_done, c.once_busy, c.once_lost), (1, 2, 1));
    assert_eq!(c.refused, 0);
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes(op in "read|write|[a-z]{0,6}", payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut l = ledger(None);
        let handled = l.handle(&op, &payload);
        let refused = matches!(handled.reply, Reply::Refused { .. });
        prop_assert!(refused);
    }

    #[test]
    fn never_panics_on_wrong_numbers(account in any::<u32>(), token in any::<u64>(), balance in any::<i64>()) {
        let mut l = ledger(None);
        let body = format!(r#"{{"msg_id":"m1","worker":"x","set":[{{"account":{account},"token":{token},"balance":{balance}}},{{"account":1,"token":1,"balance":1}}],"partition":{{"partition":{account},"token":{token}}}}}"#);
        l.handle("write", body.as_bytes());
        let body = format!(r#"{{"msg_id":"m1","worker":"x","tokens":[{{"account":{account},"token":{token}}},{{"account":1,"token":1}}],"lock_wait_us":{token},"handoff":true,"partition":{{"partition":1,"token":{token}}}}}"#);
        l.handle("read", body.as_bytes());
    }
}
