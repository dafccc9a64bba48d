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
