//! Atomic multi-key acquisition against a real nats-server: first what the
//! server guarantees for an atomic batch of CAS writes (`store/batch.rs`),
//! then `lock_all(..).atomic()` on top of it.

use futures::future::join_all;
use jetlock::async_nats::{self, jetstream};
use jetlock::record::LockRecord;
use jetlock::store::{BatchError, BatchPut, Current, LockStore, WriteId};
use jetlock::{ClientOptions, Fence, LockError, LockName};
use jetlock_testkit::history::{check, FencedLedger, History};
use jetlock_testkit::{client, single, ExclusionChecker, PATIENCE};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

const LEASE: Duration = Duration::from_secs(10);

fn names(keys: &[&str]) -> Vec<LockName> {
    keys.iter().map(|k| LockName::new(k).unwrap()).collect()
}

fn record(session: &str) -> LockRecord {
    LockRecord {
        owner: "test".into(),
        session: session.into(),
        acquired_ms: 0,
        lease_ms: LEASE.as_millis() as u64,
        holds: 1,
        token: 0,
    }
}

fn write(id: &str) -> WriteId<'_> {
    WriteId { id, resend: false }
}

async fn read_all(store: &LockStore, names: &[LockName]) -> Vec<Current> {
    join_all(names.iter().map(|n| store.read(n)))
        .await
        .into_iter()
        .map(|r| r.expect("read"))
        .collect()
}

/// The server checks `Nats-Expected-Last-Subject-Sequence` on every
/// message of a batch, and one failed check stores none of them: whichever
/// position the held key has, the free keys stay without a message.
#[tokio::test]
async fn one_failed_subject_check_rejects_the_whole_batch() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let other = record("other-session");
    let mine = record(c.session());
    for held in 0..3 {
        let keys = names(&[
            &format!("fact{held}:a"),
            &format!("fact{held}:b"),
            &format!("fact{held}:c"),
        ]);
        let taken = store
            .put(&keys[held], &other, 0, LEASE, write("other"))
            .await
            .expect("the other holder's write");
        let puts: Vec<_> = keys
            .iter()
            .map(|name| BatchPut {
                name,
                record: &mine,
                expected: 0,
            })
            .collect();
        let result = store.put_all(&puts, LEASE, write("mine")).await;
        assert!(matches!(result, Err(BatchError::Conflict)), "{result:?}");
        for (i, current) in read_all(store, &keys).await.into_iter().enumerate() {
            if i == held {
                assert_eq!(
                    current,
                    Current::Held {
                        revision: taken.revision,
                        record: other.clone()
                    }
                );
            } else {
                assert_eq!(current, Current::Vacant { revision: 0 }, "key {i}");
            }
        }
    }
}

/// A batch that passes is stored with consecutive revisions, and each
/// message's `Nats-TTL` expires its key on the server.
#[tokio::test]
async fn a_batch_lands_in_consecutive_revisions_and_each_key_expires_by_its_ttl() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let keys = names(&["ttl:a", "ttl:b", "ttl:c"]);
    let mine = record(c.session());
    let puts: Vec<_> = keys
        .iter()
        .map(|name| BatchPut {
            name,
            record: &mine,
            expected: 0,
        })
        .collect();
    let written = store
        .put_all(&puts, Duration::from_secs(1), write("short"))
        .await
        .expect("the batch lands");
    let revisions: Vec<u64> = written.iter().map(|w| w.revision).collect();
    assert_eq!(revisions[1], revisions[0] + 1);
    assert_eq!(revisions[2], revisions[0] + 2);
    for (current, revision) in read_all(store, &keys).await.into_iter().zip(&revisions) {
        assert_eq!(
            current,
            Current::Held {
                revision: *revision,
                record: mine.clone()
            }
        );
    }
    for (name, revision) in keys.iter().zip(&revisions) {
        let mut watch = store.watch_from(name, revision + 1).await.unwrap();
        let (_, expired) = timeout(PATIENCE, watch.next())
            .await
            .expect("the key expires")
            .expect("watching")
            .expect("a change");
        assert!(
            matches!(expired, Ok(Current::Vacant { .. })),
            "{name}: {expired:?}"
        );
    }
}

/// A batch sent with raw headers, the last message committing it: the
/// commit's ack or the server's refusal of the whole batch.
async fn raw_batch(
    js: &jetstream::Context,
    messages: Vec<(&str, async_nats::HeaderMap)>,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let id = nuid::next().to_string();
    let last = messages.len() - 1;
    for (i, (subject, mut headers)) in messages.into_iter().enumerate() {
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i < last {
            js.client()
                .publish_with_headers(subject.to_owned(), headers, "x".into())
                .await
                .unwrap();
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            return js
                .publish_with_headers(subject.to_owned(), headers, "x".into())
                .await
                .unwrap()
                .await;
        }
    }
    unreachable!("the last message returns")
}

fn error_code(e: &jetstream::context::PublishError) -> Option<u64> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|api| api.error_code().0)
}

/// `Nats-Msg-Id` is allowed in a batch (nats-server 2.14+), and a duplicate
/// rejects the whole batch; `Nats-Expected-Last-Msg-Id` is refused.
#[tokio::test]
async fn msg_ids_in_a_batch_dedup_it_whole_and_expected_msg_ids_are_refused() {
    let server = single();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "FACTS".into(),
            subjects: vec!["facts.>".into()],
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let with = |pairs: &[(&str, &str)]| {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    };
    let ack = raw_batch(
        &js,
        vec![
            ("facts.a", with(&[("Nats-Msg-Id", "m1")])),
            ("facts.b", with(&[])),
        ],
    )
    .await
    .expect("a batch with a message id lands");
    assert_eq!(ack.batch_size, Some(2));
    let duplicate = raw_batch(
        &js,
        vec![
            ("facts.c", with(&[])),
            ("facts.d", with(&[("Nats-Msg-Id", "m1")])),
        ],
    )
    .await
    .expect_err("a duplicate message id rejects the batch");
    assert_eq!(error_code(&duplicate), Some(10201), "{duplicate}");
    let refused = raw_batch(
        &js,
        vec![
            ("facts.e", with(&[])),
            ("facts.f", with(&[("Nats-Expected-Last-Msg-Id", "m1")])),
        ],
    )
    .await
    .expect_err("an expected message id is refused");
    assert_eq!(error_code(&refused), Some(10177), "{refused}");
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2,
        "only the first batch"
    );
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
    let store = c.store();
    let read = read_all(store, &names(&keys)).await;
    assert_eq!(read[0], Current::Vacant { revision: 0 });
    assert!(
        matches!(&read[1], Current::Held { revision, record }
            if *revision == b_token.get() && record.session == other.session()),
        "{:?}",
        read[1]
    );
    assert_eq!(read[2], Current::Vacant { revision: 0 });

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
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .expect("no deadlock or starvation")
        .into_iter()
        .for_each(|r| r.expect("task"));
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
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .expect("no deadlock or starvation")
        .into_iter()
        .for_each(|r| r.expect("task"));
    for c in checkers.iter() {
        c.assert_clean();
    }
}
