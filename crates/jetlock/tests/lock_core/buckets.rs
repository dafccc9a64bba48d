//! Locks spread over several buckets (`jetlock::shards`) against a real
//! nats-server: each key in the bucket its name routes to, coordinators
//! that queue and hand over in every bucket (across a restart), lock kinds
//! whose parts stay in their lock's bucket, atomic sets that must share
//! one, and a deployment whose buckets are not all there refused.

use futures::TryStreamExt;
use jetlock::bucket::{ensure_bucket, BucketError, BucketSpec, DEFAULT_BUCKET};
use jetlock::name::LockName;
use jetlock::shards::{bucket_name, bucket_of};
use jetlock::{Client, ClientOptions, ConnectError, LockError};
use jetlock_testkit::history::holders::{HoldKind, Holds};
use jetlock_testkit::{client, coordinator, name_in_bucket, single, until, PATIENCE};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::time::timeout;

const BUCKETS: u32 = 3;

/// Makes the deployment: locks over [`BUCKETS`] buckets.
async fn three_buckets(url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut spec = BucketSpec::new(DEFAULT_BUCKET, 1);
    spec.buckets = BUCKETS;
    ensure_bucket(&js, &spec).await.unwrap();
}

/// The first `<prefix>:<i>` in bucket `bucket`.
fn name_in(bucket: u32, prefix: &str) -> String {
    name_in_bucket(bucket, BUCKETS, prefix)
}

/// Every key of every bucket, by bucket index.
async fn keys_by_bucket(c: &Client) -> BTreeMap<u32, Vec<String>> {
    let mut out = BTreeMap::new();
    for (index, kv) in c.store().kvs().enumerate() {
        let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
        out.insert(index as u32, keys);
    }
    out
}

#[tokio::test]
async fn each_lock_is_in_the_bucket_its_name_routes_to() {
    let server = single();
    three_buckets(&server.url()).await;
    let c = client(&server.url(), 1).await;
    assert_eq!(c.store().bucket_count(), BUCKETS);
    let mut guards = Vec::new();
    for i in 0..30 {
        guards.push(c.lock(&format!("account:{i}")).acquire().await.unwrap());
    }
    let keys = keys_by_bucket(&c).await;
    for (bucket, keys) in &keys {
        assert!(!keys.is_empty(), "bucket {bucket} holds no lock: {keys:?}");
        for key in keys {
            assert_eq!(bucket_of(key, BUCKETS), *bucket, "{key}");
        }
    }
    assert_eq!(keys.values().map(Vec::len).sum::<usize>(), 30);
    for g in guards {
        g.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_coordinator_hands_locks_on_in_every_bucket_and_after_a_restart() {
    let server = single();
    three_buckets(&server.url()).await;
    let first = coordinator(&server.url()).await;
    let holder = client(&server.url(), 1).await;
    let waiter = client(&server.url(), 1).await;
    let mut held = Vec::new();
    for bucket in 0..BUCKETS {
        let name = name_in(bucket, "handoff");
        let guard = holder.lock(&name).acquire().await.unwrap();
        let wait = {
            let (waiter, name) = (waiter.clone(), name.clone());
            tokio::spawn(async move { waiter.lock(&name).acquire().await })
        };
        // The coordinator queued the waiter behind a holder it saw in
        // this bucket, and told the holder.
        until(&format!("{name} is contended"), || guard.contended()).await;
        held.push((guard, wait));
    }
    // Locks taken on the fast path alone, never contended: the coordinator
    // knows of them only from watching their buckets.
    let mut quiet = Vec::new();
    for bucket in 0..BUCKETS {
        let name = name_in(bucket, "quiet");
        quiet.push((holder.lock(&name).acquire().await.unwrap(), name));
    }
    let nats = async_nats::connect(server.url()).await.unwrap();
    timeout(PATIENCE, async {
        loop {
            let answer = nats
                .request(jetlock_coordinator::admin::LOCKS, "".into())
                .await
                .unwrap();
            let view: jetlock_coordinator::admin::LocksView =
                serde_json::from_slice(&answer.payload).unwrap();
            let seen = |name: &str| {
                view.locks
                    .iter()
                    .any(|l| l.name == name && l.holder.is_some())
            };
            if quiet.iter().all(|(_, name)| seen(name)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the coordinator sees the holders of every bucket");
    // A coordinator that starts now reads the holders and the queues of
    // every bucket again before it serves.
    first.shutdown().await;
    let _second = coordinator(&server.url()).await;
    for (guard, wait) in held {
        let token = guard.token();
        guard.release().await.unwrap();
        let granted = timeout(PATIENCE, wait).await.unwrap().unwrap().unwrap();
        assert!(granted.token() > token, "{} <= {token}", granted.token());
        granted.release().await.unwrap();
    }
    for (guard, _) in quiet {
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_read_write_lock_keeps_its_parts_in_its_bucket_and_a_writer_waits_for_readers() {
    let server = single();
    three_buckets(&server.url()).await;
    let (a, b) = (
        client(&server.url(), 1).await,
        client(&server.url(), 1).await,
    );
    let holds = Holds::default();
    let name = name_in(2, "ledger");
    let r1 = a.read_lock(&name).acquire().await.unwrap();
    let r1_from = Instant::now();
    let r2 = b.read_lock(&name).acquire().await.unwrap();
    let r2_from = Instant::now();
    let writer = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            let w = b.write_lock(&name).acquire().await?;
            Ok::<_, LockError>((w, Instant::now()))
        })
    };
    // Both readers and the writer's gate are down before the readers go.
    let key = LockName::new(&name).unwrap().key().to_owned();
    until_key_count(&a, &key, 3).await;
    let placed = keys_by_bucket(&a).await;
    let highest = r1.token().max(r2.token());
    holds.record(HoldKind::Read, r1.token(), r1_from);
    r1.release().await.unwrap();
    holds.record(HoldKind::Read, r2.token(), r2_from);
    r2.release().await.unwrap();
    let (w, w_from) = timeout(PATIENCE, writer).await.unwrap().unwrap().unwrap();
    assert!(w.token() > highest, "{} vs {highest}", w.token());
    holds.record(HoldKind::Write, w.token(), w_from);
    w.release().await.unwrap();
    let violations = holds.rw_violations();
    assert!(violations.is_empty(), "{violations:?}");
    // The parts of the lock (its readers, its gate) are all in its bucket.
    for (bucket, keys) in placed {
        for k in keys.iter().filter(|k| k.starts_with(&key)) {
            assert_eq!(bucket, 2, "{k}");
        }
    }
}

/// Waits until at least `n` keys at or under `key` exist, in any bucket.
async fn until_key_count(c: &Client, key: &str, n: usize) {
    timeout(PATIENCE, async {
        loop {
            let found = keys_by_bucket(c)
                .await
                .values()
                .flatten()
                .filter(|k| k.starts_with(key))
                .count();
            if found >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the lock's keys appear");
}

#[tokio::test]
async fn an_atomic_set_must_share_a_bucket_and_a_hash_tag_makes_it() {
    let server = single();
    three_buckets(&server.url()).await;
    let c = client(&server.url(), 1).await;
    let apart = [name_in(0, "pay"), name_in(1, "pay")];
    let err = c
        .lock_all(apart.iter())
        .atomic()
        .acquire()
        .await
        .expect_err("keys in two buckets");
    assert!(
        matches!(&err, LockError::NotAtomic { reason, .. } if reason.contains("different buckets")),
        "{err}"
    );
    for name in &apart {
        assert!(c.holder(name).await.unwrap().is_none(), "{name} written");
    }
    let together = ["account:{7}:debit", "account:{7}:credit"];
    let guards = c.lock_all(together).atomic().acquire().await.unwrap();
    assert_eq!(guards.guards().len(), 2);
    let keys = keys_by_bucket(&c).await;
    let bucket = bucket_of("7", BUCKETS);
    for name in together {
        let key = LockName::new(name).unwrap().key().to_owned();
        assert!(keys[&bucket].contains(&key), "{key} not in bucket {bucket}");
    }
    guards.release().await.unwrap();
}

#[tokio::test]
async fn a_deployment_is_opened_only_by_its_first_bucket_and_only_whole() {
    let server = single();
    three_buckets(&server.url()).await;
    let other = bucket_name(DEFAULT_BUCKET, 1);
    let err = ClientOptions::new()
        .bucket(&other)
        .connect(&server.url())
        .await
        .err()
        .expect("bucket 1 is not a deployment");
    assert!(
        matches!(&err, ConnectError::Bucket(BucketError::NotFirst { first, .. }) if first == DEFAULT_BUCKET),
        "{err}"
    );
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let missing = bucket_name(DEFAULT_BUCKET, 2);
    js.delete_stream(format!("KV_{missing}")).await.unwrap();
    let err = ClientOptions::new()
        .connect(&server.url())
        .await
        .err()
        .expect("a bucket of the deployment is missing");
    assert!(err.to_string().contains(&missing), "{err}");
    let err = jetlock_coordinator::Coordinator::start(
        async_nats::connect(server.url()).await.unwrap(),
        Default::default(),
    )
    .await
    .err()
    .expect("a coordinator refuses it too");
    assert!(err.to_string().contains(&missing), "{err}");
}
