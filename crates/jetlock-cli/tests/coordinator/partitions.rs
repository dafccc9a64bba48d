//! Partitioned coordinators on one server: each reads only its request
//! partitions, and one that gains a partition reads its queue from the
//! stream before it acts there.

use super::*;
use jetlock::shards::{partition_of, DEFAULT_PARTITIONS};
use jetlock_coordinator::Ring;

/// A lock name whose partition `owner` owns while `ids` are live.
fn name_owned_by(ids: &[&str], owner: &str, prefix: &str) -> String {
    let mut ring = Ring::new(ids[0].to_owned(), Duration::from_secs(60));
    for id in &ids[1..] {
        ring.beat(id, None, tokio::time::Instant::now());
    }
    ring.set_partitions(DEFAULT_PARTITIONS);
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|n| ring.owner_of_key(jetlock::name::LockName::new(n).unwrap().key()) == owner)
        .unwrap()
}

/// The partitions each coordinator's consumer of the request stream reads
/// (its filters), until there are `readers` of them with filters.
async fn partitions_read(url: &str, readers: usize) -> Vec<Vec<u32>> {
    let nats = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream(protocol::REQUEST_STREAM).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut found = Vec::new();
            let mut consumers = stream.consumers();
            while let Some(Ok(info)) = consumers.next().await {
                let parts: Vec<u32> = info
                    .config
                    .filter_subjects
                    .iter()
                    .filter_map(|s| protocol::subject_partition(s))
                    .collect();
                if !parts.is_empty() {
                    found.push(parts);
                }
            }
            if found.len() == readers {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every coordinator narrows its reading to its partitions")
}

/// Two coordinators split the partitions between them, each reading only
/// its own. A waiter queued in the partition of one is read by nobody
/// else; when that one leaves, the other reads the partition from the
/// stream and grants the waiter when the holder releases (through the
/// partition, which it reads from then on). Judged by the answers and the
/// fencing tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_reads_only_its_partitions_and_takes_one_over_from_the_stream() {
    let server = single();
    let url = server.url();
    let first = coordinator_named(&url, "part-a").await;
    let second = coordinator_named(&url, "part-b").await;
    let split = partitions_read(&url, 2).await;
    let (a, b) = (&split[0], &split[1]);
    assert!(
        a.iter().all(|p| !b.contains(p)),
        "no partition read twice: {split:?}"
    );
    assert_eq!(
        a.len() + b.len(),
        DEFAULT_PARTITIONS as usize,
        "every partition read: {split:?}"
    );

    let name = name_owned_by(&["part-a", "part-b"], "part-b", "part");
    let key = jetlock::name::LockName::new(&name).unwrap();
    let p = partition_of(key.key(), DEFAULT_PARTITIONS);
    let mut holder = JsonSession::new(&url).await;
    let mut waiter = JsonSession::new(&url).await;
    holder
        .send_partitioned(
            DEFAULT_PARTITIONS,
            "acquire",
            json!({"v": 1, "id": "h1", "key": name}),
        )
        .await;
    let granted = holder.next_final().await;
    let Answer::Granted {
        token: first_token, ..
    } = granted
    else {
        panic!("the holder is granted: {granted:?}");
    };
    waiter
        .send_to_partition(
            p,
            "acquire",
            json!({"v": 1, "id": "w1", "key": name, "wait_ms": 60_000}),
        )
        .await;
    // Queued by the partition's owner: the waiter is in its queue.
    let queued = tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = waiter.answers.next().await.expect("subscription open");
            if let Ok(a @ Answer::Queued { .. }) = serde_json::from_slice(&msg.payload) {
                return a;
            }
        }
    })
    .await
    .expect("the waiter hears it is queued");
    assert!(
        matches!(queued, Answer::Queued { position: 1, .. }),
        "{queued:?}"
    );

    // The owner leaves; the other one gains the partition and must read
    // the waiter from the stream.
    second.shutdown().await;
    holder
        .send_partitioned(
            DEFAULT_PARTITIONS,
            "release",
            json!({"v": 1, "id": "h2", "key": name, "token": first_token}),
        )
        .await;
    let released = holder.next_final().await;
    assert!(matches!(released, Answer::Released { .. }), "{released:?}");
    let handed = waiter.next_final().await;
    let Answer::Granted { token, re, .. } = handed else {
        panic!("the waiter read from the stream is granted: {handed:?}");
    };
    assert_eq!(re, "w1");
    assert!(
        token > first_token,
        "fenced after the first hold: {token} > {first_token}"
    );
    first.shutdown().await;
}

/// A request sent to another partition than its lock's is refused, and
/// nothing is taken: its partition's owner may not own the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_the_wrong_partition_is_refused_and_takes_nothing() {
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let mut json = JsonSession::new(&url).await;
    let name = "part:wrong";
    let key = jetlock::name::LockName::new(name).unwrap();
    let wrong = (partition_of(key.key(), DEFAULT_PARTITIONS) + 1) % DEFAULT_PARTITIONS;
    json.send_to_partition(wrong, "acquire", json!({"v": 1, "id": "r1", "key": name}))
        .await;
    let refused = json.next_final().await;
    assert_eq!(code(&refused), Some(ErrorCode::BadRequest), "{refused:?}");
    // A partition the deployment does not have is refused by the server.
    let err = json
        .publish_on(
            format!("jetlock.preq.{DEFAULT_PARTITIONS}.acquire.{}", json.session),
            &format!("{}:r2", json.session),
            json!({"v": 1, "id": "r2", "key": name}).to_string(),
        )
        .await;
    assert!(
        err.is_err(),
        "no stream takes partition {DEFAULT_PARTITIONS}"
    );
    // The lock was never taken: the right partition grants it at once.
    json.send_partitioned(
        DEFAULT_PARTITIONS,
        "acquire",
        json!({"v": 1, "id": "r3", "key": name}),
    )
    .await;
    let granted = json.next_final().await;
    assert!(matches!(granted, Answer::Granted { .. }), "{granted:?}");
}
