//! `lock_all(..).atomic()` against a real nats-server: the whole set in one
//! write or none (`client/atomic.rs`). What the server guarantees for the
//! batch underneath is `atomic_batch.rs`.

use futures::future::join_all;
use jetlock::async_nats::{self, jetstream};
use jetlock::store::Current;
use jetlock::{ClientOptions, Fence, LockError, LockName};
use jetlock_testkit::history::{check, FencedLedger, History};
use jetlock_testkit::{client, single, ExclusionChecker, PATIENCE};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

const LEASE: Duration = Duration::from_secs(10);

/// What the bucket holds for `key` (`Vacant { revision: 0 }`: no message,
/// never written).
async fn read(c: &jetlock::Client, key: &str) -> Current {
    c.store().read(&LockName::new(key).unwrap()).await.unwrap()
}

#[tokio::test]
async fn atomic_lock_all_grants_three_keys_in_one_write() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let keys = ["set:c", "set:a", "set:b"];
    for _ in 0..2 {
        // The second round starts from the release markers (hints).
        let all = c
            .lock_all(keys)
            .atomic()
            .acquire()
            .await
            .expect("atomic grant");
        let tokens: Vec<u64> = all.guards().iter().map(|g| g.token().get()).collect();
        let names: Vec<&str> = all.guards().iter().map(|g| g.name()).collect();
        assert_eq!(names, ["set:a", "set:b", "set:c"], "key order");
        assert_eq!(
            tokens,
            [tokens[0], tokens[0] + 1, tokens[0] + 2],
            "one write"
        );
        for (key, token) in names.iter().zip(&tokens) {
            let holder = c.holder(key).await.unwrap().expect("held");
            assert_eq!(holder.session, c.session());
            assert_eq!(holder.token.get(), *token);
        }
        all.release().await.expect("release");
        for key in keys {
            assert!(c.holder(key).await.unwrap().is_none(), "{key} released");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_lock_all_grants_none_while_one_key_is_held() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let other = client(&server.url(), 1).await;
    let b = other.lock("none:b").acquire().await.unwrap();
    let b_token = b.token();
    let keys = ["none:a", "none:b", "none:c"];
    let err = c
        .lock_all(keys)
        .atomic()
        .wait(Duration::from_millis(300))
        .acquire()
        .await
        .expect_err("one key is held");
    assert!(
        matches!(err, LockError::Timeout { ref name, .. } if name == "none:b"),
        "{err}"
    );
    assert_eq!(read(&c, "none:a").await, Current::Vacant { revision: 0 });
    let held = read(&c, "none:b").await;
    assert!(
        matches!(&held, Current::Held { revision, record }
            if *revision == b_token.get() && record.session == other.session()),
        "{held:?}"
    );
    assert_eq!(read(&c, "none:c").await, Current::Vacant { revision: 0 });

    // A waiting atomic acquire takes all three once b is released.
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.lock_all(keys).atomic().wait(PATIENCE).acquire().await }
    });
    for key in ["none:a", "none:c"] {
        assert!(
            c.holder(key).await.unwrap().is_none(),
            "{key} not taken alone"
        );
    }
    b.release().await.unwrap();
    let all = timeout(PATIENCE, waiting)
        .await
        .expect("granted after the release")
        .unwrap()
        .expect("granted");
    assert_eq!(all.guards().len(), 3);
    assert!(all.token("none:b").unwrap() > b_token);
    all.release().await.unwrap();
}

/// Waits for every task: a deadlock or a starved set fails the test.
async fn all_finish(tasks: Vec<tokio::task::JoinHandle<()>>) {
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .expect("no deadlock or starvation")
        .into_iter()
        .for_each(|r| r.expect("task"));
}

/// The server hangs, so the batch is sent but not answered when the caller
/// gives up. It lands once the server resumes (or the settling re-send
/// does), with nobody holding a guard: only the settling of the dropped
/// batch releases its keys before their 5-minute lease ends. Each key's
/// watch waits for the grant, then for the release.
#[tokio::test]
async fn an_atomic_acquire_dropped_mid_send_leaves_no_key_held() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let keys = ["dropped:a", "dropped:b"];
    // Watching from before, so each sees the grant before its release
    // replaces it.
    let mut watches = Vec::new();
    for key in keys {
        let name = LockName::new(key).unwrap();
        watches.push(c.store().watch_from(&name, 1).await.unwrap());
    }
    server.pause();
    let gave_up = timeout(
        Duration::from_millis(300),
        c.lock_all(keys)
            .atomic()
            .ttl(Duration::from_secs(300))
            .acquire(),
    )
    .await;
    server.resume();
    assert!(
        gave_up.is_err(),
        "the acquire should still have been in flight"
    );
    for (key, mut watch) in keys.into_iter().zip(watches) {
        let mut granted = false;
        while let Some(change) = timeout(PATIENCE, watch.next())
            .await
            .unwrap_or_else(|_| panic!("{key}: granted {granted}, never released"))
        {
            match change.unwrap().1.unwrap() {
                Current::Held { record, .. } => {
                    assert_eq!(record.session, c.session());
                    granted = true;
                }
                Current::Vacant { .. } if granted => break,
                Current::Vacant { .. } => {}
            }
        }
    }
}

/// Many clients atomically lock overlapping sets of five keys: no key is
/// ever held twice (exclusion checker, fences, the history checker), and
/// every grant's tokens are one write's consecutive revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_atomic_sets_never_share_a_key() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 25;
    const KEYS: [&str; 5] = ["ring:0", "ring:1", "ring:2", "ring:3", "ring:4"];
    let server = single();
    let checkers = Arc::new(KEYS.map(|_| ExclusionChecker::default()));
    let fence = Arc::new(Fence::new());
    let (history, ledger) = (History::new(), FencedLedger::new());
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let c = client(&server.url(), 1).await;
        let (checkers, fence) = (checkers.clone(), fence.clone());
        let (history, ledger) = (history.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let session = c.session().to_owned();
            for r in 0..ROUNDS {
                // Two or three keys, overlapping every other client's sets.
                let set: Vec<usize> = [t + r, t + r + 1, t + 3 * r + 3][..2 + (t + r) % 2]
                    .iter()
                    .map(|i| i % KEYS.len())
                    .collect();
                let mut set: Vec<&str> = set.into_iter().map(|i| KEYS[i]).collect();
                set.sort();
                set.dedup();
                let ops: Vec<_> = set
                    .iter()
                    .map(|k| history.acquire_invoked(k, &session))
                    .collect();
                let all = c
                    .lock_all(&set)
                    .atomic()
                    .ttl(LEASE)
                    .acquire()
                    .await
                    .expect("atomic grant");
                let tokens: Vec<u64> = all.guards().iter().map(|g| g.token().get()).collect();
                for (i, token) in tokens.iter().enumerate() {
                    assert_eq!(*token, tokens[0] + i as u64, "one write: {tokens:?}");
                }
                for ((key, op), guard) in set.iter().zip(ops).zip(all.guards()) {
                    let k = KEYS.iter().position(|x| x == key).unwrap();
                    history.granted(op, guard.token());
                    checkers[k].enter(guard.token());
                    fence.admit(key, guard.token()).expect("fenced write");
                    ledger.write(key, &session, guard.token());
                }
                for key in &set {
                    checkers[KEYS.iter().position(|x| x == key).unwrap()].exit();
                }
                let ops: Vec<_> = all
                    .guards()
                    .iter()
                    .map(|g| history.release_invoked(g.name(), &session, g.token()))
                    .collect();
                let released = all.release().await.is_ok();
                for op in ops {
                    history.released(op, released);
                }
            }
        }));
    }
    all_finish(tasks).await;
    let entries: u64 = checkers.iter().map(|c| c.entries()).sum();
    for c in checkers.iter() {
        c.assert_clean();
    }
    assert!(entries >= (CLIENTS * ROUNDS * 2) as u64, "{entries} grants");
    let probe = client(&server.url(), 1).await;
    for key in KEYS {
        let holder = probe.holder(key).await.unwrap();
        history.final_holder(key, holder.map(|h| h.token));
    }
    let report = check(&history, &ledger, LEASE);
    eprintln!("history: {report}");
    report.assert_clean();
}

/// Where a batch could not be atomic, the acquire is refused, typed, and
/// nothing is written: a client that may not write the bucket, and a
/// bucket whose operator turned atomic batches off. jetlock turns them on
/// for a bucket it never did (one made before), and leaves an operator's
/// off alone.
#[tokio::test]
async fn atomic_is_refused_where_it_cannot_be_atomic_and_an_operators_off_stays() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let restricted = ClientOptions::new()
        .fast_path(false)
        .connect(&server.url())
        .await
        .unwrap();
    let err = restricted
        .lock_all(["off:a", "off:b"])
        .atomic()
        .acquire()
        .await
        .expect_err("no fast path");
    assert!(matches!(err, LockError::NotAtomic { .. }), "{err}");

    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream_name = c.store().stream_name().to_owned();
    let config = || {
        let (js, name) = (js.clone(), stream_name.clone());
        async move {
            let mut stream = js.get_stream(&name).await.unwrap();
            stream.info().await.unwrap().config.clone()
        }
    };
    let set = |config: jetstream::stream::Config| {
        let js = js.clone();
        async move { js.update_stream(config).await.unwrap() }
    };
    let made = config().await;
    assert!(
        made.allow_atomic_publish,
        "a new bucket takes atomic batches"
    );

    // A bucket made before atomic batches: off, and never set by jetlock.
    let mut old = made.clone();
    old.allow_atomic_publish = false;
    old.metadata.remove(jetlock::bucket::ATOMIC_SET_KEY);
    set(old).await;
    let _upgrading = client(&server.url(), 1).await;
    assert!(
        config().await.allow_atomic_publish,
        "turned on for an old bucket"
    );

    // The operator turns it off: it stays off, and atomic acquires refuse.
    let mut off = config().await;
    off.allow_atomic_publish = false;
    set(off).await;
    let fresh = client(&server.url(), 1).await;
    assert!(
        !config().await.allow_atomic_publish,
        "the operator's off stays"
    );
    let err = fresh
        .lock_all(["off:a", "off:b"])
        .atomic()
        .acquire()
        .await
        .expect_err("the bucket takes no atomic batch");
    assert!(matches!(err, LockError::NotAtomic { .. }), "{err}");
    for key in ["off:a", "off:b"] {
        assert!(fresh.holder(key).await.unwrap().is_none());
    }
    // The ordered acquisition still works.
    fresh
        .lock_all(["off:a", "off:b"])
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// On a 3-node cluster (R3 bucket: the batch is one multi-entry Raft
/// proposal), a batch over a held key writes none of the free ones, and
/// workers' overlapping atomic sets never share a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_atomic_sets_are_all_or_none_and_never_share_a_key() {
    use jetlock_testkit::{cluster, setup_bucket, worker_client, Role};
    const KEYS: [&str; 3] = ["r3:a", "r3:b", "r3:c"];
    let cluster = cluster().await;
    setup_bucket(&cluster).await;
    let url = cluster.url_as(Role::Worker);
    let holder = worker_client(&url, "holder").await;
    let b = holder.lock("r3:b").acquire().await.unwrap();
    let c = worker_client(&url, "atomic").await;
    let err = c
        .lock_all(KEYS)
        .atomic()
        .wait(Duration::from_millis(300))
        .acquire()
        .await
        .expect_err("r3:b is held");
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    for key in ["r3:a", "r3:c"] {
        assert!(
            c.holder(key).await.unwrap().is_none(),
            "{key} written alone"
        );
    }
    b.release().await.unwrap();

    let checkers = Arc::new(KEYS.map(|_| ExclusionChecker::default()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = worker_client(&url, &format!("worker-{t}")).await;
        let checkers = checkers.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..15 {
                // Pairs and the whole ring, overlapping each other.
                let set: Vec<usize> = match (t + r) % 4 {
                    3 => vec![0, 1, 2],
                    k => vec![k, (k + 1) % 3],
                };
                let names: Vec<&str> = set.iter().map(|&k| KEYS[k]).collect();
                let all = c.lock_all(&names).atomic().acquire().await.expect("grant");
                for guard in all.guards() {
                    let k = KEYS.iter().position(|x| *x == guard.name()).unwrap();
                    checkers[k].enter(guard.token());
                }
                for guard in all.guards() {
                    let k = KEYS.iter().position(|x| *x == guard.name()).unwrap();
                    checkers[k].exit();
                }
                all.release().await.expect("release");
            }
        }));
    }
    all_finish(tasks).await;
    for c in checkers.iter() {
        c.assert_clean();
    }
}
