//! Read/write locks and semaphores whose holders die: `jetlock hold
//! --read` and `--permits` children killed with SIGKILL, with a
//! coordinator that sees their connections close.

mod common;

use common::holding::{hold_process, signal};
use common::{coordinator, named_client as client, single, PATIENCE};
use jetlock::{Fence, FencingToken};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_readers_let_the_queued_writer_in_and_are_fenced_off() {
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let (r1, t1) = hold_process(&url, "ledger", &["--read"]);
    let (r2, t2) = hold_process(&url, "ledger", &["--read"]);
    let fence = Fence::new();
    fence.admit_read("ledger", FencingToken(t1)).unwrap();
    fence.admit_read("ledger", FencingToken(t2)).unwrap();
    let writer = client(&url, "writer").await;
    assert!(writer.write_lock("ledger").try_acquire().await.is_err());
    let wait = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.write_lock("ledger").acquire().await })
    };
    signal(&r1, libc::SIGKILL);
    signal(&r2, libc::SIGKILL);
    let w = timeout(PATIENCE, wait).await.unwrap().unwrap().unwrap();
    assert!(w.token() > FencingToken(t1.max(t2)));
    fence.admit("ledger", w.token()).unwrap();
    assert!(fence.admit_read("ledger", FencingToken(t1)).is_err());
    w.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_permit_holders_permit_goes_to_the_waiter() {
    let server = single();
    let url = server.url();
    let _c = coordinator(&url).await;
    let (p1, _) = hold_process(&url, "connector", &["--permits", "2"]);
    let (_p2, _) = hold_process(&url, "connector", &["--permits", "2"]);
    let waiter = client(&url, "waiter").await;
    assert!(waiter
        .semaphore("connector", 2)
        .try_acquire()
        .await
        .is_err());
    let wait = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.semaphore("connector", 2).acquire().await })
    };
    signal(&p1, libc::SIGKILL);
    let permit = timeout(PATIENCE, wait).await.unwrap().unwrap().unwrap();
    assert!(permit.index() < 2);
    // The other holder still holds: no third permit.
    assert!(waiter
        .semaphore("connector", 2)
        .try_acquire()
        .await
        .is_err());
    permit.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_metrics_name_the_part_and_what_it_is_part_of() {
    use futures::StreamExt;
    let server = single();
    let url = server.url();
    let c = coordinator(&url).await;
    let addr = c.metrics_addr().expect("metrics are served");
    let watcher = async_nats::connect(&url).await.unwrap();
    let mut grants = watcher
        .subscribe("jetlock.ev.lock.granted.>")
        .await
        .unwrap();
    let reader = client(&url, "reader").await;
    let r = reader.read_lock("ledger").acquire().await.unwrap();
    let event: serde_json::Value = timeout(PATIENCE, async {
        loop {
            let msg = grants.next().await.unwrap();
            let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            if event["token"] == r.token().get() {
                return event;
            }
        }
    })
    .await
    .expect("the grant's event");
    assert_eq!(event["part"], "read", "{event}");
    assert_eq!(event["of"], "ledger", "{event}");
    timeout(PATIENCE, async {
        while !common::scrape(addr)
            .await
            .contains("jetlock_part_grants_total{part=\"read\"} 1")
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the read grant is counted");
    r.release().await.unwrap();
}
