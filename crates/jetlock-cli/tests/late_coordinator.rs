//! A wait that began with no coordinator answering joins the queue of one
//! that answers later, although the key it waits for does not change.

mod common;

use common::{coordinator, named_client as client, queued_acquire, single, PATIENCE};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_begun_without_a_coordinator_joins_the_queue_of_a_later_one() {
    let server = single();
    let url = server.url();
    let holder = client(&url, "holder").await;
    // Not renewed: the key does not change while the waiter waits.
    let guard = holder
        .lock("late")
        .ttl(Duration::from_secs(120))
        .auto_renew(false)
        .acquire()
        .await
        .unwrap();
    let waiter = client(&url, "waiter").await;
    let watcher = async_nats::connect(&url).await.unwrap();
    // The waiter watches the held key; then a coordinator starts.
    let start = {
        let url = url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            coordinator(&url).await
        })
    };
    let wait = queued_acquire(&watcher, &waiter, "late", Duration::from_secs(60), PATIENCE).await;
    let _coordinator = start.await.unwrap();
    guard.release().await.unwrap();
    let (_, granted) = tokio::time::timeout(PATIENCE, wait).await.unwrap().unwrap();
    let granted = granted.expect("granted by the coordinator's handoff");
    granted.release().await.unwrap();
}
