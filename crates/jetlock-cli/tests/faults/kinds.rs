//! Read/write locks and semaphores under the suite's faults (issue 14): a
//! server killed and restarted, a server paused, a server partitioned off
//! with its clients, coordinators killed and restarted.
//!
//! The load: [`RW_WORKERS`] clients mixing reads and writes of one
//! read/write lock nine to one, and [`SEM_WORKERS`] clients on one
//! semaphore of [`PERMITS`] permits; each client its own connection, pinned
//! to one server (worker `i` on server `i % 3`), half of them on the fast
//! path and half through the coordinators. They are judged by what they
//! *believed* (`jetlock_testkit::history::holders`): a hold from just after
//! its acquire returned to the earliest of its release's call, its loss's
//! observation and its own deadline read then (`PartGuard::deadline`, the
//! rule of docs/RELIABILITY.md "Beliefs"). No write beside any other hold;
//! a write's token above every hold that ended before it and below every
//! hold that began after it; never more permit holders than permits; and
//! every read and write goes through a `Fence`, whose refusals are counted.
//! Liveness: once the faults healed, every client is granted again, every
//! call returns, and no key under either name stays held after the load
//! stopped (all released, or expired by their leases).

use super::*;
use common::history::holders::{HoldKind, Holds};
use jetlock::client::PartGuard;
use jetlock::{Fence, LockName, Permit, RwLockGuard};

/// The read/write lock.
const RW: &str = "ledger";
/// The semaphore, and its permits.
const SEM: &str = "pool";
const PERMITS: u32 = 2;
/// Clients on the read/write lock, one write to nine reads.
const RW_WORKERS: usize = 6;
/// Clients on the semaphore: twice its permits, so that they queue.
const SEM_WORKERS: usize = 4;
/// Grants every client must get once the faults healed.
const PROGRESS: u64 = 5;

/// The faults the kinds run under (the suite's own injections).
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// [`kill_servers`]: kill -9 a server (every other round the stream
    /// leader), restart it.
    KillServers,
    /// [`pause_servers`]: SIGSTOP a server, SIGCONT.
    PauseServers,
    /// [`kill_coordinators`]: kill -9 one coordinator, restart it; then
    /// both at once.
    KillCoordinators,
    /// `partitions::isolate_servers`: a server cut off from the others and
    /// from its clients (in the partition lab only).
    IsolateServers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    ReadWrite,
    Semaphore,
}

/// What one client saw: what the exclusive workers count (`load`: its
/// `grants` are all three kinds, `refused_writes` the fence's refusals of a
/// use made within the belief), and per kind.
#[derive(Debug, Default, Clone, Copy)]
struct KindStats {
    reads: u64,
    writes: u64,
    permits: u64,
    /// Granted already past the client's own deadline: never believed.
    empty_beliefs: u64,
    /// A permit at or above [`PERMITS`].
    bad_index: u64,
    load: WorkerStats,
}

impl std::ops::AddAssign for KindStats {
    fn add_assign(&mut self, o: Self) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.permits += o.permits;
        self.empty_beliefs += o.empty_beliefs;
        self.bad_index += o.bad_index;
        self.load += o.load;
    }
}

/// The kinds' load on a [`Rig`]: its grants count in the rig's, so the
/// suite's faults wait for it to resume as for the exclusive load.
struct KindsLoad {
    rw: Arc<Holds>,
    sem: Arc<Holds>,
    /// Grants per client, to see each one make progress.
    progress: Vec<Arc<AtomicU64>>,
    /// Where each client is, for the message of a run that stalls.
    steps: Vec<Step>,
    workers: Vec<JoinHandle<(KindStats, Client)>>,
}

/// What a client task shares with the load.
struct Shared {
    holds: Arc<Holds>,
    fence: Arc<Fence>,
    grants: Arc<AtomicU64>,
    mine: Arc<AtomicU64>,
    step: Step,
    stop: CancellationToken,
}

/// What a client is doing now, and in which session.
type Step = Arc<Mutex<String>>;

impl KindsLoad {
    fn start(rig: &Rig) -> KindsLoad {
        let mut load = KindsLoad {
            rw: Arc::new(Holds::default()),
            sem: Arc::new(Holds::default()),
            progress: Vec::new(),
            steps: Vec::new(),
            workers: Vec::new(),
        };
        let fence = Arc::new(Fence::new());
        let parts = std::iter::repeat_n(Part::ReadWrite, RW_WORKERS)
            .chain(std::iter::repeat_n(Part::Semaphore, SEM_WORKERS));
        for (i, part) in parts.enumerate() {
            let url = rig.cluster.member_url_as(i % 3, Role::Worker);
            let mine = Arc::new(AtomicU64::new(0));
            load.progress.push(mine.clone());
            let step = Step::default();
            load.steps.push(step.clone());
            let shared = Shared {
                holds: match part {
                    Part::ReadWrite => load.rw.clone(),
                    Part::Semaphore => load.sem.clone(),
                },
                fence: fence.clone(),
                grants: rig.grants.clone(),
                mine,
                step,
                stop: rig.stop.clone(),
            };
            let options = {
                let name = format!("{}-k{i}", rig.name);
                move || worker_options().name(name.clone()).fast_path(i % 2 == 0)
            };
            load.workers
                .push(tokio::spawn(kind_worker(part, options, url, shared)));
        }
        load
    }
}

/// A held read, write or permit.
enum Hold {
    ReadWrite(RwLockGuard),
    Permit(Permit),
}

impl Hold {
    fn part(&self) -> &PartGuard {
        match self {
            Hold::ReadWrite(g) => g,
            Hold::Permit(p) => p,
        }
    }

    async fn release(self) -> Result<(), LockError> {
        match self {
            Hold::ReadWrite(g) => g.release().await,
            Hold::Permit(p) => p.release().await,
        }
    }
}

/// One client: read (nine times in ten) or write the read/write lock, or
/// take a permit; hold it for one to four fenced uses up to 60 ms apart;
/// release; until stopped. Returns its client, still connected, so that
/// its session outlives the check that nothing stays held.
async fn kind_worker(
    part: Part,
    options: impl Fn() -> ClientOptions,
    url: String,
    shared: Shared,
) -> (KindStats, Client) {
    let mut stats = KindStats::default();
    let at = |what: &str, client: &Client| {
        *shared.step.lock().unwrap() = format!("{what} ({})", client.session());
    };
    let mut client = connect_retrying(&options, &url).await;
    while !shared.stop.is_cancelled() {
        at(&format!("acquiring {part:?}"), &client);
        let (kind, acquired) = match part {
            Part::ReadWrite if fastrand::u8(..10) == 0 => {
                let r = client.write_lock(RW).ttl(TTL).wait(WAIT).acquire().await;
                (HoldKind::Write, r.map(Hold::ReadWrite))
            }
            Part::ReadWrite => {
                let r = client.read_lock(RW).ttl(TTL).wait(WAIT).acquire().await;
                (HoldKind::Read, r.map(Hold::ReadWrite))
            }
            Part::Semaphore => {
                let r = client.semaphore(SEM, PERMITS).ttl(TTL).wait(WAIT);
                (HoldKind::Permit, r.acquire().await.map(Hold::Permit))
            }
        };
        let from = std::time::Instant::now();
        let hold = match acquired {
            Ok(hold) => hold,
            Err(e) => {
                match e {
                    LockError::Timeout { .. } => stats.load.timeouts += 1,
                    LockError::Lost { .. } => stats.load.lost_at_grant += 1,
                    LockError::Nats { .. } => {
                        stats.load.nats_errors += 1;
                        sleep(Duration::from_millis(50)).await;
                    }
                    LockError::SessionExpired
                    | LockError::Refused {
                        code: jetlock::protocol::ErrorCode::SessionExpired,
                        ..
                    } => {
                        stats.load.new_sessions += 1;
                        at("connecting", &client);
                        client = connect_retrying(&options, &url).await;
                    }
                    e => panic!("{}: {kind:?} acquire: {e}", client.session()),
                }
                continue;
            }
        };
        let guard = hold.part();
        let token = guard.token();
        match &hold {
            Hold::Permit(p) if p.index() >= PERMITS => stats.bad_index += 1,
            _ => {}
        }
        shared.grants.fetch_add(1, Ordering::SeqCst);
        shared.mine.fetch_add(1, Ordering::SeqCst);
        stats.load.grants += 1;
        match kind {
            HoldKind::Read => stats.reads += 1,
            HoldKind::Write => stats.writes += 1,
            HoldKind::Permit => stats.permits += 1,
        }
        at(&format!("holding {kind:?} {token}"), &client);
        let lost = guard.lost();
        tokio::pin!(lost);
        for _ in 0..fastrand::usize(1..=4) {
            if guard.is_lost() || std::time::Instant::now() >= guard.deadline() {
                break;
            }
            let fenced = match kind {
                HoldKind::Write => shared.fence.admit(RW, token),
                HoldKind::Read => shared.fence.admit_read(RW, token),
                HoldKind::Permit => Ok(()),
            };
            if fenced.is_err() {
                stats.load.refused_writes += 1;
            }
            tokio::select! {
                _ = &mut lost => break,
                _ = sleep(Duration::from_millis(fastrand::u64(0..60))) => {}
            }
        }
        let until = std::time::Instant::now().min(guard.deadline());
        if until <= from {
            stats.empty_beliefs += 1;
        }
        shared.holds.record_until(kind, token, from, until);
        if guard.is_lost() {
            stats.load.losses += 1;
            continue;
        }
        at(&format!("releasing {kind:?} {token}"), &client);
        if let Err(e) = hold.release().await {
            eprintln!("{}: release {kind:?} ({token}): {e}", client.session());
            stats.load.failed_releases += 1;
        }
    }
    (stats, client)
}

/// Runs the kinds' load on `rig` under `fault` for `secs` (at least the
/// fault's two rounds), heals, and judges: see the module's comment.
pub(super) async fn run(mut rig: Rig, fault: Fault, secs: Duration) {
    let mut load = KindsLoad::start(&rig);
    rig.resumed("the load starts").await;
    match fault {
        Fault::KillServers => kill_servers(&mut rig, secs).await,
        Fault::PauseServers => pause_servers(&mut rig, secs).await,
        Fault::KillCoordinators => kill_coordinators(&mut rig, secs).await,
        Fault::IsolateServers => super::partitions::isolate_servers(&mut rig, secs).await,
    }
    // Liveness: every client is granted again.
    let at_heal: Vec<u64> = load
        .progress
        .iter()
        .map(|p| p.load(Ordering::SeqCst))
        .collect();
    let progressed = timeout(PATIENCE, async {
        while load
            .progress
            .iter()
            .zip(&at_heal)
            .any(|(p, &at)| p.load(Ordering::SeqCst) < at + PROGRESS)
        {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let behind: Vec<String> = (0..at_heal.len())
        .filter(|&i| load.progress[i].load(Ordering::SeqCst) < at_heal[i] + PROGRESS)
        .map(|i| format!("{i}: {}", load.steps[i].lock().unwrap()))
        .collect();
    assert!(
        progressed.is_ok(),
        "{}: clients {behind:?} made no progress within {PATIENCE:?} after the faults healed",
        rig.name
    );
    rig.stop.cancel();
    let mut stats = KindStats::default();
    let mut clients = Vec::new();
    for w in load.workers.drain(..) {
        let (s, client) = timeout(PATIENCE, w)
            .await
            .expect("every call of a client returns")
            .expect("a client ran without panicking");
        stats += s;
        clients.push(client);
    }
    let stopped = Instant::now();
    let stuck = held_after(&clients[0], stopped + 3 * TTL).await;
    eprintln!(
        "{}: {fault:?}, {} s, {} faults; {stats:?}; rw beliefs {}, semaphore beliefs {} (most at once {})",
        rig.name,
        rig.started.elapsed().as_secs(),
        rig.faults,
        load.rw.all().len(),
        load.sem.all().len(),
        load.sem.most_at_once(),
    );
    let violations = load.rw.rw_violations();
    assert!(violations.is_empty(), "{}: {violations:#?}", rig.name);
    let most = load.sem.most_at_once();
    assert!(
        most <= PERMITS as usize,
        "{}: {most} permit holders at once, of {PERMITS}",
        rig.name
    );
    assert_eq!(stats.bad_index, 0, "a permit at or above {PERMITS}");
    assert!(
        stuck.is_empty(),
        "{}: still held {:?} after the load stopped: {stuck:?}",
        rig.name,
        3 * TTL
    );
    assert!(
        stats.reads > 0 && stats.writes > 0 && stats.permits > 0,
        "the load read, wrote and took permits: {stats:?}"
    );
    drop(clients);
}

/// The keys under [`RW`] and [`SEM`] still held at `until` (returns as soon
/// as none is; a key that cannot be read counts as held): released ones
/// are vacant, and ones whose release failed expire by their leases.
async fn held_after(client: &Client, until: Instant) -> Vec<String> {
    use futures::TryStreamExt;
    loop {
        let mut held = Vec::new();
        let keys = match client.store().kv().keys().await {
            Ok(keys) => keys.try_collect::<Vec<String>>().await.ok(),
            Err(_) => None,
        };
        // Unreadable (no stream leader for a moment) counts as held.
        let keys = keys.unwrap_or_else(|| {
            held.push("(the bucket's keys could not be read)".to_owned());
            Vec::new()
        });
        for key in keys {
            let Ok(name) = LockName::from_key(&key) else {
                continue;
            };
            let ours = [RW, SEM]
                .iter()
                .any(|n| name.as_str().starts_with(&format!("{n}:")));
            if ours && !matches!(client.holder(name.as_str()).await, Ok(None)) {
                held.push(name.as_str().to_owned());
            }
        }
        if held.is_empty() || Instant::now() >= until {
            return held;
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds of faults per kinds scenario: `JETLOCK_FAULT_SECS`, or none
/// beyond each fault's two rounds (a few seconds: these run in CI).
pub(super) fn fault_secs() -> Duration {
    Duration::from_secs(env_secs("JETLOCK_FAULT_SECS", 0))
}

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_under_servers_killed_and_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = Rig::bare("kinds-kill-servers", cluster().await).await;
    run(rig, Fault::KillServers, fault_secs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_under_paused_servers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = Rig::bare("kinds-pause-servers", cluster().await).await;
    run(rig, Fault::PauseServers, fault_secs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_under_coordinators_killed_and_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = Rig::bare("kinds-kill-coordinators", cluster().await).await;
    run(rig, Fault::KillCoordinators, fault_secs()).await;
}

/// A server cut off from the others and from the clients pinned to it, in
/// the partition lab (skipped with a message where namespaces cannot be
/// made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_under_a_partitioned_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    super::partitions::run_lab("kinds").await;
}

/// Each fault for `JETLOCK_FAULT_SECS` (default here 60 s each; 1–15 s
/// pauses), on a cluster of its own; the partition needs the lab
/// (`JETLOCK_FAULT_SECS=60 cargo test --test faults kinds_under_a_partitioned_server`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --test faults kinds_long -- --ignored --nocapture"]
async fn kinds_long() {
    let _one = ONE_AT_A_TIME.lock().await;
    let secs = Duration::from_secs(env_secs("JETLOCK_FAULT_SECS", 60));
    for (name, fault) in [
        ("kinds-long-kill-servers", Fault::KillServers),
        ("kinds-long-pause-servers", Fault::PauseServers),
        ("kinds-long-kill-coordinators", Fault::KillCoordinators),
    ] {
        let rig = Rig::bare(name, cluster().await).await;
        run(rig, fault, secs).await;
    }
}
