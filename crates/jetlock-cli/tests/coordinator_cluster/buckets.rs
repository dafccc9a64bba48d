//! Locks over three buckets on the 3-node cluster of `nats/cluster.conf`,
//! everything as the user of its role: `jetlock setup --buckets 3` (as
//! `coordinator`) puts the three streams' leaders on three servers, a
//! coordinator (`jetlock serve`) queues and hands over locks in every
//! bucket for trusted workers, and `jetlock doctor` (as `operator`)
//! reports the spread. No permission is refused on the way.

use super::common::{
    self, cluster, jetlock, name_in_bucket, nats_as, serve_within, worker_client, PATIENCE,
};
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
    let _serial = super::one_at_a_time().await;
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

    // A protocol-only user finds out at connect that it may not write the
    // deployment's buckets (its probe is refused in whichever bucket it
    // routes to), and takes each lock through the coordinator.
    let restricted = jetlock::ClientOptions::new()
        .name("restricted")
        .session_prefix(Role::Restricted.user())
        .connect(&cluster.url_as(Role::Restricted))
        .await
        .unwrap();
    assert!(!restricted.fast_path(), "it found out it may not write");
    for bucket in 0..BUCKETS {
        let name = name_in(bucket, "protocol-only");
        let guard = restricted.lock(&name).acquire().await.unwrap();
        assert_eq!(
            holder.holder(&name).await.unwrap().map(|h| h.session),
            Some(restricted.session().to_owned())
        );
        guard.release().await.unwrap();
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
    // Only the restricted user's probe (a write that cannot land) is refused.
    let refused: Vec<String> = common::violations(&cluster)
        .into_iter()
        .filter(|v| !(v.contains("user:restricted") && v.contains("$KV.JETLOCK_LOCKS")))
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
}
