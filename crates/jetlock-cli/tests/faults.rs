//! Fault injection (issue 6, item 2; issue 13, item 6): a 3-node cluster
//! from `nats/cluster.conf` (R3 bucket, `sync_interval: always`), two
//! `jetlock serve` coordinators, six workers on ten keys, and one fault
//! after another while the load runs. Every scenario is judged by the
//! history checker (`jetlock-testkit/src/history.rs`, `jetlock-testkit/src/belief.rs`):
//! no two clients *believing* they hold one key at the same instant
//! (`CLOCK_MONOTONIC`, in every worker and holder process), tokens that
//! only go up, no call left unanswered, no lock stuck past 2×TTL after the
//! faults heal, and a fenced ledger that never accepted a stale write.
//! Each prints its counts (grants, beliefs, overlaps, faults, ledger writes
//! and rejections). Reconnect storms and rolling coordinator restarts are
//! in `faults/restarts.rs`.
//!
//! Workers: three trusted workers on the Rust fast path (they write the
//! bucket) and three restricted workers on the JSON protocol through the
//! coordinators. Each loops: pick a key, acquire (3 s lease, 4 s wait),
//! write the ledger one to four times with its token (up to 60 ms apart),
//! release.
//!
//! Scenarios are short by default (about 10 s of faults each; the suite
//! runs them one at a time). `JETLOCK_FAULT_SECS=N` makes each run N
//! seconds of faults; `cargo test --test faults soak -- --ignored` runs the
//! mixed soak (`JETLOCK_SOAK_SECS`, default one hour). Read/write locks and
//! semaphores under the same faults are in `faults/kinds.rs`. See
//! `docs/RELIABILITY.md`, "Fault injection".

mod common;
#[path = "faults/kinds.rs"]
mod kinds;
#[path = "faults/partitions.rs"]
mod partitions;
#[path = "faults/paused.rs"]
mod paused;
#[path = "faults/restarts.rs"]
mod restarts;

use paused::{pause_a_holder, HolderProcess, PAUSED_TTL};
use restarts::rolling_lame_duck;

use common::belief::Mono;
use common::history::{check, FencedLedger, History, Report};
use common::{cluster, serve, setup_partitioned, stream_leader, worker_options, Serving, PATIENCE};
use jetlock::shards::DEFAULT_PARTITIONS;
use jetlock::{Client, ClientOptions, FencingToken, LockError};
use jetlock_testkit::server::{Member, NatsCluster, Role};
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

const WORKERS: usize = 6;
const KEYS: usize = 10;
/// The workers' lease.
const TTL: Duration = Duration::from_secs(3);
/// How long a worker waits for a lock.
const WAIT: Duration = Duration::from_secs(4);
/// The session timeout of the workers [`Rig::start_with`] gives long
/// sessions: heartbeats 5 s apart, far longer than the default timeout a
/// coordinator might wrongly give a session it first learns from a request.
const LONG_SESSION: Duration = Duration::from_secs(20);
/// Grants the load must make after each fault: the loop resumed.
const RESUMED: u64 = 5;

/// One scenario at a time: each runs three servers, two coordinators and
/// six workers, which is all two cores can take without every timeout in
/// the run turning into noise.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seconds of faults per scenario (`JETLOCK_FAULT_SECS`, default 6).
fn fault_secs() -> Duration {
    Duration::from_secs(env_secs("JETLOCK_FAULT_SECS", 6))
}

fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: usize) -> String {
    format!("acct:{i}")
}

/// What one worker saw, beside what it recorded in the history.
#[derive(Debug, Default, Clone, Copy)]
struct WorkerStats {
    grants: u64,
    /// Wait ran out (a busy key, or a coordinator that did not answer).
    timeouts: u64,
    /// NATS errors (a server down, a request unanswered): retried.
    nats_errors: u64,
    /// The coordinators declared the session dead: a new client was made.
    new_sessions: u64,
    /// A hold reported lost (lease ran out, session declared dead).
    losses: u64,
    /// An acquire answered `Lost`: granted after a long wait, gone before
    /// the client could restart its lease.
    lost_at_grant: u64,
    /// Releases that failed.
    failed_releases: u64,
    /// ... with another error than a NATS one (no answer, no stream
    /// leader for a moment) that a retry or the lease would cover.
    hard_release_errors: u64,
    /// Ledger writes refused while the worker believed it held the lock.
    refused_writes: u64,
}

impl std::ops::AddAssign for WorkerStats {
    fn add_assign(&mut self, o: Self) {
        self.grants += o.grants;
        self.timeouts += o.timeouts;
        self.nats_errors += o.nats_errors;
        self.new_sessions += o.new_sessions;
        self.losses += o.losses;
        self.lost_at_grant += o.lost_at_grant;
        self.failed_releases += o.failed_releases;
        self.hard_release_errors += o.hard_release_errors;
        self.refused_writes += o.refused_writes;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerKind {
    /// Trusted worker: the Rust fast path writes the bucket.
    FastPath,
    /// Restricted worker: every request through the coordinators.
    Protocol,
}

/// The cluster, the coordinators, the load and what it recorded.
struct Rig {
    name: &'static str,
    cluster: NatsCluster,
    coordinators: Vec<Option<Serving>>,
    history: History,
    ledger: FencedLedger,
    grants: Arc<AtomicU64>,
    stop: CancellationToken,
    workers: Vec<JoinHandle<WorkerStats>>,
    /// Each worker's current NATS connection, for the faults that break it.
    connections: Vec<Connection>,
    faults: u64,
    started: Instant,
}

/// A worker's current NATS connection (replaced when it connects again).
type Connection = Arc<Mutex<Option<async_nats::Client>>>;

impl Rig {
    /// Cluster, bucket, two coordinators, and the six workers running.
    async fn start(name: &'static str) -> Rig {
        Rig::start_on(name, cluster().await).await
    }

    /// [`Rig::start`] on a cluster the caller started.
    async fn start_on(name: &'static str, cluster: NatsCluster) -> Rig {
        Rig::start_with(name, cluster, 0, DEFAULT_PARTITIONS).await
    }

    /// [`Rig::start_on`], the last `long` workers with sessions of
    /// [`LONG_SESSION`] instead of the default 900 ms.
    /// The deployment's requests are split into `partitions`.
    async fn start_with(
        name: &'static str,
        cluster: NatsCluster,
        long: usize,
        partitions: u32,
    ) -> Rig {
        let mut rig = Rig::bare_partitioned(name, cluster, partitions).await;
        for i in 0..WORKERS {
            let kind = if i % 2 == 0 {
                WorkerKind::FastPath
            } else {
                WorkerKind::Protocol
            };
            let timeout = (i >= WORKERS - long).then_some(LONG_SESSION);
            rig.spawn_worker(i, kind, timeout);
        }
        rig.resumed("the load starts").await;
        rig
    }

    /// The bucket and two coordinators on `cluster`, without a load: the
    /// caller brings its own, counting its grants in `grants`.
    async fn bare(name: &'static str, cluster: NatsCluster) -> Rig {
        Rig::bare_partitioned(name, cluster, DEFAULT_PARTITIONS).await
    }

    /// [`Rig::bare`], its requests split into `partitions`.
    async fn bare_partitioned(name: &'static str, cluster: NatsCluster, partitions: u32) -> Rig {
        setup_partitioned(&cluster, partitions).await;
        let mut rig = Rig {
            name,
            cluster,
            coordinators: Vec::new(),
            history: History::new(),
            ledger: FencedLedger::new(),
            grants: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
            workers: Vec::new(),
            connections: Vec::new(),
            faults: 0,
            started: Instant::now(),
        };
        for i in 0..2 {
            let c = rig.start_coordinator(i);
            rig.coordinators.push(Some(c));
        }
        rig
    }

    /// `jetlock serve` as `c<i>`; waits for its `ready` line without
    /// holding up the runtime's other tasks.
    fn start_coordinator(&self, i: usize) -> Serving {
        let url = self.cluster.url_as(Role::Coordinator);
        tokio::task::block_in_place(|| serve(&url, &["--replicas", "3", "--id", &format!("c{i}")]))
    }

    fn spawn_worker(&mut self, i: usize, kind: WorkerKind, session_timeout: Option<Duration>) {
        let (role, fast_path) = match kind {
            WorkerKind::FastPath => (Role::Worker, true),
            WorkerKind::Protocol => (Role::Restricted, false),
        };
        let url = self.cluster.url_as(role);
        let (history, ledger, grants, stop) = (
            self.history.clone(),
            self.ledger.clone(),
            self.grants.clone(),
            self.stop.clone(),
        );
        let name = format!("{}-w{i}", self.name);
        let connection = Connection::default();
        self.connections.push(connection.clone());
        self.workers.push(tokio::spawn(async move {
            let options = move || {
                let options = ClientOptions::new()
                    .name(name.clone())
                    .session_prefix(role.user())
                    .fast_path(fast_path);
                match session_timeout {
                    Some(t) => options.session_timeout(t),
                    None => options,
                }
            };
            let load = Load {
                history,
                ledger,
                grants,
                stop,
                connection,
            };
            worker(options, url, load).await
        }));
    }

    /// Worker `i`'s NATS connection as of now.
    fn connection(&self, i: usize) -> Option<async_nats::Client> {
        self.connections[i].lock().unwrap().clone()
    }

    /// Waits until the load made [`RESUMED`] more grants: it runs again
    /// after a fault. Bounded; a stall fails the scenario.
    async fn resumed(&self, after: &str) {
        let target = self.grants.load(Ordering::SeqCst) + RESUMED;
        let grants = self.grants.clone();
        let waited = timeout(PATIENCE, async {
            while grants.load(Ordering::SeqCst) < target {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{}: the load did not resume within {PATIENCE:?} after {after}",
            self.name
        );
    }

    /// Heals, lets the load run on the healed cluster, stops it, reads
    /// every key's final holder at least 2×TTL after the heal and judges
    /// the history. Prints the counts.
    async fn finish(mut self) -> (Report, WorkerStats) {
        self.history.healed();
        let healed = Instant::now();
        self.resumed("the faults healed").await;
        self.stop.cancel();
        let mut stats = WorkerStats::default();
        for w in self.workers.drain(..) {
            stats += timeout(PATIENCE, w)
                .await
                .expect("a worker stops")
                .expect("a worker ran without panicking");
        }
        // The stuck-lock rule needs the final reads 2×TTL after the heal.
        let settle = (healed + 2 * TTL + Duration::from_millis(500))
            .saturating_duration_since(Instant::now());
        sleep(settle).await;
        let probe = connect_retrying(
            || worker_options().name("final-read"),
            &self.cluster.url_as(Role::Worker),
        )
        .await;
        for i in 0..KEYS {
            let holder = probe.holder(&key(i)).await.expect("read a final holder");
            self.history.final_holder(&key(i), holder.map(|h| h.token));
        }
        let mut report = check(&self.history, &self.ledger, TTL);
        report.faults = self.faults;
        eprintln!(
            "{}: {} s, {report}\n{}: workers saw {stats:?}",
            self.name,
            self.started.elapsed().as_secs(),
            self.name
        );
        report.assert_clean();
        assert!(report.grants > 0, "the load made grants");
        (report, stats)
    }
}

/// What a worker shares with the rig.
struct Load {
    history: History,
    ledger: FencedLedger,
    grants: Arc<AtomicU64>,
    stop: CancellationToken,
    connection: Connection,
}

/// A worker: acquire a random key, write the ledger, release; until
/// stopped. Everything it observes goes into the history, with its own
/// deadline (`LockGuard::deadline`) read at the grant, at the loss and at
/// the release.
async fn worker(options: impl Fn() -> ClientOptions, url: String, load: Load) -> WorkerStats {
    let Load {
        history,
        ledger,
        grants,
        stop,
        connection,
    } = load;
    let mut stats = WorkerStats::default();
    let connect = || async {
        let client = connect_retrying(&options, &url).await;
        *connection.lock().unwrap() = Some(client.nats().clone());
        client
    };
    let mut client = connect().await;
    while !stop.is_cancelled() {
        let k = key(fastrand::usize(..KEYS));
        let session = client.session().to_owned();
        let op = history.acquire_invoked(&k, &session);
        let request = client.lock(&k).ttl(TTL).wait(WAIT);
        let guard = match request.acquire().await {
            Ok(guard) => guard,
            Err(e) => {
                history.unanswered(op);
                match e {
                    LockError::Timeout { .. } => stats.timeouts += 1,
                    // Granted after a long wait, and taken before the
                    // grant's lease could be restarted: never held.
                    LockError::Lost { .. } => stats.lost_at_grant += 1,
                    LockError::Nats { .. } => {
                        stats.nats_errors += 1;
                        sleep(Duration::from_millis(50)).await;
                    }
                    LockError::SessionExpired
                    | LockError::Refused {
                        code: jetlock::protocol::ErrorCode::SessionExpired,
                        ..
                    } => {
                        stats.new_sessions += 1;
                        client = connect().await;
                    }
                    // Any other answer to a valid request is a bug.
                    e => panic!("{session}: acquire {k}: {e}"),
                }
                continue;
            }
        };
        let token = guard.token();
        history.granted(op, token);
        history.deadline(op, Mono::of(guard.deadline()));
        grants.fetch_add(1, Ordering::SeqCst);
        stats.grants += 1;
        // One to four writes, up to 60 ms apart: holds long enough for a
        // fault to land in the middle of one. The pause between writes ends
        // when `lost()` fires, so the loss is recorded when it happened.
        let lost = guard.lost();
        tokio::pin!(lost);
        for _ in 0..fastrand::usize(1..=4) {
            if guard.is_lost() {
                break;
            }
            if !ledger.write(&k, &session, token) {
                stats.refused_writes += 1;
            }
            tokio::select! {
                _ = &mut lost => break,
                _ = sleep(Duration::from_millis(fastrand::u64(0..60))) => {}
            }
        }
        let deadline = Mono::of(guard.deadline());
        if guard.is_lost() {
            stats.losses += 1;
            let op = history.lost(&k, &session, token);
            history.deadline(op, deadline);
            drop(guard);
            continue;
        }
        let op = history.release_invoked(&k, &session, token);
        history.deadline(op, deadline);
        let released = guard.release().await;
        if let Err(e) = &released {
            eprintln!("{session}: release {k} ({token}): {e}");
            stats.failed_releases += 1;
            if !matches!(e, LockError::Nats { .. }) {
                stats.hard_release_errors += 1;
            }
        }
        history.released(op, released.is_ok());
    }
    stats
}

/// Connects a client, retrying while servers are down (bounded).
async fn connect_retrying(options: impl Fn() -> ClientOptions, url: &str) -> Client {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match options().connect(url).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect failed ({e}); retrying");
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

/// Fault rounds, numbered from 0: until `secs` have passed, and at least
/// `min` of them.
fn rounds(secs: Duration, min: usize) -> impl Iterator<Item = usize> {
    let end = Instant::now() + secs;
    (0..).take_while(move |&round| Instant::now() < end || round < min)
}

/// A random pause between faults: `lo..hi` milliseconds.
async fn jitter(lo: u64, hi: u64) {
    sleep(Duration::from_millis(fastrand::u64(lo..hi))).await;
}

// ---- scenarios ---------------------------------------------------------------

/// kill -9 a server, restart it; every other round the locks stream's
/// leader.
async fn kill_servers(rig: &mut Rig, secs: Duration) {
    for round in rounds(secs, 2) {
        let victim = if round % 2 == 1 {
            let leader = stream_leader(&rig.cluster, "KV_JETLOCK_LOCKS").await;
            rig.cluster
                .index_of(&leader)
                .expect("the leader is a member")
        } else {
            fastrand::usize(..3)
        };
        rig.cluster.server_mut(victim).kill();
        rig.faults += 1;
        jitter(500, 2000).await;
        rig.cluster
            .server_mut(victim)
            .restart()
            .expect("restart the member");
        rig.resumed("a server was killed and restarted").await;
        jitter(500, 1500).await;
    }
}

/// SIGSTOP a server for 1–3 s (1–15 s with a longer run), then SIGCONT.
async fn pause_servers(rig: &mut Rig, secs: Duration) {
    let longest = if secs > Duration::from_secs(60) {
        15_000
    } else {
        3_000
    };
    for _ in rounds(secs, 2) {
        let victim = fastrand::usize(..3);
        rig.cluster.servers()[victim].pause();
        rig.faults += 1;
        jitter(1000, longest).await;
        rig.cluster.servers()[victim].resume();
        rig.resumed("a server was paused and resumed").await;
        jitter(500, 1500).await;
    }
}

/// kill -9 one coordinator and start it again; then both at once.
async fn kill_coordinators(rig: &mut Rig, secs: Duration) {
    for round in rounds(secs, 2) {
        let victims: Vec<usize> = if round % 2 == 1 {
            vec![0, 1]
        } else {
            vec![fastrand::usize(..2)]
        };
        for &v in &victims {
            // Dropping a `Serving` is kill -9 and reap.
            drop(rig.coordinators[v].take().expect("running"));
            rig.faults += 1;
        }
        jitter(300, 1500).await;
        for &v in &victims {
            let c = rig.start_coordinator(v);
            rig.coordinators[v] = Some(c);
        }
        rig.resumed("coordinators were killed and restarted").await;
        jitter(500, 1500).await;
    }
}

/// kill -9 all three servers within one second, restart them; checks that
/// every grant a client saw before the crash is still in the bucket (its
/// key's revision is at least the token).
async fn kill_all_servers(rig: &mut Rig, secs: Duration) {
    for _ in rounds(secs, 1) {
        // Load on every key before the crash.
        jitter(1500, 3000).await;
        let mut order = [0usize, 1, 2];
        fastrand::shuffle(&mut order);
        for &i in &order {
            rig.cluster.server_mut(i).kill();
            rig.faults += 1;
            jitter(0, 450).await;
        }
        // Nothing can be granted now: what the clients saw is all there is.
        let acknowledged = rig.history.acknowledged_grants();
        jitter(500, 1500).await;
        for i in 0..3 {
            rig.cluster
                .server_mut(i)
                .restart()
                .expect("restart a member");
        }
        let lost = lost_grants(&rig.cluster, &acknowledged).await;
        assert!(
            lost.is_empty(),
            "acknowledged grants lost by the crash (key, acknowledged token, revision after): {lost:?}"
        );
        eprintln!(
            "{}: all servers killed; the {} keys' last acknowledged grants are all in the bucket",
            rig.name,
            acknowledged.len()
        );
        rig.resumed("all servers were killed and restarted").await;
        jitter(1000, 2000).await;
    }
}

/// The keys whose revision in the bucket is below the last grant a client
/// saw: acknowledged writes the crash lost.
async fn lost_grants(
    cluster: &NatsCluster,
    acknowledged: &HashMap<String, FencingToken>,
) -> Vec<(String, u64, u64)> {
    let nats = common::nats_as(&cluster.url_as(Role::Operator), Role::Operator).await;
    let js = async_nats::jetstream::new(nats);
    let mut lost = Vec::new();
    for (name, token) in acknowledged {
        let key = jetlock::LockName::new(name).expect("a valid name");
        // The stream needs its leader again after the restart: retried.
        let revision = timeout(PATIENCE, async {
            loop {
                let kv = js.get_key_value(jetlock::bucket::DEFAULT_BUCKET).await;
                if let Ok(kv) = kv {
                    match kv.entry(key.key()).await {
                        Ok(entry) => return entry.map(|e| e.revision).unwrap_or(0),
                        Err(e) => eprintln!("read {name} after the restart: {e}; retrying"),
                    }
                }
                sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("the bucket answers after the restart");
        if revision < token.get() {
            lost.push((name.clone(), token.get(), revision));
        }
    }
    lost
}

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_servers_and_the_stream_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("kill-servers").await;
    kill_servers(&mut rig, fault_secs()).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_servers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("pause-servers").await;
    pause_servers(&mut rig, fault_secs()).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_coordinators() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("kill-coordinators").await;
    kill_coordinators(&mut rig, fault_secs()).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_all_servers_at_once_loses_no_acknowledged_grant() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("kill-all-servers").await;
    kill_all_servers(&mut rig, fault_secs()).await;
    rig.finish().await;
}

// ---- soak ----------------------------------------------------------------------

/// Every scenario above, mixed, for `JETLOCK_SOAK_SECS` (default 3600), on
/// one cluster and one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour long: cargo test --test faults soak -- --ignored"]
async fn soak() {
    let _one = ONE_AT_A_TIME.lock().await;
    let total = Duration::from_secs(env_secs("JETLOCK_SOAK_SECS", 3600));
    let round = Duration::from_secs(5);
    let mut rig = Rig::start("soak").await;
    let end = Instant::now() + total;
    let mut n = 0u64;
    while Instant::now() < end {
        match n % 6 {
            0 => kill_servers(&mut rig, round).await,
            1 => pause_servers(&mut rig, round).await,
            2 => kill_coordinators(&mut rig, round).await,
            3 => pause_a_holder(&mut rig).await,
            4 => kill_all_servers(&mut rig, round).await,
            _ => rolling_lame_duck(&mut rig).await,
        }
        n += 1;
        eprintln!(
            "soak: {} s, {} grants, {} faults",
            rig.started.elapsed().as_secs(),
            rig.grants.load(Ordering::SeqCst),
            rig.faults
        );
    }
    rig.finish().await;
}
