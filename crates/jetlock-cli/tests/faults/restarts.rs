//! Faults of ordinary operation, judged by beliefs (issue 13, item 6):
//! client connections that reconnect over and over under load, the
//! coordinators restarted one after the other, and the servers restarted
//! one after the other in lame-duck mode.

use super::*;

/// Every 0.1–0.5 s, 2–4 random workers' NATS connections are made to
/// reconnect (`async_nats::Client::force_reconnect`: the client closes its
/// socket and dials again, as after missed pings; the server reports
/// "Client Closed"). The worker keeps its `Client`, its session and its
/// holds through it, so a coordinator that takes the reconnect for a death
/// hands on locks that their holders still believe they hold.
///
/// (A kick from the server side, `$SYS.REQ.SERVER.KICK`, needs a user in
/// the system account; `nats/cluster.conf` has none, by design.)
async fn reconnect_storm(rig: &mut Rig, secs: Duration) {
    for _ in rounds(secs, 3) {
        for _ in 0..2 + fastrand::usize(..3) {
            let i = fastrand::usize(..WORKERS);
            let Some(nats) = rig.connection(i) else {
                continue;
            };
            if nats.force_reconnect().await.is_ok() {
                rig.faults += 1;
            }
        }
        rig.resumed("a burst of reconnects").await;
        jitter(100, 500).await;
    }
}

/// Each coordinator in turn: SIGTERM (a clean shutdown) or SIGKILL,
/// alternating, then a replacement under the same id, waiting for its
/// `ready` line; the load runs throughout. One coordinator is always up
/// but for the moments both are starting after a kill.
async fn rolling_coordinator_restarts(rig: &mut Rig, secs: Duration) {
    for round in rounds(secs, 2) {
        for i in 0..rig.coordinators.len() {
            let sig = if (round + i) % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            let mut c = rig.coordinators[i].take().expect("running");
            c.signal(sig);
            let status = c.exited().await;
            rig.faults += 1;
            drop(c);
            rig.coordinators[i] = Some(rig.start_coordinator(i));
            eprintln!(
                "{}: c{i} ended by signal {sig} ({status}) and replaced",
                rig.name
            );
            rig.resumed("a coordinator was restarted").await;
        }
    }
}

/// Reconnect storms under load: no two clients believe they hold one key at
/// once (a reconnect is not a death), and the rest of the checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storms() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("reconnect-storm").await;
    reconnect_storm(&mut rig, fault_secs()).await;
    rig.finish().await;
}

/// Rolling coordinator restarts under load (SIGTERM and SIGKILL), judged by
/// beliefs. Two of the six workers ask for 20 s sessions: a restarted
/// coordinator that learns such a session from a request it replays, not
/// from a heartbeat, must not judge it by a shorter timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_coordinator_restarts_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start_with(
        "rolling-coordinators",
        common::cluster().await,
        2,
        DEFAULT_PARTITIONS,
    )
    .await;
    rolling_coordinator_restarts(&mut rig, fault_secs()).await;
    rig.finish().await;
}

/// Lame-duck mode for each server in turn (it hands its leaderships over,
/// drains its clients and exits), then a restart. The clients see no error
/// beyond retries: no hold lost; an acquire may time out and a release
/// fail only with a NATS error (no answer, or no stream leader for a
/// moment), after which the lease ends the hold.
pub(super) async fn rolling_lame_duck(rig: &mut Rig) {
    for i in 0..3 {
        let exited = rig.cluster.server_mut(i).lame_duck(PATIENCE);
        assert!(exited, "server {i} left lame-duck mode by exiting");
        rig.faults += 1;
        rig.cluster
            .server_mut(i)
            .restart()
            .expect("restart the member");
        rig.resumed("a lame-duck restart").await;
    }
}

/// On the default deployment, its requests in 64 partitions: each server's
/// restart moves partitions between the coordinators, and the one that
/// gains some makes a consumer to read them while the servers restart.
/// Made in the coordinator's loop, that wait answered no heartbeat, and
/// every session ended at its deadline (2 of 5 runs on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_lame_duck_restart_shows_no_errors_beyond_retries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = Rig::start("lame-duck").await;
    lame_duck_shows_no_errors(rig).await;
}

/// The same on a deployment whose requests are not partitioned (one made
/// before partitions, or with `--partitions 1`): every coordinator reads
/// every request, and a takeover needs no JetStream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_lame_duck_restart_of_an_unpartitioned_deployment_shows_no_errors_beyond_retries()
{
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = Rig::start_with("lame-duck-unpartitioned", cluster().await, 0, 1).await;
    lame_duck_shows_no_errors(rig).await;
}

async fn lame_duck_shows_no_errors(mut rig: Rig) {
    rolling_lame_duck(&mut rig).await;
    let (report, stats) = rig.finish().await;
    assert_eq!(report.losses, 0, "a hold was lost in a lame-duck restart");
    assert_eq!(stats.losses + stats.lost_at_grant + stats.new_sessions, 0);
    assert_eq!(
        stats.hard_release_errors, 0,
        "a release failed with more than a NATS error in a lame-duck restart"
    );
}
