//! The session contract against real nats-server and `jetlock serve`: in
//! ordinary operation (a coordinator restart, a client reconnect) no second
//! client is granted a lock while its holder still believes it holds it.
//! Every verdict is what the clients believe (`is_lost()` at the moment the
//! other client is granted) and their fencing tokens.

mod common;

use common::{named_client as client, serve, single, PATIENCE};
use futures::StreamExt;
use jetlock::protocol::{self, Answer};
use jetlock::{Client, ClientOptions, LockError, LockGuard};
use std::time::Duration;

/// Starts `client`'s acquire of `name` and returns once a coordinator has
/// queued it.
async fn queued(
    url: &str,
    client: &Client,
    name: &'static str,
) -> tokio::task::JoinHandle<Result<LockGuard, LockError>> {
    let watcher = async_nats::connect(url).await.unwrap();
    let mut answers = watcher
        .subscribe(protocol::answer_subject(client.session()))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let c = client.clone();
    let task = tokio::spawn(async move {
        c.lock(name)
            .ttl(Duration::from_secs(60))
            .wait(PATIENCE)
            .acquire()
            .await
    });
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = answers.next().await.expect("subscription open");
            if let Ok(Answer::Queued { .. }) = serde_json::from_slice(&m.payload) {
                return;
            }
        }
    })
    .await
    .expect("the waiter is queued");
    task
}

/// Case 1 of the safety review: a coordinator that starts replays a
/// waiting request of a session whose heartbeats ask for 40 s, long before
/// its next heartbeat (every 10 s). A request must not give the session the
/// default 900 ms timeout: the coordinator would declare it dead and hand
/// its lock on while the holder's own deadline is 36 s away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_never_shortens_the_session_timeout() {
    let server = single();
    let url = server.url();
    let first = serve(&url, &[]);
    let slow = ClientOptions::new()
        .name("slow")
        .session_timeout(Duration::from_secs(40))
        .create_bucket(1)
        .connect(&url)
        .await
        .unwrap();
    let held = slow
        .lock("held")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let other = client(&url, "other").await;
    let _busy = other
        .lock("busy")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    // The slow session waits in the queue: its request stays in the stream.
    let _waiting = queued(&url, &slow, "busy").await;
    drop(first);
    let _second = serve(&url, &[]);
    // For longer than the default timeout (and the proof of hearing), a
    // third client tries to take the slow session's lock.
    let third = client(&url, "third").await;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tries = 0;
    while tokio::time::Instant::now() < until {
        tries += 1;
        match third.lock("held").try_acquire().await {
            Ok(g) => {
                let believed = !held.is_lost();
                panic!(
                    "granted token {:?} after {tries} tries while the holder of {:?} {}",
                    g.token(),
                    held.token(),
                    if believed {
                        "still believed it held the lock"
                    } else {
                        "had lost it"
                    }
                );
            }
            Err(LockError::Busy { .. }) => {}
            Err(e) => panic!("try_acquire: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!held.is_lost(), "the slow session keeps its lock");
    held.release().await.unwrap();
}

/// Case 2: async-nats closes its own socket when it reconnects (missed
/// pings, `force_reconnect`), and the server reports that as "Client
/// Closed", as for a process that exited. A reconnect must not end the
/// session: the waiter behind the holder is not granted while the holder
/// believes, and the holder keeps its lock through every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnect_never_ends_the_session() {
    let server = single();
    let url = server.url();
    let _serving = serve(&url, &[]);
    let holder = client(&url, "holder").await;
    let waiter = client(&url, "waiter").await;
    let guard = holder
        .lock("reconnect")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let mut wait = queued(&url, &waiter, "reconnect").await;
    let before = holder.nats().server_info().client_id;
    for round in 0..5 {
        holder.nats().force_reconnect().await.unwrap();
        // The window in which a coordinator that took the close for a
        // death hands the lock on (it did within 2 ms).
        if let Ok(granted) = tokio::time::timeout(Duration::from_millis(400), &mut wait).await {
            let believed = !guard.is_lost();
            panic!(
                "round {round}: the waiter was granted ({:?}) while the reconnected holder {}",
                granted.map(|r| r.map(|g| g.token())),
                if believed {
                    "still believed it held the lock"
                } else {
                    "had lost it"
                }
            );
        }
    }
    assert_ne!(
        holder.nats().server_info().client_id,
        before,
        "the holder did reconnect"
    );
    assert!(!guard.is_lost(), "a reconnect is not a death");
    let token = guard.token();
    guard.release().await.expect("the holder still holds it");
    let next = wait.await.unwrap().expect("handed on by the release");
    assert!(next.token() > token);
}
