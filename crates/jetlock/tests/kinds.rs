//! Read/write locks and semaphores against a real nats-server, judged by
//! what their holders believed (`jetlock_testkit::history::holders`) and
//! by fencing tokens. The waits that must be FIFO run with a coordinator.

use futures::future::join_all;
use jetlock::{Client, Fence, FencingToken, LockError};
use jetlock_testkit::history::holders::{HoldKind, Holds};
use jetlock_testkit::{client, coordinator, single, PATIENCE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Every key in the locks bucket.
async fn bucket_keys(c: &Client) -> Vec<String> {
    use futures::TryStreamExt;
    let keys = c.store().kv().keys().await.unwrap();
    keys.try_collect().await.unwrap()
}

/// Where each task of a stress test is, for the message of a test that
/// hangs (a hang is a bug to find: this says where to look).
#[derive(Clone)]
struct Steps(Arc<Vec<std::sync::Mutex<(usize, &'static str)>>>);

impl Steps {
    fn new(tasks: usize) -> Steps {
        Steps(Arc::new(
            (0..tasks)
                .map(|_| std::sync::Mutex::new((0, "start")))
                .collect(),
        ))
    }

    fn at(&self, task: usize, round: usize, step: &'static str) {
        *self.0[task].lock().unwrap() = (round, step);
    }

    fn report(&self) -> String {
        let mut out = String::new();
        for (t, s) in self.0.iter().enumerate() {
            let (round, step) = *s.lock().unwrap();
            if step != "done" {
                out.push_str(&format!("task {t} round {round}: {step}; "));
            }
        }
        out
    }
}

/// Waits until somebody holds `name` (a key under a read/write lock or
/// semaphore: the gate a waiter holds).
async fn until_held(c: &Client, name: &str) {
    timeout(PATIENCE, async {
        while c.holder(name).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the key is taken");
}

#[tokio::test]
async fn readers_share_and_a_writer_waits_for_all_of_them() {
    let server = single();
    let (a, b) = (
        client(&server.url(), 1).await,
        client(&server.url(), 1).await,
    );
    let mut readers = Vec::new();
    for c in [&a, &b, &a, &b] {
        // Each holds while the next comes: four readers at once.
        readers.push(c.read_lock("ledger").acquire().await.unwrap());
    }
    assert!(matches!(
        b.write_lock("ledger").try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.write_lock("ledger").acquire().await })
    };
    until_held(&a, "ledger:~rw:write").await;
    // The waiting writer holds the gate: a new reader does not get past it.
    assert!(matches!(
        a.read_lock("ledger").try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    let highest_read = readers.iter().map(|r| r.token()).max().unwrap();
    for r in readers {
        r.release().await.unwrap();
    }
    let w = timeout(PATIENCE, writer).await.unwrap().unwrap().unwrap();
    assert!(w.token() > highest_read, "{} vs {highest_read}", w.token());
    w.release().await.unwrap();
}

#[tokio::test]
async fn a_queued_writer_goes_before_readers_that_came_after_it() {
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let (a, b) = (
        client(&server.url(), 1).await,
        client(&server.url(), 1).await,
    );
    let first = a.read_lock("settlement").acquire().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writer = {
        let (b, tx) = (b.clone(), tx.clone());
        tokio::spawn(async move {
            let w = b.write_lock("settlement").acquire().await.unwrap();
            tx.send(("write", w.token())).unwrap();
            w.release().await.unwrap();
        })
    };
    until_held(&a, "settlement:~rw:write").await;
    let late_reader = {
        let (a, tx) = (a.clone(), tx.clone());
        tokio::spawn(async move {
            let r = a.read_lock("settlement").acquire().await.unwrap();
            tx.send(("read", r.token())).unwrap();
            r.release().await.unwrap();
        })
    };
    first.release().await.unwrap();
    timeout(PATIENCE, async {
        writer.await.unwrap();
        late_reader.await.unwrap();
    })
    .await
    .unwrap();
    let (w, r) = (rx.recv().await.unwrap(), rx.recv().await.unwrap());
    assert_eq!((w.0, r.0), ("write", "read"));
    // Granted after the writer, by a later write to the bucket.
    assert!(r.1 > w.1, "read {} write {}", r.1, w.1);
}

#[tokio::test]
async fn reads_and_writes_reenter_a_read_under_the_write_goes_in_and_upgrades_are_refused() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let r1 = c.read_lock("acct").owner("o").acquire().await.unwrap();
    let r2 = c.read_lock("acct").owner("o").try_acquire().await.unwrap();
    assert_eq!(r1.token(), r2.token());
    assert!(matches!(
        c.write_lock("acct").owner("o").try_acquire().await,
        Err(LockError::Upgrade { .. })
    ));
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let w1 = c.write_lock("acct").owner("o").acquire().await.unwrap();
    let w2 = c.write_lock("acct").owner("o").try_acquire().await.unwrap();
    assert_eq!(w1.token(), w2.token());
    // Another owner's read waits behind the write; the writer's own read
    // (a downgrade) goes in.
    assert!(matches!(
        c.read_lock("acct").owner("other").try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    let down = c.read_lock("acct").owner("o").try_acquire().await.unwrap();
    w1.release().await.unwrap();
    w2.release().await.unwrap();
    // With the write gone, the read stands alone and others read too.
    let other = c
        .read_lock("acct")
        .owner("other")
        .try_acquire()
        .await
        .unwrap();
    down.release().await.unwrap();
    other.release().await.unwrap();
}

/// 32 tasks on 8 clients, nine reads to a write, with a coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_mixing_reads_and_writes_never_overlap_a_write() {
    const ROUNDS: usize = 20;
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let holds = Arc::new(Holds::default());
    let fence = Arc::new(Fence::new());
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client(&server.url(), 1).await);
    }
    let steps = Steps::new(32);
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (c, holds, fence) = (clients[t % 8].clone(), holds.clone(), fence.clone());
        let steps = steps.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                steps.at(t, round, "acquiring");
                if (t + round) % 10 == 0 {
                    let w = c.write_lock("balance").acquire().await.unwrap();
                    steps.at(t, round, "writing");
                    let from = Instant::now();
                    fence
                        .admit("balance", w.token())
                        .expect("writer fenced off");
                    tokio::task::yield_now().await;
                    holds.record(HoldKind::Write, w.token(), from);
                    w.release().await.unwrap();
                } else {
                    let r = c.read_lock("balance").acquire().await.unwrap();
                    steps.at(t, round, "reading");
                    let from = Instant::now();
                    fence
                        .admit_read("balance", r.token())
                        .expect("reader fenced off");
                    tokio::task::yield_now().await;
                    holds.record(HoldKind::Read, r.token(), from);
                    r.release().await.unwrap();
                }
            }
            steps.at(t, ROUNDS, "done");
        }));
    }
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("tasks stuck: {}", steps.report()))
        .into_iter()
        .for_each(|r| r.expect("task"));
    let all = holds.all();
    assert_eq!(all.len(), 32 * ROUNDS);
    assert!(all.iter().any(|h| h.kind == HoldKind::Write));
    let violations = holds.rw_violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn a_reader_that_outlived_its_lease_is_fenced_off_by_the_next_writer() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let fence = Fence::new();
    let stale = c
        .read_lock("books")
        .ttl(Duration::from_secs(1))
        .auto_renew(false)
        .acquire()
        .await
        .unwrap();
    let stale_token = stale.token();
    fence.admit_read("books", stale_token).unwrap();
    // A pause past the lease: no renewal, no release.
    std::mem::forget(stale);
    let other = client(&server.url(), 1).await;
    let w = timeout(PATIENCE, other.write_lock("books").acquire())
        .await
        .unwrap()
        .unwrap();
    assert!(w.token() > stale_token);
    fence.admit("books", w.token()).unwrap();
    assert!(fence.admit_read("books", stale_token).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_never_has_more_holders_than_permits() {
    const PERMITS: u32 = 3;
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let holds = Arc::new(Holds::default());
    let steps = Steps::new(16);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&server.url(), 1).await);
    }
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, holds, steps) = (clients[t % 4].clone(), holds.clone(), steps.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                steps.at(t, round, "acquiring");
                let p = c
                    .semaphore("bank-connector", PERMITS)
                    .acquire()
                    .await
                    .unwrap();
                steps.at(t, round, "holding");
                let from = Instant::now();
                assert!(p.index() < PERMITS);
                tokio::time::sleep(Duration::from_millis(2)).await;
                holds.record(HoldKind::Permit, p.token(), from);
                p.release().await.unwrap();
            }
            steps.at(t, 10, "done");
        }));
    }
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("tasks stuck: {}", steps.report()))
        .into_iter()
        .for_each(|r| r.expect("task"));
    assert_eq!(holds.all().len(), 160);
    let most = holds.most_at_once();
    assert!(most <= PERMITS as usize, "{most} holders at once");
}

#[tokio::test]
async fn a_semaphore_lets_n_in_and_queues_the_rest_in_arrival_order() {
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let (a, b) = (
        client(&server.url(), 1).await,
        client(&server.url(), 1).await,
    );
    let p1 = a.semaphore("pool", 2).acquire().await.unwrap();
    let p2 = b.semaphore("pool", 2).acquire().await.unwrap();
    assert_ne!(p1.index(), p2.index());
    assert!(matches!(
        a.semaphore("pool", 2).try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wait = |c: &Client, who: &'static str| {
        let (c, tx) = (c.clone(), tx.clone());
        tokio::spawn(async move {
            let p = c.semaphore("pool", 2).acquire().await.unwrap();
            tx.send((who, p.token())).unwrap();
            p
        })
    };
    let third = wait(&a, "third");
    until_held(&b, "pool:~sem:queue").await;
    let fourth = wait(&b, "fourth");
    // The fourth queues behind the third for the gate.
    p1.release().await.unwrap();
    let third = timeout(PATIENCE, third).await.unwrap().unwrap();
    assert_eq!(rx.recv().await.unwrap().0, "third");
    p2.release().await.unwrap();
    let fourth = timeout(PATIENCE, fourth).await.unwrap().unwrap();
    assert_eq!(rx.recv().await.unwrap().0, "fourth");
    let tokens: Vec<FencingToken> = vec![third.token(), fourth.token()];
    assert!(tokens[0] < tokens[1]);
    third.release().await.unwrap();
    fourth.release().await.unwrap();
}

#[tokio::test]
async fn shrinking_a_semaphore_revokes_no_held_permit() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.semaphore("calls", 3).acquire().await.unwrap());
    }
    // N goes down to 1: the three permits stay held, nobody new gets in.
    assert!(matches!(
        c.semaphore("calls", 1).try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    assert!(held.iter().all(|p| !p.is_lost()));
    held.sort_by_key(|p| p.index());
    let zero = held.remove(0);
    assert_eq!(zero.index(), 0);
    zero.release().await.unwrap();
    let one = c.semaphore("calls", 1).try_acquire().await.unwrap();
    assert_eq!(one.index(), 0);
    // Permits 1 and 2, above the new N, are not given out again.
    for p in held {
        p.release().await.unwrap();
    }
    assert!(matches!(
        c.semaphore("calls", 1).try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    one.release().await.unwrap();
    assert!(matches!(
        c.semaphore("calls", 0).try_acquire().await,
        Err(LockError::InvalidPermits { .. })
    ));
}

/// The rule both kinds keep, on its own: with the gate held (as by a
/// waiter that queued first) and room free, a newcomer still stays out.
#[tokio::test]
async fn a_newcomer_does_not_pass_whoever_holds_the_gate() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let waiter = client(&server.url(), 1).await;
    let gate = waiter.lock("pool:~sem:queue").acquire().await.unwrap();
    assert!(matches!(
        c.semaphore("pool", 4).try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    gate.release().await.unwrap();
    c.semaphore("pool", 4)
        .try_acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let gate = waiter.lock("books:~rw:write").acquire().await.unwrap();
    assert!(matches!(
        c.read_lock("books").try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    // What the newcomers backed off from is gone: their keys are vacant.
    for key in [
        "pool:~sem:permit:0",
        "pool:~sem:permit:1",
        "pool:~sem:permit:2",
        "pool:~sem:permit:3",
    ] {
        assert!(c.holder(key).await.unwrap().is_none(), "{key}");
    }
    gate.release().await.unwrap();
}

/// Bad input to the new kinds is a typed error before anything is written.
#[tokio::test]
async fn bad_permits_and_names_too_long_for_their_parts_are_refused_and_write_nothing() {
    let server = single();
    let c = client(&server.url(), 1).await;
    for permits in [0, jetlock::client::MAX_PERMITS + 1] {
        assert!(matches!(
            c.semaphore("pool", permits).try_acquire().await,
            Err(LockError::InvalidPermits { .. })
        ));
    }
    // A name that fits a lock but not the keys under it.
    let long = "n".repeat(250);
    assert!(matches!(
        c.read_lock(&long).try_acquire().await,
        Err(LockError::InvalidName(_))
    ));
    assert!(matches!(
        c.semaphore(&long, 2).try_acquire().await,
        Err(LockError::InvalidName(_))
    ));
    assert!(matches!(
        c.write_lock("").try_acquire().await,
        Err(LockError::InvalidName(_))
    ));
    let keys = bucket_keys(&c).await;
    assert!(keys.is_empty(), "{keys:?}");
}

/// Reads by many owners of one session hold one key under the name, so
/// what a writer reads stays one key per reading session.
#[tokio::test]
async fn a_sessions_reads_share_one_key_whatever_their_owners() {
    let server = single();
    let c = client(&server.url(), 1).await;
    for i in 0..20 {
        let r = c
            .read_lock("books")
            .owner(format!("txn-{i}"))
            .acquire()
            .await
            .unwrap();
        r.release().await.unwrap();
    }
    let held: Vec<_> = (0..5)
        .map(|i| c.read_lock("books").owner(format!("batch-{i}")))
        .collect();
    let mut guards = Vec::new();
    for r in held {
        guards.push(r.acquire().await.unwrap());
    }
    let keys = bucket_keys(&c).await;
    let readers: Vec<_> = keys.iter().filter(|k| k.contains("read")).collect();
    assert_eq!(readers.len(), 1, "{readers:?}");
    for g in guards {
        g.release().await.unwrap();
    }
}

/// A writer's own read (a downgrade) goes in while another read of the
/// same session waits behind that writer.
#[tokio::test]
async fn a_downgrade_is_not_held_up_by_a_read_of_its_session_waiting_for_it() {
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let c = client(&server.url(), 1).await;
    let w = c.write_lock("ledger").owner("o").acquire().await.unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.read_lock("ledger").owner("other").acquire().await })
    };
    // The other read has come and gone back to wait for the gate.
    timeout(PATIENCE, async {
        while c.holder("ledger:~rw:write").await.unwrap().is_none() || !waiting_started(&c).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let down = timeout(PATIENCE, c.read_lock("ledger").owner("o").acquire())
        .await
        .expect("the downgrade is not held up")
        .unwrap();
    w.release().await.unwrap();
    let other = timeout(PATIENCE, waiting).await.unwrap().unwrap().unwrap();
    down.release().await.unwrap();
    other.release().await.unwrap();
}

/// Whether a read of `c`'s session has backed off: its key came and went.
async fn waiting_started(c: &Client) -> bool {
    let key = format!("ledger:~rw:read:{}", c.session());
    let name = jetlock::LockName::new(&key).unwrap();
    matches!(
        c.store().read(&name).await.unwrap(),
        jetlock::store::Current::Vacant { revision } if revision > 0
    )
}

/// A read whose release did not land (a server down) leaves its session's
/// reader key held until its lease ends. The session's next read must not
/// take that orphan for a hold of its own: it waits for it to expire, and
/// then holds and releases its own read. (Under one fixed reader owner the
/// coordinator added a hold to the orphan, and the new guard's every write
/// conflicted: its release reported the hold lost and the key stayed held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_not_taken_for_a_hold_its_session_left_behind() {
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let c = client(&server.url(), 1).await;
    let key = jetlock::LockName::new(&format!("books:~rw:read:{}", c.session())).unwrap();
    let first = c.read_lock("books").acquire().await.unwrap();
    let jetlock::store::Current::Held { record, .. } = c.store().read(&key).await.unwrap() else {
        panic!("the first read holds its key");
    };
    first.release().await.unwrap();
    // The release "did not land": the record is back, as this session's
    // earlier read left it, with a 1 s lease.
    let jetlock::store::Current::Vacant { revision } = c.store().read(&key).await.unwrap() else {
        panic!("released");
    };
    write_behind(&c, &key, &record, revision, "orphan").await;
    let second = timeout(PATIENCE, c.read_lock("books").acquire())
        .await
        .expect("the read is granted once the orphan expired")
        .unwrap();
    assert!(!second.is_lost());
    second
        .release()
        .await
        .expect("the read's own release lands");
    assert!(c.holder(key.as_str()).await.unwrap().is_none());
}

/// A further read while the session's reader key is lost to this client
/// (its renewal failed) but still names the session on the server takes
/// the key afresh once that record expired. It is never sent as a new
/// acquire under the lost hold's owner, which the coordinator took for a
/// reentry of the stale record: the new guard wrote against the grant's
/// revision and its release conflicted (or, if the record expired first,
/// the acquire was answered `not_holder`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_further_read_after_its_sessions_read_was_lost_takes_the_key_afresh() {
    let server = single();
    let _coordinator = coordinator(&server.url()).await;
    let c = client(&server.url(), 1).await;
    let key = jetlock::LockName::new(&format!("books:~rw:read:{}", c.session())).unwrap();
    let first = c
        .read_lock("books")
        .ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    // The record changes under the hold, still naming this session and
    // owner: the hold's next renewal conflicts and it is lost, while the
    // server keeps the record for its lease.
    let jetlock::store::Current::Held { revision, record } = c.store().read(&key).await.unwrap()
    else {
        panic!("the first read holds its key");
    };
    write_behind(&c, &key, &record, revision, "under-the-hold").await;
    timeout(PATIENCE, first.lost())
        .await
        .expect("the renewal conflicts");
    let second = timeout(PATIENCE, c.read_lock("books").acquire())
        .await
        .expect("the read is granted once the stale record expired")
        .unwrap();
    assert!(!second.is_lost());
    second
        .release()
        .await
        .expect("the read's own release lands");
    drop(first);
}

/// The checks the rule rests on are confirmed by a write only the stream's
/// current state lets through (`LockStore::confirm`), because a read may
/// come from a deposed leader (`tests/stale_reads.rs`): the gate's
/// revision as read, and the newest revision under the reader keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_passes_only_while_what_was_read_is_still_the_last_word() {
    use jetlock::store::Current;
    use jetlock::LockName;
    let server = single();
    let url = server.url();
    let a = client(&url, 1).await;
    let store = a.store();
    let name = |s: &str| LockName::new(s).unwrap();
    let (gate, readers, mark) = (name("c:~rw:write"), name("c:~rw:read"), name("c:~rw:mark"));
    let ttl = Duration::from_secs(1);
    // Nothing written yet: revision 0 is the last word on both.
    assert!(store.confirm(&mark, &gate, false, 0, ttl).await.unwrap());
    assert!(store.confirm(&mark, &readers, true, 0, ttl).await.unwrap());
    let w = a.write_lock("c").acquire().await.unwrap();
    let revision = match store.read(&gate).await.unwrap() {
        Current::Held { revision, .. } => revision,
        vacant => panic!("the gate is not held: {vacant:?}"),
    };
    assert!(!store.confirm(&mark, &gate, false, 0, ttl).await.unwrap());
    assert!(store
        .confirm(&mark, &gate, false, revision, ttl)
        .await
        .unwrap());
    w.release().await.unwrap();
    assert!(!store
        .confirm(&mark, &gate, false, revision, ttl)
        .await
        .unwrap());
    // A reader's key below the prefix moves the prefix's last word.
    let r = a.read_lock("c").acquire().await.unwrap();
    assert!(!store.confirm(&mark, &readers, true, 0, ttl).await.unwrap());
    let mine = match store
        .read(&name(&format!("c:~rw:read:{}", a.session())))
        .await
        .unwrap()
    {
        Current::Held { revision, .. } => revision,
        vacant => panic!("the reader key is not held: {vacant:?}"),
    };
    assert!(store
        .confirm(&mark, &readers, true, mine, ttl)
        .await
        .unwrap());
    r.release().await.unwrap();
    assert!(!store
        .confirm(&mark, &readers, true, mine, ttl)
        .await
        .unwrap());
}

/// Writes `record` to `key` behind the client's back (as write `id`, over
/// `revision`, with a 1 s lease), as a write the client lost track of.
async fn write_behind(
    c: &jetlock::Client,
    key: &jetlock::LockName,
    record: &jetlock::record::LockRecord,
    revision: u64,
    id: &str,
) {
    let write = jetlock::store::WriteId { id, resend: false };
    c.store()
        .put(key, record, revision, Duration::from_secs(1), write)
        .await
        .unwrap();
}
