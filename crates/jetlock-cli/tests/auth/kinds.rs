//! Read/write locks and semaphores under the shipped permissions
//! (`nats/cluster.conf`, R3): the trusted worker's rights are enough for
//! them; the protocol-only worker, which may not read the bucket, is told
//! so instead of being let in.

use super::*;
use futures::TryStreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_worker_takes_read_write_locks_and_permits_on_the_cluster() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    let a = d.client(Role::Worker, d.options(Role::Worker)).await;
    let b = d.client(Role::Worker, d.options(Role::Worker)).await;
    let r1 = a
        .read_lock("ledger")
        .ttl(TTL)
        .acquire()
        .await
        .expect("read");
    let r2 = b
        .read_lock("ledger")
        .ttl(TTL)
        .acquire()
        .await
        .expect("read beside");
    assert!(matches!(
        b.write_lock("ledger").try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.write_lock("ledger").ttl(TTL).acquire().await })
    };
    let highest = r1.token().max(r2.token());
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    let w = timeout(PATIENCE, writer)
        .await
        .expect("the writer gets in")
        .unwrap()
        .expect("write");
    assert!(w.token() > highest);
    w.release().await.expect("release");

    let p1 = a
        .semaphore("bank", 1)
        .ttl(TTL)
        .acquire()
        .await
        .expect("permit");
    assert!(matches!(
        b.semaphore("bank", 1).try_acquire().await,
        Err(LockError::Busy { .. })
    ));
    p1.release().await.expect("release");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_only_worker_is_refused_a_read_lock_it_cannot_check() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    let restricted = d
        .client(Role::Restricted, d.options(Role::Restricted))
        .await;
    assert!(!restricted.fast_path());
    let refused = timeout(
        PATIENCE,
        restricted.read_lock("ledger").ttl(TTL).try_acquire(),
    )
    .await
    .expect("answered");
    assert!(
        matches!(refused, Err(LockError::Nats { op: "read", .. })),
        "{refused:?}"
    );
    // What it took on the way (its reader key) is given back.
    let probe = d.client(Role::Worker, d.options(Role::Worker)).await;
    timeout(PATIENCE, async {
        loop {
            let keys: Vec<String> = probe
                .store()
                .kv()
                .keys()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut held = 0;
            for key in keys.iter().filter(|k| k.starts_with("ledger.")) {
                let name = LockName::from_key(key).unwrap();
                if matches!(
                    probe.store().read(&name).await.unwrap(),
                    Current::Held { .. }
                ) {
                    held += 1;
                }
            }
            if held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("nothing left held");
    d.finish().await;
}
