//! The session contract against real nats-server and `jetlock serve`: in
//! ordinary operation (a coordinator restart, a client reconnect) no second
//! client is granted a lock while its holder still believes it holds it.
//! Every verdict is what the clients believe (`is_lost()` at the moment the
//! other client is granted) and their fencing tokens.

mod common;

use common::{named_client as client, queued_acquire, serve, single, PATIENCE};
use jetlock::{ClientOptions, LockError};
use jetlock_testkit::server::Role;
use std::time::Duration;

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
    let watcher = async_nats::connect(&url).await.unwrap();
    let _waiting = queued_acquire(&watcher, &slow, "busy", Duration::from_secs(60), PATIENCE).await;
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
    // A reconnect grace that a loaded test machine's reconnects fit in (the
    // default, 100 ms, is for a holder's exit to be seen soon): the client
    // gives its locks up itself when its reconnect is not confirmed within
    // 0.9 of it, which is safe but not what this test is about.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "reconnect_grace_ms = 2000\n").unwrap();
    let _serving = serve(&url, &["--config", config.to_str().unwrap()]);
    let holder = client(&url, "holder").await;
    let waiter = client(&url, "waiter").await;
    let guard = holder
        .lock("reconnect")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let watcher = async_nats::connect(&url).await.unwrap();
    let mut wait = queued_acquire(
        &watcher,
        &waiter,
        "reconnect",
        Duration::from_secs(60),
        PATIENCE,
    )
    .await;
    let before = holder.nats().server_info().client_id;
    for round in 0..5 {
        holder.nats().force_reconnect().await.unwrap();
        // The window in which a coordinator that took the close for a
        // death hands the lock on (it did within 2 ms).
        if let Ok(granted) = tokio::time::timeout(Duration::from_millis(400), &mut wait).await {
            let believed = !guard.is_lost();
            panic!(
                "round {round}: the waiter was granted ({:?}) while the reconnected holder {}",
                granted.map(|(_, r)| r.map(|g| g.token())),
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
    let next = wait.await.unwrap().1.expect("handed on by the release");
    assert!(next.token() > token);
}

/// A client that asks for a longer timeout than coordinators allow
/// (`max_session_timeout_ms`) is told the one applied, and beats every
/// quarter of that: beating at a quarter of the timeout it asked for, it
/// would be silent for longer than the coordinators wait, and its session
/// would end (its own deadline, 0.9 of the timeout it was told, first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beats_at_a_quarter_of_the_timeout_it_is_told() {
    let server = single();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        "max_session_timeout_ms = 2000
",
    )
    .unwrap();
    let _serving = serve(&url, &["--config", config.to_str().unwrap()]);
    let holder = ClientOptions::new()
        .name("asks-too-much")
        .session_timeout(Duration::from_secs(20))
        .create_bucket(1)
        .connect(&url)
        .await
        .unwrap();
    let guard = holder
        .lock("told")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    // Three times the applied timeout; asked-for beats would come every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !guard.is_lost(),
        "the session ended: {:?}",
        guard.lost_reason()
    );
    guard.release().await.expect("still held");
}

/// Cases 4 and 5: a coordinator that cannot hear the cluster must not
/// declare a session dead that another coordinator keeps confirming. Its
/// server hangs for 500 ms: longer than the holder's 300 ms session timeout
/// (the smallest allowed) and shorter than it took the old cut-off guard
/// (its own beat missing for 600 ms) to notice. The holder, on another
/// server, is confirmed by the other coordinator all along, so it believes
/// in its locks; no waiter may be granted one meanwhile. The hung server
/// is not the proof stream's leader: were it, no coordinator could prove
/// it hears the quorum until another was elected, and the holder would
/// give its locks up (safe, but not this test's case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_cannot_hear_the_cluster_declares_no_confirmed_session_dead() {
    let cluster = common::cluster().await;
    common::setup_bucket(&cluster).await;
    let on = |i: usize, role: Role| cluster.member_url_as(i, role);
    let _c2 = serve(
        &on(1, Role::Coordinator),
        &["--replicas", "3", "--id", "c2"],
    );
    // The coordinators' own user reads the proof stream (the operator's
    // may not).
    let js = async_nats::jetstream::new(
        common::nats_as(&on(1, Role::Coordinator), Role::Coordinator).await,
    );
    let proof_leader = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(mut s) = js.get_stream(jetlock::bucket::PROOF_STREAM).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        return leader;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the proof stream has a leader");
    let hung_at = if cluster.servers()[0].name() == proof_leader {
        2
    } else {
        0
    };
    let _c1 = serve(
        &on(hung_at, Role::Coordinator),
        &["--replicas", "3", "--id", "c1"],
    );
    let holder = common::worker_options()
        .name("holder")
        .session_timeout(Duration::from_millis(300))
        .connect(&on(1, Role::Worker))
        .await
        .unwrap();
    let waiter = common::worker_client(&on(1, Role::Worker), "waiter").await;
    let watcher = common::nats_as(&on(1, Role::Operator), Role::Operator).await;
    // Eight locks: the hung coordinator owns some of them (all but 1 in 256).
    const NAMES: [&str; 8] = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"];
    let mut guards = Vec::new();
    let mut waits = Vec::new();
    for name in NAMES {
        guards.push(
            holder
                .lock(name)
                .ttl(Duration::from_secs(60))
                .acquire()
                .await
                .unwrap(),
        );
        waits
            .push(queued_acquire(&watcher, &waiter, name, Duration::from_secs(60), PATIENCE).await);
    }
    // When each holder's guard learned it lost its lock.
    let mut lost_at: Vec<_> = guards
        .iter()
        .map(|g| {
            let lost = g.lost();
            tokio::spawn(async move {
                lost.await;
                std::time::Instant::now()
            })
        })
        .collect();
    let hung = &cluster.servers()[hung_at];
    for round in 0..3 {
        hung.pause();
        tokio::time::sleep(Duration::from_millis(500)).await;
        hung.resume();
        // The window in which the hung coordinator carries out what it
        // decided while it heard nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, wait) in waits.iter_mut().enumerate() {
            if wait.is_finished() {
                let (granted, _) = wait.await.unwrap();
                let lost = if lost_at[i].is_finished() {
                    Some((&mut lost_at[i]).await.unwrap())
                } else {
                    None
                };
                panic!(
                    "round {round}: the waiter was granted {} while the confirmed holder {}",
                    NAMES[i],
                    match lost {
                        None => "still believed it held it".to_owned(),
                        Some(at) if at > granted =>
                            format!("believed it held it for {:?} more", at - granted),
                        Some(at) => format!("had lost it {:?} before", granted - at),
                    }
                );
            }
        }
    }
    for (guard, wait) in guards.into_iter().zip(waits) {
        assert!(!guard.is_lost(), "the confirmed holder keeps its locks");
        let token = guard.token();
        guard.release().await.unwrap();
        let next = wait.await.unwrap().1.expect("handed on by the release");
        assert!(next.token() > token);
    }
}
