//! `jetlock demo`: payment workers move money between accounts under
//! jetlock locks, optionally while chaos kills and pauses them, and the run
//! ends with invariant checks.
//!
//! - `mod.rs` — the run: servers, the work queue, the progress loop, the
//!   invariant checks, cleanup;
//! - `cluster.rs` — `--cluster`: an embedded 3-node cluster and
//!   coordinator processes, and the chaos they take;
//! - `plan.rs` — the transfers, from a seed;
//! - `queue.rs` — the work queue: a subject and a consumer per partition;
//! - `ledger.rs` — balances behind fencing tokens, a unique constraint on
//!   message ids, partition fences (pure state);
//! - `service.rs` — the ledger over NATS request/reply, and chaos;
//! - `crew.rs` — the worker processes: spawn, respawn, kill, pause;
//! - `worker.rs` — one worker process (`jetlock demo --worker ID`, hidden):
//!   its partitions and its sessions;
//! - `transfer.rs` — one transfer, once, under both account locks;
//! - `summary.rs` — the summary, for people and as JSON.
//!
//! Workers share the run's partitions with `jetlock::recipes::Partitions`
//! (group `demo:<run>:workers`, one member per worker slot) and consume
//! each with `jetlock::recipes::ProcessOnce` (locks `once:demo:<run>:msg:<id>`,
//! done-records in the KV bucket `DEMO_DONE`). Transfers are messages on
//! `jetlock.demo.transfers.<run>.<partition>` in the work-queue stream
//! `DEMO_TRANSFERS` (message id `<run>-<n>`), consumed through the durable
//! pull consumers `demo-<run>-<partition>`; the ledger answers on
//! `jetlock.demo.ledger.<run>.{read,write}` and counts `.once` notes; account
//! `n` is the lock `demo:<run>:account:<n>`. One run never sees another's
//! keys or messages.
//!
//! Without `--url` the demo runs on the embedded default, like `jetlock
//! dev`: a local nats-server (child process, temp storage) and a
//! coordinator in this process; with `--cluster`, on three clustered
//! nodes with two coordinator processes (`cluster.rs`). With `--url` it
//! logs in as a NATS user and keeps to that user's session prefix
//! (`access.rs`); on
//! `nats/cluster.conf` that is the `demo` user. Everything the demo starts
//! is stopped when it ends, however it ends.

mod access;
mod cluster;
mod crew;
mod ledger;
mod plan;
mod queue;
mod service;
mod summary;
mod transfer;
mod worker;

use super::CliError;
use access::Access;
use async_nats::jetstream::{self, stream};
use cluster::Fleet;
use crew::{Crew, WorkerCommand};
use indicatif::{ProgressBar, ProgressStyle};
use jetlock::protocol::{self, Heartbeat, HeartbeatAck};
use jetlock_coordinator::{Coordinator, CoordinatorConfig};
use jetlock_testkit::server::{server_binary, server_version, NatsServer};
use ledger::{Fault, Ledger};
use plan::Plan;
use service::{Chaos, LedgerService, Strike};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use summary::Summary;

/// How often the run looks at its workers and its progress.
const TICK: Duration = Duration::from_millis(50);
/// How long the work queue must look empty, with transfers unsettled,
/// before the run ends (and reports them never applied).
const UNSETTLED_EMPTY: Duration = Duration::from_secs(10);
/// A run that settles no transfer, and whose queue does not shrink, for
/// this long has failed.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Accounts the transfers move money between.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    accounts: u32,
    /// Transfers to make.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    transfers: u64,
    /// Partitions the workers share (`jetlock::recipes::Partitions`): a
    /// transfer belongs to its paying account's partition (account mod
    /// partitions), and each partition has its own consumer.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    partitions: u32,
    /// Kill -9 and pause (SIGSTOP, longer than the session timeout) workers
    /// while the run goes on; killed workers are replaced.
    #[arg(long)]
    chaos: bool,
    /// With --chaos: strike about this often (each gap drawn from the seed
    /// between half and one and a half of it), e.g. `500ms`, `3s`.
    #[arg(long, default_value = "3s", value_parser = chaos_every)]
    chaos_every: Duration,
    /// Run on an embedded 3-node nats-server cluster (R3, every write
    /// fsynced) with two coordinator processes; with --chaos, servers are
    /// killed and paused and coordinators killed too.
    #[arg(long, conflicts_with = "url")]
    cluster: bool,
    /// NATS server URL(s), comma-separated, where a coordinator serves (or
    /// pass --coordinator). Without it, a local nats-server and a
    /// coordinator are started for the run. Logs in with the credentials
    /// flags (--user with JETLOCK_PASSWORD, --token, --creds, --nkey, TLS
    /// files, --context) or as the URL's `user:password@`.
    #[arg(long)]
    url: Option<String>,
    /// With --url: session ids and inboxes of the run start with this, the
    /// prefix the user's permissions allow [default: the user name, none
    /// without a user].
    #[arg(long, env = "JETLOCK_SESSION_PREFIX")]
    session_prefix: Option<String>,
    #[command(flatten)]
    auth: super::AuthArgs,
    /// With --url: run a coordinator in this process.
    #[arg(long, requires = "url")]
    coordinator: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Seed of the transfers and of chaos [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Break the ledger on purpose (tests of the invariant checks).
    #[arg(long, value_enum, hide = true)]
    fault: Option<Fault>,
    /// Run as worker ID of run --run (started by the demo itself).
    #[arg(long, hide = true, requires_all = ["run", "url"])]
    worker: Option<String>,
    #[arg(long, hide = true)]
    run: Option<String>,
    /// With --worker: replicas of the done-records bucket, if it must be
    /// created.
    #[arg(long, hide = true, default_value_t = 1)]
    replicas: usize,
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    if let (Some(id), Some(run), Some(url)) = (&args.worker, &args.run, &args.url) {
        let access = Access::at(
            url,
            args.auth.resolve(Some(url))?.auth,
            args.session_prefix.clone(),
        )?;
        let layout = worker::Layout {
            run: run.clone(),
            partitions: args.partitions,
            replicas: args.replicas,
        };
        return worker::run(id.clone(), layout, access).await;
    }
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(random_seed);
    let run = nuid::next().to_string();
    let mut site = Site::start(&args, &run).await?;
    let nats = site.access.connect("jetlock-demo").await?;
    if site.coordinator.is_none() {
        // Coordinator processes of --cluster are still starting.
        let limit = Duration::from_secs(if args.cluster { 30 } else { 2 });
        await_coordinator(&nats, &site.access, limit).await?;
    }
    if !args.json {
        println!(
            "jetlock demo: {} worker processes, {} accounts in {} partitions, {} transfers{}",
            args.workers,
            args.accounts,
            args.partitions,
            args.transfers,
            match (args.chaos, args.cluster) {
                (true, false) => " (chaos: kill -9 and SIGSTOP workers)",
                (true, true) =>
                    " (chaos: kill -9 and SIGSTOP workers and servers, kill -9 coordinators)",
                (false, _) => "",
            }
        );
        println!(
            "nats: {}; coordinator: {}",
            site.nats, site.coordinator_text
        );
    }

    let plan = Plan::generate(&run, args.accounts, args.transfers, seed);
    let js = jetstream::new(nats.clone());
    let replicas = if args.cluster { 3 } else { 1 };
    let queue = queue::create(&js, &run, args.partitions, replicas).await?;
    queue::publish(&js, &run, &plan, args.partitions).await?;
    let ledger = Arc::new(Mutex::new(Ledger::new(
        args.accounts,
        args.partitions,
        plan.initial,
        plan.transfers,
        args.fault,
    )));
    let chaos = args.chaos.then(|| {
        let chaos = Chaos::new(args.chaos_every, seed, Strike::turns(args.cluster));
        // The fault is shown by a worker killed between the ledger's commit
        // and its done-record: the first commit gets that kill, whatever the
        // clock says, so a short run shows it too.
        if args.fault == Some(Fault::DoubleApply) {
            chaos.arm(Strike::KillWorker);
        }
        Arc::new(chaos)
    });
    let crew = Arc::new(Crew::new(WorkerCommand {
        exe: std::env::current_exe()?,
        access: site.access.clone(),
        layout: worker::Layout {
            run: run.clone(),
            partitions: args.partitions,
            replicas,
        },
    }));
    let service = LedgerService::start(
        nats.clone(),
        &run,
        ledger.clone(),
        chaos.clone(),
        crew.clone(),
    )
    .await?;
    crew.launch(args.workers as usize)?;
    let bar = progress_bar(args.transfers);
    let driven = drive(
        &crew,
        site.fleet.as_mut(),
        &ledger,
        chaos.as_deref(),
        (&queue, &run),
        &bar,
        args.transfers,
    );
    // Ctrl-C still stops everything and cleans up.
    let driven = tokio::select! {
        driven = driven => driven,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    bar.finish_and_clear();
    crew.stop();
    service.stop().await;
    let cleanup = site
        .clean_up(&js, &run, args.partitions)
        .await
        .map_err(|e| {
            format!(
                "could not remove the run's consumers and messages from {}: {e}",
                queue::STREAM
            )
        });
    driven?;
    cleanup?;

    let summary = {
        let ledger = service::lock(&ledger);
        let counts = ledger.counts();
        let crew_counts = crew.counts();
        let fleet_counts = site.fleet.as_ref().map(Fleet::counts).unwrap_or_default();
        let invariants = ledger.invariants();
        Summary {
            run: run.clone(),
            workers: args.workers,
            accounts: args.accounts,
            partitions: args.partitions,
            transfers: args.transfers,
            chaos: args.chaos,
            chaos_every_s: args.chaos.then_some(args.chaos_every.as_secs_f64()),
            cluster: args.cluster,
            seed,
            fault: args.fault,
            nats: site.nats.clone(),
            coordinator: site.coordinator_text.clone(),
            applied: counts.applied,
            retries: counts.retries,
            duplicates_refused: counts.duplicates_refused,
            fenced_stale_writes: counts.fenced_writes,
            fenced_stale_reads: counts.fenced_reads,
            refused: counts.refused,
            acquisitions: counts.acquisitions,
            handoffs: counts.handoffs,
            partition_moves: counts.partition_moves,
            partition_owners: ledger.partition_owners(),
            fenced_partition: counts.fenced_partition,
            once_already_done: counts.once_already_done,
            once_busy: counts.once_busy,
            once_lost: counts.once_lost,
            lock_wait_p50_ms: ledger.lock_wait_ms(0.5),
            lock_wait_p99_ms: ledger.lock_wait_ms(0.99),
            kills: crew_counts.kills,
            pauses: crew_counts.pauses,
            respawns: crew_counts.respawns,
            worker_crashes: crew_counts.crashes,
            server_kills: fleet_counts.server_kills,
            server_pauses: fleet_counts.server_pauses,
            coordinator_kills: fleet_counts.coordinator_kills,
            coordinator_exits: fleet_counts.coordinator_exits,
            elapsed_s: started.elapsed().as_secs_f64(),
            invariants_held: invariants.iter().all(|i| i.held),
            invariants,
        }
    };
    summary.print(args.json);
    site.stop().await;
    match summary.failed().as_slice() {
        [] => Ok(()),
        failed => Err(format!("invariant failed: {}", failed.join(", ")).into()),
    }
}

/// Runs until every message is acknowledged (the work queue is empty):
/// keeps the workers alive, lets chaos strike until every transfer is
/// settled, shows progress. Fails when no
/// transfer settles and the queue does not shrink for [`STALL`].
async fn drive(
    crew: &Crew,
    mut fleet: Option<&mut Fleet>,
    ledger: &service::SharedLedger,
    chaos: Option<&Chaos>,
    (queue, run): (&stream::Stream, &str),
    bar: &ProgressBar,
    transfers: u64,
) -> Result<(), CliError> {
    let mut tick = tokio::time::interval(TICK);
    let mut settled = (0, Instant::now());
    // The fewest of the run's messages the queue has held: once every
    // transfer is settled, the acks of the last redeliveries are progress.
    let mut fewest = u64::MAX;
    let mut last_error = None;
    let mut empty_since: Option<Instant> = None;
    let backlog = queue::Backlog::watch(queue.clone(), run.to_owned());
    let mut seen = 0;
    loop {
        tick.tick().await;
        crew.supervise()?;
        if let Some(fleet) = fleet.as_deref_mut() {
            fleet.tend()?;
        }
        let counts = service::lock(ledger).counts();
        if let Some(chaos) = chaos.filter(|_| counts.settled >= transfers) {
            chaos.end();
        }
        if let Some(chaos) = chaos {
            // Worker strikes are armed for the ledger; the rest is ours.
            let strike = chaos.due(Instant::now());
            if let Some(fleet) = fleet.as_deref_mut() {
                fleet.strike(strike, chaos);
            }
        }
        let c = crew.counts();
        bar.set_position(counts.applied);
        bar.set_message(format!(
            "{} killed · {} paused · {} fenced off",
            c.kills, c.pauses, counts.fenced_writes
        ));
        if counts.settled != settled.0 {
            settled = (counts.settled, Instant::now());
        }
        // Done when the queue is empty: with every transfer settled, that
        // is after the last acks (a killed worker's message comes back after
        // the ack wait); without, after UNSETTLED_EMPTY.
        let look = backlog.latest();
        if look.number != seen {
            seen = look.number;
            match look.left {
                Ok(0) => {
                    // With transfers unsettled, an empty queue is believed
                    // only after it has looked empty for UNSETTLED_EMPTY:
                    // a stream whose leader just moved (a node killed by
                    // chaos) can report nothing for a moment.
                    let since = *empty_since.get_or_insert_with(Instant::now);
                    if counts.settled >= transfers || since.elapsed() >= UNSETTLED_EMPTY {
                        return Ok(());
                    }
                }
                Ok(left) => {
                    empty_since = None;
                    if left < fewest {
                        fewest = left;
                        settled.1 = Instant::now();
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        if settled.1.elapsed() > STALL {
            let error = last_error
                .map(|e| format!(" (the work queue: {e})"))
                .unwrap_or_default();
            // On the embedded cluster the nodes' logs go with the run: what
            // they said last is the best clue to a stall.
            let nodes = fleet.as_deref().map(Fleet::log_tails).unwrap_or_default();
            return Err(format!(
                "no transfer settled and no message acknowledged for {STALL:?} ({} of {transfers} settled); is a coordinator serving?{error}{nodes}",
                settled.0
            )
            .into());
        }
    }
}

fn progress_bar(transfers: u64) -> ProgressBar {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(transfers);
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed:>3} [{wide_bar}] {pos}/{len} transfers · {msg}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Where the run's NATS and coordinator are.
struct Site {
    access: Access,
    /// The embedded server, when there is no --url nor --cluster.
    server: Option<NatsServer>,
    /// The embedded cluster, with --cluster.
    fleet: Option<Fleet>,
    coordinator: Option<Coordinator>,
    nats: String,
    coordinator_text: String,
}

impl Site {
    async fn start(args: &DemoArgs, run: &str) -> Result<Site, CliError> {
        let version = || {
            server_binary()
                .ok()
                .and_then(|bin| server_version(&bin))
                .map(|(a, b, c)| format!("{a}.{b}.{c}"))
                .unwrap_or_default()
        };
        if args.cluster {
            let fleet = Fleet::start(std::env::current_exe()?).await?;
            return Ok(Site {
                access: fleet.demo_access()?,
                server: None,
                coordinator: None,
                nats: fleet.describe(&version()),
                coordinator_text: fleet.describe_coordinators(),
                fleet: Some(fleet),
            });
        }
        let (server, access, nats) = match &args.url {
            Some(url) => {
                let access = Access::at(
                    url,
                    args.auth.resolve(Some(url))?.auth,
                    args.session_prefix.clone(),
                )?;
                let text = format!("{} (--url)", access.describe());
                (None, access, text)
            }
            None => {
                let server = NatsServer::start_single(None)?;
                let url = server.url();
                let text = format!("embedded nats-server {} at {url}", version());
                (Some(server), Access::embedded(url), text)
            }
        };
        let (coordinator, coordinator_text) = if server.is_some() || args.coordinator {
            let nats = access.connect("jetlock-demo-coordinator").await?;
            let config = CoordinatorConfig {
                id: format!("demo-{run}"),
                ..CoordinatorConfig::default()
            };
            let coordinator = Coordinator::start(nats, config).await?;
            (Some(coordinator), "in this process".to_owned())
        } else {
            (None, "already serving at --url".to_owned())
        };
        Ok(Site {
            access,
            server,
            fleet: None,
            coordinator,
            nats,
            coordinator_text,
        })
    }

    /// Removes what the run left on a server that outlives it: its
    /// consumers and its messages. Its lock keys go by themselves (release
    /// markers after the bucket's marker TTL, 15 min by default): purging
    /// them would take a permission on the whole locks stream, which the
    /// `demo` user does not have.
    async fn clean_up(
        &self,
        js: &jetstream::Context,
        run: &str,
        partitions: u32,
    ) -> Result<(), CliError> {
        if self.server.is_some() || self.fleet.is_some() {
            return Ok(()); // The whole server goes.
        }
        queue::remove(js, run, partitions).await
    }

    /// Stops the coordinator, then the embedded server or cluster.
    async fn stop(self) {
        if let Some(coordinator) = self.coordinator {
            coordinator.shutdown().await;
        }
        drop(self.server);
        if let Some(fleet) = self.fleet {
            fleet.stop();
        }
    }
}

/// Asks for up to `limit` whether a coordinator serves: the heartbeat of a
/// session that leaves at once is answered by the coordinator that owns it.
/// (A session heartbeat is what any worker may send; coordinator
/// heartbeats are not for every user to read.)
async fn await_coordinator(
    nats: &async_nats::Client,
    access: &Access,
    limit: Duration,
) -> Result<(), CliError> {
    let probe = access.session(&format!("probe-{}", nuid::next()));
    let bye = serde_json::to_vec(&Heartbeat {
        leaving: true,
        ..Heartbeat::default()
    })?;
    let deadline = Instant::now() + limit;
    loop {
        let request = async_nats::Request::new()
            .payload(bye.clone().into())
            .timeout(Some(Duration::from_millis(500)));
        let answer = nats
            .send_request(protocol::heartbeat_subject(&probe), request)
            .await;
        if answer.is_ok_and(|m| serde_json::from_slice::<HeartbeatAck>(&m.payload).is_ok()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let urls = access.urls();
            return Err(format!(
                "no coordinator serves at {urls}: start one with `jetlock serve --url {urls}`, or pass --coordinator"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--chaos-every`: a humantime duration of at least 10 ms (chaos looks
/// at the clock every 50 ms; shorter gaps only strike on every look).
fn chaos_every(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if every < Duration::from_millis(10) {
        return Err(format!("{text} is too short: at least 10ms"));
    }
    Ok(every)
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

fn ledger_subject(run: &str, op: &str) -> String {
    format!("jetlock.demo.ledger.{run}.{op}")
}

/// The lock of account `n`.
fn account_lock(run: &str, account: u32) -> String {
    format!("demo:{run}:account:{account}")
}

/// The partition group of the run's workers.
fn partition_group(run: &str) -> String {
    format!("demo:{run}:workers")
}

/// The `ProcessOnce` key of the transfer with message id `msg_id`: its lock
/// is `once:demo:<run>:msg:<id>`, which the `demo` user may take on the
/// fast path, as it may its account locks.
fn once_key(run: &str, msg_id: &str) -> String {
    format!("demo:{run}:msg:{msg_id}")
}
