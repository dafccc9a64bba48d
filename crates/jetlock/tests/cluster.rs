//! The lock core on a 3-node cluster (`nats/cluster.conf`, R3 bucket,
//! `sync_interval: always`), with a member killed under load.

use jetlock::{Fence, LockError};
use jetlock_testkit::history::{check, FencedLedger, History};
use jetlock_testkit::server::Role;
use jetlock_testkit::{
    cluster, setup_bucket, stream_leader, worker_client, worker_options, ExclusionChecker, PATIENCE,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

const KEY: &str = "account:failover";
const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_keeps_exclusion_and_the_loop_resumes() {
    let mut cluster = cluster().await;
    // Lock clients are trusted workers: the fast path writes the bucket.
    let url = cluster.url_as(Role::Worker);
    setup_bucket(&cluster).await;

    let checker = Arc::new(ExclusionChecker::default());
    let fence = Arc::new(Fence::new());
    let history = History::new();
    let ledger = FencedLedger::new();
    let grants = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = worker_client(&url, &format!("task-{t}")).await;
        let (checker, fence, grants, stop) =
            (checker.clone(), fence.clone(), grants.clone(), stop.clone());
        let (history, ledger) = (history.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let session = client.session().to_owned();
            let mut errors = 0u64;
            while !stop.is_cancelled() {
                let request = client.lock(KEY).ttl(TTL).wait(Duration::from_secs(5));
                let op = history.acquire_invoked(KEY, &session);
                let guard = match request.acquire().await {
                    Ok(guard) => guard,
                    // Failover: the request timed out or NATS did not answer.
                    Err(LockError::Timeout { .. } | LockError::Nats { .. }) => {
                        history.unanswered(op);
                        errors += 1;
                        continue;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                };
                let token = guard.token();
                history.granted(op, token);
                checker.enter(token);
                fence
                    .admit(KEY, token)
                    .expect("a grant's token was refused by the fence");
                ledger.write(KEY, &session, token);
                checker.exit();
                grants.fetch_add(1, Ordering::SeqCst);
                if guard.is_lost() {
                    history.lost(KEY, &session, token);
                }
                // A release that cannot reach the leader leaves the lock to
                // expire by its lease; that is allowed here.
                let op = history.release_invoked(KEY, &session, token);
                let released = guard.release().await;
                history.released(op, released.is_ok());
            }
            errors
        }));
    }

    let wait_for = |target: u64| {
        let grants = grants.clone();
        async move {
            while grants.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    timeout(PATIENCE, wait_for(100))
        .await
        .expect("100 grants before the fault");

    let leader = stream_leader(&cluster, "KV_JETLOCK_LOCKS").await;
    let victim = cluster.index_of(&leader).expect("leader is a member");
    cluster.server_mut(victim).kill();
    let at_kill = grants.load(Ordering::SeqCst);

    timeout(Duration::from_secs(120), wait_for(at_kill + 100))
        .await
        .expect("the lock loop resumed after the leader was killed");
    let new_leader = stream_leader(&cluster, "KV_JETLOCK_LOCKS").await;
    assert_ne!(new_leader, leader, "a new leader took over");

    // The killed member comes back and the loop keeps going.
    cluster
        .server_mut(victim)
        .restart()
        .expect("restart member");
    history.healed();
    let after_restart = grants.load(Ordering::SeqCst);
    timeout(Duration::from_secs(120), wait_for(after_restart + 50))
        .await
        .expect("the loop runs with the member back");

    stop.cancel();
    let mut errors = 0;
    for task in tasks {
        errors += timeout(PATIENCE, task)
            .await
            .expect("task stops")
            .expect("task");
    }
    checker.assert_clean();
    eprintln!(
        "grants: {}, retried requests during failover: {errors}",
        checker.entries()
    );

    let probe = worker_options()
        .name("final-read")
        .connect(&url)
        .await
        .expect("client");
    let holder = probe.holder(KEY).await.expect("read the final holder");
    history.final_holder(KEY, holder.map(|h| h.token));
    let mut report = check(&history, &ledger, TTL);
    report.faults = 1; // the stream leader killed
    eprintln!("history: {report}");
    report.assert_clean();
}
