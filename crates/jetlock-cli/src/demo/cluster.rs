//! `jetlock demo --cluster`: the run on an embedded 3-node cluster from
//! `nats/cluster.conf` (every write fsynced, `sync_interval: always`), the
//! locks bucket and the work queue replicated on all three nodes (R3), and
//! coordinators as `jetlock serve` child processes, logged in as the
//! `coordinator` user; the run and its workers log in as `demo`.
//!
//! With `--chaos` the fleet takes strikes of its own:
//!
//! - **kill a server** — SIGKILL one node, start it again (same storage)
//!   0.5–2 s later;
//! - **pause a server** — SIGSTOP one node for 1.5–3 s: its clients' requests
//!   hang, its sessions' heartbeats stop, then it wakes up behind;
//! - **kill a coordinator** — SIGKILL one `jetlock serve`, start it again
//!   0.5–1.5 s later; the others take over its share meanwhile.
//!
//! One node at a time is down, and the next server strike waits until every
//! node says on `/healthz` that its streams and consumers are current, and
//! [`CALM`] after a node came back: two nodes out of three keep the quorum
//! only while the third is not still catching up, so faults cost time,
//! never an acknowledged write, and never every replica of a stream at once.
//! (A node restarted on its storage has every raft group of the run to
//! catch up, a consumer per partition among them; on a loaded machine that
//! took longer than [`CALM`], and a strike on a second node then left
//! streams without a quorum for tens of seconds: the run stalled.) One
//! coordinator at a time is down for the same reason.

use super::access::Access;
use super::service::{Chaos, Strike};
use super::CliError;
use jetlock::bucket::{BucketSpec, DEFAULT_BUCKET};
use jetlock_testkit::server::{
    dies_with_this_process, ensure_bucket_when_ready, NatsCluster, Role,
};
use serde::Serialize;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Nodes of the cluster (what `nats/cluster.conf` routes).
const NODES: usize = 3;
/// Coordinator processes.
const COORDINATORS: usize = 2;
/// How long a killed server stays down, and a paused one stopped (ms).
const SERVER_DOWN_MS: (u64, u64) = (500, 2000);
const SERVER_PAUSE_MS: (u64, u64) = (1500, 3000);
/// How long a killed coordinator stays down (ms).
const COORDINATOR_DOWN_MS: (u64, u64) = (500, 1500);
/// How long a coordinator that exited on its own waits to start again.
const EXITED_RESTART: Duration = Duration::from_millis(500);
/// How long the cluster is left alone after a node came back: to catch
/// up, and to elect new leaders where it led (a follower waits 4-9 s of
/// silence before it stands for election). Striking again sooner keeps some
/// stream without a leader most of the time: the run crawls.
const CALM: Duration = Duration::from_secs(8);
/// Coordinator exits on their own before the run gives up.
const MAX_COORDINATOR_EXITS: u64 = 20;
/// How long the cluster may take to elect its leaders and take the bucket.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How often every node's `/healthz` is asked, and how long one may take.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// What chaos did to the fleet.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct FleetCounts {
    /// nats-server nodes killed with SIGKILL (each restarted).
    pub server_kills: u64,
    /// nats-server nodes stopped with SIGSTOP (each resumed).
    pub server_pauses: u64,
    /// Coordinator processes killed with SIGKILL (each restarted).
    pub coordinator_kills: u64,
    /// Coordinator processes that exited on their own (each restarted):
    /// `jetlock serve` gives up when JetStream does not answer as it
    /// starts, and a supervisor (docker's restart policy, systemd, here the
    /// demo) starts it again.
    pub coordinator_exits: u64,
}

/// The cluster and its coordinators.
pub struct Fleet {
    cluster: NatsCluster,
    coordinators: Vec<CoordinatorProcess>,
    /// The node that is down now, how, and until when.
    outage: Option<(usize, Outage, Instant)>,
    /// No server strike before this.
    calm_until: Instant,
    /// Strikes due that the fleet could not take yet, oldest first.
    pending: Vec<Strike>,
    counts: FleetCounts,
    /// Whether every node answered its last `/healthz` with 200 (JetStream
    /// current), kept by `health`.
    healthy: Arc<AtomicBool>,
    _health: HealthWatch,
}

/// The task that keeps `Fleet::healthy`; dropping it stops the task.
struct HealthWatch(tokio::task::JoinHandle<()>);

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Killed,
    Paused,
}

/// One `jetlock serve` child.
struct CoordinatorProcess {
    id: String,
    exe: PathBuf,
    url: String,
    child: Option<Child>,
    restart_at: Option<Instant>,
    /// Its stdout and stderr (an anonymous temp file).
    log: File,
}

impl Fleet {
    /// Starts the nodes, waits for JetStream, creates the R3 locks bucket
    /// and starts the coordinators (`exe serve`).
    pub async fn start(exe: PathBuf) -> Result<Fleet, CliError> {
        let cluster = NatsCluster::start(NODES)
            .map_err(|e| format!("could not start the embedded cluster: {e}"))?;
        let admin = Access::at(&cluster.url_as(Role::Coordinator), Default::default(), None)?
            .connect("jetlock-demo-setup")
            .await?;
        let spec = BucketSpec::new(DEFAULT_BUCKET, NODES);
        ensure_bucket_when_ready(&admin, &spec, START_LIMIT).await?;
        let url = cluster.url_as(Role::Coordinator);
        let coordinators = (1..=COORDINATORS)
            .map(|i| CoordinatorProcess::start(format!("c{i}"), exe.clone(), url.clone()))
            .collect::<Result<_, _>>()?;
        let monitors = cluster
            .servers()
            .iter()
            .map(|s| {
                let url = s
                    .monitor_url()
                    .ok_or("a cluster node has no monitoring port")?;
                format!("{url}/healthz")
                    .parse::<hyper::Uri>()
                    .map_err(|e| format!("{url}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let healthy = Arc::new(AtomicBool::new(false));
        let health = HealthWatch(tokio::spawn(watch_health(monitors, healthy.clone())));
        Ok(Fleet {
            cluster,
            coordinators,
            outage: None,
            calm_until: Instant::now(),
            pending: Vec::new(),
            counts: FleetCounts::default(),
            healthy,
            _health: health,
        })
    }

    /// How the run and its workers reach the cluster: as the `demo` user.
    pub fn demo_access(&self) -> Result<Access, CliError> {
        Ok(Access::at(
            &self.cluster.url_as(Role::Demo),
            Default::default(),
            None,
        )?)
    }

    pub fn describe(&self, version: &str) -> String {
        format!(
            "embedded 3-node nats-server {version} cluster at {} (R3, sync_interval: always)",
            self.cluster.url()
        )
    }

    pub fn describe_coordinators(&self) -> String {
        format!("{COORDINATORS} `jetlock serve` processes")
    }

    pub fn counts(&self) -> FleetCounts {
        self.counts
    }

    /// Does the strikes that came due (`strike`, if any, and those that
    /// waited) as far as the fleet can take them now; one it cannot take (a
    /// node or coordinator still down, a node catching up) waits, so every
    /// kind gets its turn. Lengths and targets come from `chaos`'s seed.
    pub fn strike(&mut self, strike: Option<Strike>, chaos: &Chaos) {
        if let Some(strike) = strike.filter(|s| !self.pending.contains(s)) {
            self.pending.push(strike);
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|&strike| !self.try_strike(strike, chaos));
        self.pending = pending;
    }

    /// Does `strike` if the fleet can take it now.
    fn try_strike(&mut self, strike: Strike, chaos: &Chaos) -> bool {
        let now = Instant::now();
        match strike {
            Strike::KillServer | Strike::PauseServer
                if self.outage.is_none()
                    && now >= self.calm_until
                    && self.healthy.load(Ordering::Relaxed) =>
            {
                let node = chaos.pick(NODES as u64) as usize;
                // Not healthy again before the health look says so.
                self.healthy.store(false, Ordering::Relaxed);
                let server = self.cluster.server_mut(node);
                if strike == Strike::KillServer {
                    server.kill();
                    let back = now + chaos.draw(SERVER_DOWN_MS);
                    info!(node = server.name(), "chaos: server killed");
                    self.outage = Some((node, Outage::Killed, back));
                    self.counts.server_kills += 1;
                } else {
                    server.pause();
                    let back = now + chaos.draw(SERVER_PAUSE_MS);
                    info!(node = server.name(), "chaos: server paused");
                    self.outage = Some((node, Outage::Paused, back));
                    self.counts.server_pauses += 1;
                }
                true
            }
            Strike::KillCoordinator if self.coordinators.iter().all(|c| c.restart_at.is_none()) => {
                let i = chaos.pick(self.coordinators.len() as u64) as usize;
                self.coordinators[i].kill(now + chaos.draw(COORDINATOR_DOWN_MS));
                info!(
                    coordinator = self.coordinators[i].id,
                    "chaos: coordinator killed"
                );
                self.counts.coordinator_kills += 1;
                true
            }
            Strike::KillServer | Strike::PauseServer | Strike::KillCoordinator => false,
            // Worker strikes are the ledger's (service.rs).
            Strike::KillWorker | Strike::PauseWorker => true,
        }
    }

    /// Brings back what is due to come back: restarts a killed node,
    /// resumes a paused one, restarts killed coordinators; fails when a
    /// coordinator exits on its own or a node does not start again.
    pub fn tend(&mut self) -> Result<(), CliError> {
        let now = Instant::now();
        if let Some((node, outage, back)) = self.outage {
            if now >= back {
                let server = self.cluster.server_mut(node);
                match outage {
                    Outage::Paused => server.resume(),
                    // Blocks until the node listens again (well under a
                    // second); the ledger and workers run meanwhile.
                    Outage::Killed => tokio::task::block_in_place(|| server.restart())
                        .map_err(|e| format!("a killed node did not start again: {e}"))?,
                }
                info!(node = server.name(), "chaos: server back");
                self.outage = None;
                self.calm_until = Instant::now() + CALM;
            }
        }
        for coordinator in &mut self.coordinators {
            if let Some(exit) = coordinator.tend(now)? {
                self.counts.coordinator_exits += 1;
                warn!(coordinator = coordinator.id, "{exit}");
                if self.counts.coordinator_exits > MAX_COORDINATOR_EXITS {
                    return Err(format!("coordinators keep exiting; the last: {exit}").into());
                }
            }
        }
        Ok(())
    }

    /// The last lines of every node's log, for a stalled run's error.
    pub fn log_tails(&self) -> String {
        self.cluster
            .servers()
            .iter()
            .map(|s| {
                format!(
                    "\n--- {} (last lines of its log):\n{}",
                    s.name(),
                    s.log_tail(15)
                )
            })
            .collect()
    }

    /// Stops the coordinators, then the nodes.
    pub fn stop(self) {
        drop(self.coordinators);
        drop(self.cluster);
    }
}

/// Asks every node's `/healthz` (`monitors`) every [`HEALTH_EVERY`] and
/// keeps in `healthy` whether all answered 200: nats-server answers 503
/// while any stream or consumer it holds is not current.
async fn watch_health(monitors: Vec<hyper::Uri>, healthy: Arc<AtomicBool>) {
    loop {
        let mut all = true;
        for uri in &monitors {
            let answer = tokio::time::timeout(HEALTH_EVERY, crate::http::get(uri, 4096)).await;
            all &= matches!(answer, Ok(Ok((status, _))) if status.is_success());
        }
        healthy.store(all, Ordering::Relaxed);
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

impl CoordinatorProcess {
    fn start(id: String, exe: PathBuf, url: String) -> Result<Self, CliError> {
        let mut process = CoordinatorProcess {
            id,
            exe,
            url,
            child: None,
            restart_at: None,
            log: tempfile::tempfile()?,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<(), CliError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["serve", "--replicas", "3", "--id", &self.id]);
        // Two coordinators on one machine: each picks a free metrics port.
        cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        // The URL carries the coordinator's password: in the environment,
        // which other users cannot read, not on the command line.
        cmd.env("JETLOCK_URL", &self.url);
        for var in [
            "JETLOCK_CONFIG",
            "JETLOCK_BUCKET",
            "JETLOCK_REPLICAS",
            "JETLOCK_ID",
            "JETLOCK_USER",
            "JETLOCK_PASSWORD",
            "JETLOCK_TOKEN",
            "JETLOCK_METRICS_ADDR",
            "NATS_CONTEXT",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "NATS_CREDS",
            "NATS_NKEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(self.log.try_clone()?)
            .stderr(self.log.try_clone()?);
        dies_with_this_process(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start coordinator {}: {e}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, restart_at: Instant) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.restart_at = Some(restart_at);
    }

    /// Restarts the coordinator when it is due; when it exited on its
    /// own, schedules its restart and says how it ended.
    fn tend(&mut self, now: Instant) -> Result<Option<String>, CliError> {
        if self.restart_at.is_some_and(|at| now >= at) {
            self.restart_at = None;
            self.spawn()?;
            return Ok(None);
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        self.child = None;
        self.restart_at = Some(now + EXITED_RESTART);
        let tail = jetlock_testkit::server::file_tail(&mut self.log, 4096, 5);
        Ok(Some(format!(
            "coordinator {} exited on its own ({status}); its output ends with:\n{tail}",
            self.id
        )))
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
