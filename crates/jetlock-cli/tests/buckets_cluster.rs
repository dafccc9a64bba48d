//! Locks over three buckets on the 3-node cluster of `nats/cluster.conf`,
//! everything as the user of its role: `jetlock setup --buckets 3` (as
//! `coordinator`) puts the three streams' leaders on three servers, a
//! coordinator (`jetlock serve`) queues and hands over locks in every
//! bucket for trusted workers, and `jetlock doctor` (as `operator`)
//! reports the spread. No permission is refused on the way.

mod common;

use common::{cluster, jetlock, name_in_bucket, nats_as, serve_within, worker_client, PATIENCE};
use jetlock::bucket::{leaders, DEFAULT_BUCKET};
use jetlock_testkit::server::Role;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::timeout;

const BUCKETS: u32 = 3;

/// The first `<prefix>:<i>` in bucket `bucket`.
fn name_in(bucket: u32, prefix: &str) -> String {
    name_in_bucket(bucket, BUCKETS, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_buckets_led_by_three_servers_serve_locks_in_each() {
    let cluster = cluster().await;
    let as_coordinator = cluster.url_as(Role::Coordinator);
    let setup = tokio::task::block_in_place(|| {
        jetlock()
            .args(["setup", "--replicas", "3", "--buckets", "3"])
            .args(["--url", &as_coordinator])
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&setup.stdout);
    assert!(
        setup.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    assert!(said.contains("locks spread over 3 buckets"), "{said}");
    let operator = nats_as(&cluster.url_as(Role::Operator), Role::Operator).await;
    let js = async_nats::jetstream::new(operator);
    let led: BTreeSet<String> = leaders(&js, DEFAULT_BUCKET, BUCKETS)
        .await
        .unwrap()
        .into_iter()
        .map(|(bucket, leader)| leader.unwrap_or_else(|| panic!("{bucket} has no leader")))
        .collect();
    assert_eq!(led.len(), 3, "leaders {led:?}");

    let _serving = tokio::task::block_in_place(|| {
        serve_within(
            &as_coordinator,
            &["--replicas", "3"],
            Duration::from_secs(30),
        )
    });
    let as_worker = cluster.url_as(Role::Worker);
    let holder = worker_client(&as_worker, "holder").await;
    let waiter = worker_client(&as_worker, "waiter").await;
    assert_eq!(holder.store().bucket_count(), BUCKETS);
    for bucket in 0..BUCKETS {
        let name = name_in(bucket, "acct");
        let guard = holder.lock(&name).acquire().await.unwrap();
        let wait = {
            let (waiter, name) = (waiter.clone(), name.clone());
            tokio::spawn(async move { waiter.lock(&name).acquire().await })
        };
        common::until(&format!("{name} is contended"), || guard.contended()).await;
        let token = guard.token();
        guard.release().await.unwrap();
        let granted = timeout(PATIENCE, wait).await.unwrap().unwrap().unwrap();
        assert!(granted.token() > token, "{name}");
        granted.release().await.unwrap();
    }

    let doctor = tokio::task::block_in_place(|| {
        jetlock()
            .args(["doctor", "--url", &cluster.url_as(Role::Operator)])
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains("locks spread over 3 buckets, led by 3 server(s)"),
        "{said}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    let refused = common::violations(&cluster);
    assert!(refused.is_empty(), "{refused:#?}");
}
