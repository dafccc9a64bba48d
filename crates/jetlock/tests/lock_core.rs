//! The KV lock core against a real single-node nats-server.

#[path = "lock_core/buckets.rs"]
mod buckets;

use futures::future::join_all;
use jetlock::bucket::{open_bucket, BucketError};
use jetlock::{ClientOptions, ConnectError, Fence, LockError, LostReason, NameError};
use jetlock_testkit::{client, single, ExclusionChecker, PATIENCE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_never_overlap_and_tokens_strictly_increase() {
    const TASKS: usize = 32;
    const ROUNDS: usize = 200;
    let server = single();
    let checker = Arc::new(ExclusionChecker::default());
    let fence = Arc::new(Fence::new());
    let counter = Arc::new(AtomicU64::new(0));
    let first = client(&server.url(), 1).await;
    // Half the tasks share one connection, half have their own.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let c = if t % 2 == 0 {
            first.clone()
        } else {
            client(&server.url(), 1).await
        };
        let (checker, fence, counter) = (checker.clone(), fence.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = c.lock("account:42").acquire().await.expect("acquire");
                checker.enter(guard.token());
                // The fenced counter: a write only lands with a current token.
                fence
                    .admit_with("account:42", guard.token(), || {
                        counter.fetch_add(1, Ordering::SeqCst)
                    })
                    .expect("fenced write refused");
                checker.exit();
                guard.release().await.expect("release");
            }
        }));
    }
    timeout(Duration::from_secs(600), join_all(tasks))
        .await
        .expect("all tasks finish")
        .into_iter()
        .for_each(|r| r.expect("task"));
    checker.assert_clean();
    assert_eq!(checker.entries(), (TASKS * ROUNDS) as u64);
    assert_eq!(counter.load(Ordering::SeqCst), (TASKS * ROUNDS) as u64);
}

#[tokio::test]
async fn a_crashed_holder_expires_on_a_fresh_and_on_a_reused_name() {
    let server = single();
    let c = client(&server.url(), 1).await;
    // Reuse: take and release once so the key holds a release marker; the
    // async-nats `create_with_ttl` trap drops the TTL in exactly this case.
    c.lock("ttl:reused")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    for name in ["ttl:fresh", "ttl:reused"] {
        let crashed = c
            .lock(name)
            .ttl(Duration::from_secs(1))
            .auto_renew(false)
            .acquire()
            .await
            .unwrap();
        let stale = crashed.token();
        // A crash: no renewal, no release, nothing left in this process.
        std::mem::forget(crashed);
        let other = client(&server.url(), 1).await;
        let waiter = other
            .lock(name)
            .wait(Duration::from_secs(20))
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("{name}: waiter never woke on expiry: {e}"));
        assert!(waiter.token() > stale, "{name}: token did not increase");
        waiter.release().await.unwrap();
    }
}

#[tokio::test]
async fn renewal_keeps_a_lock_past_several_leases() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let held = c
        .lock("renew:me")
        .ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    let other = client(&server.url(), 1).await;
    // Waiting 4 leases must time out: the watchdog kept the lock.
    let err = other
        .lock("renew:me")
        .wait(Duration::from_secs(4))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    assert!(!held.is_lost());
    let holder = other.holder("renew:me").await.unwrap().expect("still held");
    assert_eq!(holder.token, held.token());
    held.release().await.unwrap();
    assert!(other.holder("renew:me").await.unwrap().is_none());
}

#[tokio::test]
async fn a_renewal_that_finds_the_lock_taken_fires_lost() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let guard = c
        .lock("steal:me")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    // An operator overwrites the record behind the holder's back.
    let js = async_nats::jetstream::new(c.nats().clone());
    let kv = open_bucket(&js, "JETLOCK_LOCKS").await.unwrap();
    kv.purge("steal.me").await.unwrap();
    timeout(PATIENCE, guard.lost()).await.expect("lost() fired");
    assert_eq!(guard.lost_reason(), Some(LostReason::Taken));
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err}");
}

#[tokio::test]
async fn a_hung_server_makes_the_holder_lose_its_lease_before_it_ends() {
    let server = single();
    // A session timeout longer than the lease: the heartbeats that go
    // unanswered while the server hangs would give the hold up at 0.9 of
    // the timeout (`Unconfirmed`); this test is about the lease.
    let c = jetlock::ClientOptions::new()
        .session_timeout(Duration::from_secs(30))
        .create_bucket(1)
        .connect(&server.url())
        .await
        .unwrap();
    let guard = c
        .lock("hang:me")
        .ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    server.pause();
    let fired = timeout(PATIENCE, guard.lost()).await;
    server.resume();
    fired.expect("lost() fired while the server hung");
    assert_eq!(guard.lost_reason(), Some(LostReason::Expired));
}

#[tokio::test]
async fn reentrant_holds_are_counted() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let other = client(&server.url(), 1).await;
    let g1 = c.lock("re:1").owner("txn-7").acquire().await.unwrap();
    let g2 = c.lock("re:1").owner("txn-7").acquire().await.unwrap();
    let first_grant = g1.token();
    assert_eq!(
        first_grant,
        g2.token(),
        "a reentrant hold is the same grant"
    );
    assert_eq!(other.holder("re:1").await.unwrap().unwrap().holds, 2);
    // The same owner id from another session is somebody else.
    let err = other
        .lock("re:1")
        .owner("txn-7")
        .try_acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Busy { .. }), "{err}");
    g1.release().await.unwrap();
    let holder = other
        .holder("re:1")
        .await
        .unwrap()
        .expect("still held once");
    assert_eq!(holder.holds, 1);
    assert_eq!(holder.owner, "txn-7");
    g2.release().await.unwrap();
    assert!(other.holder("re:1").await.unwrap().is_none());
    // A fresh acquisition after full release is a new grant.
    let g3 = c.lock("re:1").owner("txn-7").acquire().await.unwrap();
    assert!(g3.token() > first_grant);
    g3.release().await.unwrap();
}

#[tokio::test]
async fn try_lock_timeout_and_cancel() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let other = client(&server.url(), 1).await;
    let held = c.lock("busy:1").acquire().await.unwrap();

    match other.lock("busy:1").try_acquire().await {
        Err(LockError::Busy {
            holder: Some(h), ..
        }) => {
            assert_eq!(h.token, held.token());
            assert_eq!(h.session, c.session());
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let err = other
        .lock("busy:1")
        .wait(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");

    // Cancel: drop a waiting acquisition; it must not take the lock later.
    let waiting = other.lock("busy:1").acquire();
    assert!(timeout(Duration::from_millis(300), waiting).await.is_err());
    let released_token = held.token();
    held.release().await.unwrap();
    let next = c
        .lock("busy:1")
        .try_acquire()
        .await
        .expect("free after release: the cancelled waiter did not take it");
    assert!(next.token() > released_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_locks_in_both_orders_never_deadlock() {
    let server = single();
    let checkers = Arc::new([ExclusionChecker::default(), ExclusionChecker::default()]);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = client(&server.url(), 1).await;
        let checkers = checkers.clone();
        tasks.push(tokio::spawn(async move {
            let names = if t % 2 == 0 {
                ["acct:a", "acct:b"]
            } else {
                ["acct:b", "acct:a"]
            };
            for _ in 0..40 {
                let both = c.lock_all(names).acquire().await.expect("lock both");
                let (ta, tb) = (both.token("acct:a").unwrap(), both.token("acct:b").unwrap());
                checkers[0].enter(ta);
                checkers[1].enter(tb);
                checkers[0].exit();
                checkers[1].exit();
                both.release().await.expect("release both");
            }
        }));
    }
    timeout(Duration::from_secs(300), join_all(tasks))
        .await
        .expect("no deadlock")
        .into_iter()
        .for_each(|r| r.expect("task"));
    for c in checkers.iter() {
        c.assert_clean();
        assert_eq!(c.entries(), 8 * 40);
    }
}

#[tokio::test]
async fn bad_names_and_corrupt_records_are_typed_errors() {
    let server = single();
    let c = client(&server.url(), 1).await;
    for bad in ["", "line\nbreak", "nul\0"] {
        let err = c.lock(bad).try_acquire().await.unwrap_err();
        assert!(matches!(err, LockError::InvalidName(_)), "{bad:?}: {err}");
    }
    let err = c.lock(&"x".repeat(300)).acquire().await.unwrap_err();
    assert!(matches!(
        err,
        LockError::InvalidName(NameError::TooLong { .. })
    ));
    // Wildcards and dots are escaped, not injected: `a.*` and `a.>` are
    // two distinct locks that do not cover `a.b`.
    let g1 = c.lock("a.*").try_acquire().await.unwrap();
    let g2 = c.lock("a.>").try_acquire().await.unwrap();
    let g3 = c.lock("a.b").try_acquire().await.unwrap();
    for g in [g1, g2, g3] {
        g.release().await.unwrap();
    }
    let err = c
        .lock("x")
        .ttl(Duration::from_millis(10))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidTtl { .. }));
    // A value jetlock did not write, under a lock's key.
    let js = async_nats::jetstream::new(c.nats().clone());
    let kv = open_bucket(&js, "JETLOCK_LOCKS").await.unwrap();
    kv.put("corrupt", "{not a record".into()).await.unwrap();
    let err = c.lock("corrupt").try_acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Corrupt { .. }), "{err}");
    assert!(matches!(
        c.holder("corrupt").await.unwrap_err(),
        LockError::Corrupt { .. }
    ));
}

#[tokio::test]
async fn unsafe_or_missing_buckets_are_refused() {
    let server = single();
    let err = ClientOptions::new()
        .bucket("MISSING")
        .connect(&server.url())
        .await
        .err()
        .expect("missing bucket refused");
    assert!(
        matches!(err, ConnectError::Bucket(BucketError::NotFound { .. })),
        "{err}"
    );
    // A plain KV bucket: no per-message TTL, no limit markers.
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "PLAIN".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = ClientOptions::new()
        .bucket("PLAIN")
        .create_bucket(1)
        .connect(&server.url())
        .await
        .err()
        .expect("unsafe bucket refused");
    match err {
        ConnectError::Bucket(BucketError::Incompatible { problem, .. }) => {
            assert!(problem.contains("TTL"), "{problem}")
        }
        other => panic!("expected Incompatible, got {other}"),
    }
}

/// A bucket of another key layout is refused at connect, by the client and
/// by a coordinator: they would take its locks under other keys than the
/// processes that speak its layout.
#[tokio::test]
async fn a_bucket_of_another_key_layout_is_refused() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let stream = format!("KV_{}", c.store().bucket());
    let mut config = js
        .get_stream(&stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(
        config
            .metadata
            .get(jetlock::bucket::LAYOUT_KEY)
            .map(String::as_str),
        Some(jetlock::bucket::LAYOUT_PARTITIONED),
        "a new bucket names its layout"
    );
    config
        .metadata
        .insert(jetlock::bucket::LAYOUT_KEY.to_owned(), "4".to_owned());
    js.update_stream(&config).await.unwrap();
    let err = ClientOptions::new()
        .bucket(c.store().bucket())
        .connect(&server.url())
        .await
        .err()
        .expect("a bucket of layout 4 refused");
    match err {
        ConnectError::Bucket(BucketError::Layout { layout, .. }) => assert_eq!(layout, "4"),
        other => panic!("expected Layout, got {other}"),
    }
    let err = jetlock_coordinator::Coordinator::start(
        nats,
        jetlock_coordinator::CoordinatorConfig {
            bucket: c.store().bucket().to_owned(),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("a coordinator refuses it too");
    assert!(err.to_string().contains("key layout \"4\""), "{err}");
}

#[tokio::test]
async fn tokens_keep_increasing_across_a_server_restart() {
    let mut server = single();
    let c = client(&server.url(), 1).await;
    let before = c.lock("restart:1").acquire().await.unwrap();
    let t1 = before.token();
    before.release().await.unwrap();
    server.kill();
    server.restart().unwrap();
    let c = client(&server.url(), 1).await;
    let after = c.lock("restart:1").acquire().await.unwrap();
    assert!(after.token() > t1, "{} <= {}", after.token(), t1);
    after.release().await.unwrap();
}

#[tokio::test]
async fn dropping_a_guard_releases_the_lock() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let other = client(&server.url(), 1).await;
    // A 30 s lease: only a release, not an expiry, frees it within the wait.
    let guard = c
        .lock("drop:me")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let token = guard.token();
    drop(guard);
    let next = other
        .lock("drop:me")
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .expect("released on drop");
    assert!(next.token() > token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_mid_send_never_leaves_the_lock_held() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let other = client(&server.url(), 1).await;
    // The server hangs, so the grant's CAS is sent but not answered when the
    // caller gives up. When the server resumes, the write lands: the grant
    // exists, but nobody holds a guard for it.
    server.pause();
    let gave_up = timeout(
        Duration::from_millis(300),
        c.lock("cancel:mid-send")
            .ttl(Duration::from_secs(30))
            .try_acquire(),
    )
    .await;
    server.resume();
    assert!(
        gave_up.is_err(),
        "the acquire should still have been in flight: {:?}",
        gave_up.map(|r| r.map(|g| g.token()))
    );
    // Only the settling of the dropped CAS (a release) can free it within
    // the wait: the lease is 30 s.
    let next = other
        .lock("cancel:mid-send")
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .expect("the dropped acquisition's grant was released");
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_resent_write_that_landed_is_recognised_not_mistaken_for_a_conflict() {
    use jetlock::record::LockRecord;
    use jetlock::store::{CasError, WriteId};
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let name = jetlock::LockName::new("resend:1").unwrap();
    let record = LockRecord {
        owner: "o".into(),
        session: c.session().into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds: 1,
        token: 0,
    };
    let ttl = Duration::from_secs(10);
    let first = WriteId {
        id: "w-1",
        resend: false,
    };
    let landed = store.put(&name, &record, 0, ttl, first).await.unwrap();
    assert!(!landed.recovered);
    // The ack was "lost": the same write again. nats-server checks the
    // expected sequence before de-duplication, so only the write id tells.
    let again = WriteId {
        id: "w-1",
        resend: true,
    };
    let recovered = store.put(&name, &record, 0, ttl, again).await.unwrap();
    assert!(recovered.recovered);
    assert_eq!(recovered.revision, landed.revision);
    // A first send, or somebody else's write id, is a real conflict.
    assert!(matches!(
        store.put(&name, &record, 0, ttl, first).await,
        Err(CasError::Conflict { .. })
    ));
    let other = WriteId {
        id: "w-2",
        resend: true,
    };
    assert!(matches!(
        store.put(&name, &record, 0, ttl, other).await,
        Err(CasError::Conflict { .. })
    ));
}

/// A bucket made before jetlock named its consumer limit gets it from the
/// next `ensure` (setup, a coordinator or client that creates buckets);
/// one an operator set is kept.
#[tokio::test]
async fn a_bucket_without_a_consumer_limit_gets_jetlocks_and_an_operators_stays() {
    let server = jetlock_testkit::single();
    let _first = jetlock_testkit::client(&server.url(), 1).await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let name = format!("KV_{}", jetlock::bucket::DEFAULT_BUCKET);
    let set = |limit: i32| {
        let js = js.clone();
        let name = name.clone();
        async move {
            let mut stream = js.get_stream(&name).await.unwrap();
            let config = stream.info().await.unwrap().config.clone();
            js.update_stream(async_nats::jetstream::stream::Config {
                max_consumers: limit,
                ..config
            })
            .await
            .unwrap();
        }
    };
    let limit = || {
        let js = js.clone();
        let name = name.clone();
        async move {
            let mut stream = js.get_stream(&name).await.unwrap();
            stream.info().await.unwrap().config.max_consumers
        }
    };
    assert_eq!(limit().await, jetlock::bucket::MAX_CONSUMERS);
    set(-1).await;
    assert_eq!(limit().await, -1, "the server took the old shape");
    let _next = jetlock_testkit::client(&server.url(), 1).await;
    assert_eq!(limit().await, jetlock::bucket::MAX_CONSUMERS);
    set(50_000).await;
    let _again = jetlock_testkit::client(&server.url(), 1).await;
    assert_eq!(limit().await, 50_000, "an operator's limit stays");
}

/// An acquire that was asked to wait never answers `Busy`, also when its
/// wait is over before its request reaches the coordinator (0 ms left, as
/// for a read/write lock's or semaphore's gate after its first steps used
/// the wait up): it times out, as `wait` promises.
#[tokio::test]
async fn a_wait_that_ran_out_before_the_request_went_out_is_a_timeout() {
    let server = single();
    let _coordinator = jetlock_testkit::coordinator(&server.url()).await;
    let holder = client(&server.url(), 1).await;
    let _held = holder.lock("acct:9").acquire().await.unwrap();
    for fast_path in [true, false] {
        let waiter = ClientOptions::new()
            .fast_path(fast_path)
            .connect(&server.url())
            .await
            .unwrap();
        let e = waiter
            .lock("acct:9")
            .wait(Duration::ZERO)
            .acquire()
            .await
            .unwrap_err();
        assert!(
            matches!(e, LockError::Timeout { .. }),
            "fast path {fast_path}: {e:?}"
        );
    }
}

/// A client whose user may not delete consumers (the shipped worker role)
/// still leaves none behind: a writer's drain and an exclusive wait each
/// watch through a consumer the server removes `WATCH_IDLE` after nobody
/// listens, not after async-nats' 30 s.
#[tokio::test]
async fn waits_of_a_user_that_may_not_delete_consumers_leave_none_behind() {
    let server = jetlock_testkit::NatsServer::start_denying("waiter", "$JS.API.CONSUMER.DELETE.>")
        .expect("start nats-server");
    let login = |user: &'static str| {
        let server = &server;
        async move {
            jetlock::ClientOptions::new()
                .create_bucket(1)
                .with_nats(server.login(user).await)
                .await
                .expect("connect jetlock client")
        }
    };
    let admin = login("admin").await;
    let waiter = login("waiter").await;
    let _reading = admin.read_lock("ledger").acquire().await.unwrap();
    let _holding = admin.lock("account").acquire().await.unwrap();
    let js = async_nats::jetstream::new(admin.nats().clone());
    let mut stream = js
        .get_stream(format!("KV_{}", jetlock::bucket::DEFAULT_BUCKET))
        .await
        .unwrap();

    // While a wait watches, its consumer carries the short threshold.
    let drain = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .write_lock("ledger")
                .wait(Duration::from_secs(3))
                .acquire()
                .await
        })
    };
    let thresholds = timeout(PATIENCE, async {
        loop {
            let mut consumers = stream.consumers();
            let mut seen = Vec::new();
            while let Some(info) = futures::StreamExt::next(&mut consumers).await {
                seen.push(info.unwrap().config.inactive_threshold);
            }
            if !seen.is_empty() {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the drain watches");
    assert!(
        thresholds.iter().all(|t| *t == jetlock::store::WATCH_IDLE),
        "{thresholds:?}"
    );
    assert!(matches!(
        drain.await.unwrap(),
        Err(LockError::Timeout { .. })
    ));

    for _ in 0..10 {
        for wait in [
            waiter
                .write_lock("ledger")
                .wait(Duration::from_millis(50))
                .acquire()
                .await
                .map(drop),
            waiter
                .lock("account")
                .wait(Duration::from_millis(50))
                .acquire()
                .await
                .map(drop),
        ] {
            assert!(matches!(wait, Err(LockError::Timeout { .. })), "{wait:?}");
        }
    }
    // Every delete was refused; the server removes the consumers itself,
    // well before the 30 s an ordered consumer of async-nats lingers.
    let left = timeout(Duration::from_secs(15), async {
        loop {
            let n = stream.info().await.unwrap().state.consumer_count;
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        left.is_ok(),
        "{} consumers still on the bucket's stream",
        stream.info().await.unwrap().state.consumer_count
    );
}
