//! Coordinators (`jetlock serve`, as child processes) on a 3-node cluster
//! (`nats/cluster.conf`, R3 bucket and request stream):
//!
//! - kill -9 one of two coordinators during a steady, contended load: every
//!   acquire is answered (no timeouts, no errors), every acknowledged wire
//!   request gets exactly one final outcome, holds never overlap (judged by
//!   fencing tokens and a fenced counter);
//! - restart recovery: a lock held before a coordinator restart stays held,
//!   and a waiter queued before it is granted after it.
//!
//! Logs: `JETLOCK_LOG=jetlock=debug` reaches the coordinators (when a test
//! fails, the tail of their output is printed and all of it is saved under
//! `target/tmp/coordinator-<id>-<pid>.log`), `JETLOCK_TEST_LOG=debug` the
//! in-process clients. The wire checks read every answer and event the
//! coordinators publish (a monitor subscribed to `jetlock.to.>` and
//! `jetlock.ev.>`).
//!
//! Everything logs in as the user of its role (`nats/cluster.conf`):
//! coordinators as `coordinator`, the Rust clients as the trusted `worker`,
//! the raw JSON client as the protocol-only `restricted`, the monitor as
//! `operator`.

mod common;

use common::{
    cluster, nats_as, serve_within, setup_bucket, worker_client, worker_options, ExclusionChecker,
    Serving, PATIENCE,
};
use jetlock::protocol::{self, Answer};
use jetlock::{Client, Fence, FencingToken, LockName};
use jetlock_coordinator::Ring;
use jetlock_testkit::server::{NatsCluster, Role};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// How long a coordinator may take to print `ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// `jetlock serve --replicas 3 --id <id>`, once it printed its `ready`
/// line; the wait does not hold up the runtime's other tasks.
fn start_coordinator(url: &str, id: &str) -> Serving {
    let started = Instant::now();
    let c = tokio::task::block_in_place(|| {
        serve_within(url, &["--replicas", "3", "--id", id], READY_WITHIN)
    });
    eprintln!(
        "coordinator {id} ready after {:?} (pid {})",
        started.elapsed(),
        c.pid()
    );
    c
}

// ---- helpers ---------------------------------------------------------------

/// Runs the tests of this file one at a time: each starts a 3-node cluster
/// and coordinators, too much for a 2-core machine twice over.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// `n` lock names owned (rendezvous hashing over {c1, c2}) by each of the
/// two coordinators: (names of `a`, names of `b`).
fn split_names(a: &str, b: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ring = Ring::new(a.to_owned(), Duration::from_secs(60));
    ring.beat(b, None, Instant::now());
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for i in 0.. {
        let name = format!("acct:{i}");
        let key = LockName::new(&name).unwrap();
        if ring.owner(key.key()) == a {
            if of_a.len() < n {
                of_a.push(name);
            }
        } else if of_b.len() < n {
            of_b.push(name);
        }
        if of_a.len() == n && of_b.len() == n {
            break;
        }
    }
    (of_a, of_b)
}

/// Waits until every coordinator in `ids` counts all of them live: a
/// heartbeat of a session owned by each one is answered with
/// `coordinators == ids.len()`. (A coordinator that just became ready has
/// not heard the others yet and, until it does, acts on every key.)
async fn wait_for_ring(cluster: &NatsCluster, ids: &[&str]) {
    let nats = nats_as(&cluster.url_as(Role::Worker), Role::Worker).await;
    let mut ring = Ring::new(ids[0].to_owned(), Duration::from_secs(60));
    for id in &ids[1..] {
        ring.beat(id, None, Instant::now());
    }
    for id in ids {
        // A session id this coordinator owns (under the worker's prefix).
        let session = (0..)
            .map(|i| format!("worker.ring-probe-{i}"))
            .find(|s| ring.owner(s) == *id)
            .expect("some session hashes to every coordinator");
        timeout(PATIENCE, async {
            loop {
                let ack = nats
                    .request(protocol::heartbeat_subject(&session), "{}".into())
                    .await
                    .ok()
                    .and_then(|m| {
                        serde_json::from_slice::<protocol::HeartbeatAck>(&m.payload).ok()
                    });
                if ack.is_some_and(|a| a.coordinators as usize == ids.len()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("coordinator {id} never saw all of {ids:?}"));
    }
}

/// One message: when it arrived, its subject, its body.
type Received = (Instant, String, Vec<u8>);

/// Every message the coordinators publish (answers on `jetlock.to.>`,
/// events on `jetlock.ev.>`), with the time it arrived.
#[derive(Clone, Default)]
struct WireLog {
    log: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl WireLog {
    /// Subscribes, then makes sure every member routes these subjects to
    /// us: a probe published on each member must arrive (interest crosses
    /// cluster routes asynchronously, so a fresh subscription can miss
    /// what another member publishes right after it).
    async fn start(cluster: &NatsCluster) -> WireLog {
        let nats = nats_as(&cluster.url_as(Role::Operator), Role::Operator).await;
        let mut answers = nats.subscribe("jetlock.to.>").await.expect("subscribe");
        let mut events = nats.subscribe("jetlock.ev.>").await.expect("subscribe");
        nats.flush().await.expect("flush");
        let wire = WireLog::default();
        let w = wire.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let _keep = nats;
            loop {
                let msg = tokio::select! {
                    Some(m) = answers.next() => m,
                    Some(m) = events.next() => m,
                    else => break,
                };
                w.log.lock().unwrap().push((
                    Instant::now(),
                    msg.subject.to_string(),
                    msg.payload.to_vec(),
                ));
                w.arrived.notify_waiters();
            }
        });
        for i in 0..cluster.servers().len() {
            // Only coordinators may publish answers and events.
            let probe = nats_as(
                &cluster.member_url_as(i, Role::Coordinator),
                Role::Coordinator,
            )
            .await;
            for subject in [
                format!("jetlock.to.probe-{i}"),
                format!("jetlock.ev.probe-{i}"),
            ] {
                let seen =
                    |w: &WireLog| w.log.lock().unwrap().iter().any(|(_, s, _)| *s == subject);
                timeout(PATIENCE, async {
                    while !seen(&wire) {
                        probe
                            .publish(subject.clone(), "probe".into())
                            .await
                            .expect("probe");
                        probe.flush().await.expect("flush");
                        let _ = timeout(Duration::from_millis(20), wire.arrived.notified()).await;
                    }
                })
                .await
                .expect("the wire monitor's interest reached every member");
            }
        }
        wire
    }

    /// Waits until an answer matches `pred`; returns it.
    async fn wait_answer(
        &self,
        within: Duration,
        pred: impl Fn(&str, &Answer) -> bool,
    ) -> Option<Answer> {
        timeout(within, async {
            loop {
                let arrived = self.arrived.notified();
                if let Some((_, _, a)) = self.answers().into_iter().find(|(_, s, a)| pred(s, a)) {
                    return a;
                }
                arrived.await;
            }
        })
        .await
        .ok()
    }

    /// Answers: (arrival, session, answer).
    fn answers(&self) -> Vec<(Instant, String, Answer)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, subject, body)| {
                let session = subject.strip_prefix("jetlock.to.")?;
                let answer = serde_json::from_slice::<Answer>(body).ok()?;
                Some((*at, session.to_owned(), answer))
            })
            .collect()
    }

    /// Events: (arrival, kind, body).
    fn events(&self) -> Vec<(Instant, String, serde_json::Value)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, subject, body)| {
                let kind = subject.strip_prefix("jetlock.ev.")?;
                let v = serde_json::from_slice(body).ok()?;
                Some((*at, kind.to_owned(), v))
            })
            .collect()
    }
}

/// A final answer reduced to what decides the request's outcome.
fn outcome(a: &Answer) -> String {
    match a {
        Answer::Granted { token, .. } => format!("granted token={token}"),
        Answer::Released { holds, .. } => format!("released holds={holds}"),
        Answer::Renewed { token, .. } => format!("renewed token={token}"),
        Answer::Cancelled { .. } => "cancelled".into(),
        Answer::Revoking { token, .. } => format!("revoking token={token}"),
        Answer::Error { code, .. } => format!("error {code}"),
        other => format!("{other:?}"),
    }
}

/// Final answers per (session, request id): (outcomes in arrival order).
fn finals_by_request(
    answers: &[(Instant, String, Answer)],
) -> HashMap<(String, String), Vec<(Instant, String)>> {
    let mut finals: HashMap<(String, String), Vec<(Instant, String)>> = HashMap::new();
    for (at, session, a) in answers {
        if let (Some(re), true) = (a.re(), a.is_final()) {
            finals
                .entry((session.clone(), re.to_owned()))
                .or_default()
                .push((*at, outcome(a)));
        }
    }
    finals
}

/// `at` relative to `origin`, signed, for reports.
fn rel(at: Instant, origin: Instant) -> String {
    if at >= origin {
        format!("+{}ms", at.duration_since(origin).as_millis())
    } else {
        format!("-{}ms", origin.duration_since(at).as_millis())
    }
}

/// Distinct outcomes among `finals`.
fn distinct(finals: &[(Instant, String)]) -> usize {
    finals.iter().map(|(_, o)| o).collect::<BTreeSet<_>>().len()
}

/// `finals` with arrival times relative to `origin`.
fn timeline(finals: &[(Instant, String)], origin: Instant) -> String {
    finals
        .iter()
        .map(|(at, o)| format!("{o} at {}", rel(*at, origin)))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- a raw JSON protocol client ---------------------------------------------

/// What the raw client did: the ids it sent (acknowledged by JetStream), in
/// order, with their kind; requests it sent after the kill.
#[derive(Default, Debug)]
struct RawReport {
    sent: Vec<(String, &'static str, Instant)>,
    sent_after_kill: usize,
    grants: u64,
    unanswered: Vec<String>,
    unexpected: Vec<String>,
    fence_refusals: Vec<String>,
    heartbeat_refused: u64,
}

/// A client that speaks the JSON protocol with nothing but async-nats:
/// acquire (wait) → hold → release on `name`, until `stop`. Every hold is
/// judged by the same checker and fence as the Rust clients'.
#[allow(clippy::too_many_arguments)]
async fn raw_client(
    url: String,
    name: String,
    checker: Arc<ExclusionChecker>,
    fence: Arc<Fence>,
    counter: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    killed: watch::Receiver<bool>,
) -> RawReport {
    use futures::StreamExt;
    let nats = nats_as(&url, Role::Restricted).await;
    let js = async_nats::jetstream::new(nats.clone());
    let session = format!("restricted.raw-{}", nuid::next());
    let mut answers = nats
        .subscribe(protocol::answer_subject(&session))
        .await
        .expect("subscribe to answers");
    nats.flush().await.expect("flush");

    // Heartbeats: every 500 ms, 5 s timeout.
    let refused = Arc::new(AtomicU64::new(0));
    let hb = {
        let (nats, session, refused) = (nats.clone(), session.clone(), refused.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let req = nats.request(
                    protocol::heartbeat_subject(&session),
                    r#"{"timeout_ms":5000}"#.into(),
                );
                if let Ok(Ok(msg)) = timeout(Duration::from_secs(2), req).await {
                    if let Ok(ack) = serde_json::from_slice::<protocol::HeartbeatAck>(&msg.payload)
                    {
                        if !ack.alive {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
    };

    let mut report = RawReport::default();
    let mut n = 0u64;
    // Sends one request; retries the publish with the same message id
    // until JetStream acknowledges it.
    async fn send(
        js: &async_nats::jetstream::Context,
        session: &str,
        op: protocol::Op,
        id: &str,
        body: serde_json::Value,
    ) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", protocol::message_id(session, id).as_str());
        let body = serde_json::to_vec(&body).unwrap();
        for attempt in 1.. {
            let r = async {
                js.publish_with_headers(
                    protocol::request_subject(op, session),
                    headers.clone(),
                    body.clone().into(),
                )
                .await?
                .await?;
                Ok::<_, async_nats::Error>(())
            }
            .await;
            match r {
                Ok(()) => return,
                Err(e) if attempt < 20 => {
                    eprintln!("raw client: publish of {id} failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("raw client: request {id} was never stored: {e}"),
            }
        }
    }
    // Waits for the final answer to `id` (other messages are ignored here:
    // the wire log judges them).
    async fn final_answer(answers: &mut async_nats::Subscriber, id: &str) -> Option<Answer> {
        let wait = async {
            while let Some(msg) = answers.next().await {
                if let Ok(a) = serde_json::from_slice::<Answer>(&msg.payload) {
                    if a.re() == Some(id) && a.is_final() {
                        return Some(a);
                    }
                }
            }
            None
        };
        timeout(Duration::from_secs(30), wait).await.ok().flatten()
    }

    while !stop.is_cancelled() {
        n += 1;
        let id = format!("a{n}");
        send(
            &js,
            &session,
            protocol::Op::Acquire,
            &id,
            serde_json::json!({"v": 1, "id": id, "key": name, "ttl_ms": 5000, "wait_ms": 20000}),
        )
        .await;
        report.sent.push((id.clone(), "acquire", Instant::now()));
        if *killed.borrow() {
            report.sent_after_kill += 1;
        }
        let token = match final_answer(&mut answers, &id).await {
            None => {
                report.unanswered.push(id);
                break;
            }
            Some(Answer::Granted { token, .. }) => token,
            Some(other) => {
                report.unexpected.push(format!("{id}: {other:?}"));
                break;
            }
        };
        report.grants += 1;
        checker.enter(FencingToken(token));
        let v = counter.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3)).await;
        // A refusal leaves the counter short: judged at the end.
        if let Err(e) = fence.admit_with(&name, FencingToken(token), || {
            counter.store(v + 1, Ordering::SeqCst)
        }) {
            report.fence_refusals.push(format!("{id}: {e}"));
        }
        checker.exit();

        let rid = format!("r{n}");
        send(
            &js,
            &session,
            protocol::Op::Release,
            &rid,
            serde_json::json!({"v": 1, "id": rid, "key": name, "token": token}),
        )
        .await;
        report.sent.push((rid.clone(), "release", Instant::now()));
        if *killed.borrow() {
            report.sent_after_kill += 1;
        }
        match final_answer(&mut answers, &rid).await {
            None => {
                report.unanswered.push(rid);
                break;
            }
            Some(Answer::Released { .. }) => {}
            Some(other) => {
                report.unexpected.push(format!("{rid}: {other:?}"));
                break;
            }
        }
    }
    hb.abort();
    report.heartbeat_refused = refused.load(Ordering::SeqCst);
    report
}

// ---- test 1: failover under load --------------------------------------------

const TASKS: usize = 8;
const ITERATIONS: u64 = 120;
/// Total Rust grants after which coordinator c1 is killed.
const KILL_AT: u64 = 300;
/// Most holds are short; every fourth is long, so that a hold is often live
/// when the kill and the takeover happen.
fn hold(i: u64) -> Duration {
    Duration::from_millis(if i % 4 == 3 { 25 } else { 3 })
}
/// The load reaches KILL_AT grants in 2-8 s; far longer means it stalled.
const STALL: Duration = Duration::from_secs(30);

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[derive(Default, Debug)]
struct TaskReport {
    grants: u64,
    acquire_errors: Vec<String>,
    release_errors: Vec<(Instant, Instant, String)>,
    fence_refusals: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_coordinators_answers_every_request_once_without_overlap() {
    let _serial = one_at_a_time().await;
    let mut run = Failover::set_up().await;
    let load = run.start_load().await;
    let kill = run.kill_c1_mid_load(&load).await;
    let drained = run.drain(load).await;
    let judged = run.judge(&kill, &drained);
    run.check(&kill, &drained, &judged);
}

/// The failover test's run: two coordinators on a 3-node cluster, the
/// names each owns, and what the load recorded on them. One method per
/// phase: [`Failover::set_up`], [`Failover::start_load`],
/// [`Failover::kill_c1_mid_load`], [`Failover::drain`], [`Failover::judge`],
/// [`Failover::check`].
struct Failover {
    // Dropped in this order: the coordinators before the cluster.
    c1: Serving,
    /// Serves until the end; only c1 is killed.
    _c2: Serving,
    wire: WireLog,
    cluster: NatsCluster,
    /// The names c1 owns (the one that is killed).
    of_c1: Vec<String>,
    /// c1's names, then c2's; the other fields index by position here.
    names: Vec<String>,
    checkers: Arc<Vec<Arc<ExclusionChecker>>>,
    counters: Arc<Vec<Arc<AtomicU64>>>,
    fence: Arc<Fence>,
    grants_tx: Arc<watch::Sender<u64>>,
    grants_rx: watch::Receiver<u64>,
    killed_tx: watch::Sender<bool>,
    killed_rx: watch::Receiver<bool>,
    /// Each Rust hold: (name index, when it ended).
    grant_log: Arc<Mutex<Vec<(usize, Instant)>>>,
    /// Problems as they happen, for a load that stalls before the end.
    seen: Arc<Mutex<Vec<String>>>,
}

/// The running load: 8 Rust clients and one raw JSON client.
struct Load {
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<TaskReport>>,
    raw: tokio::task::JoinHandle<RawReport>,
    stop_raw: tokio_util::sync::CancellationToken,
}

/// When c1 was killed, and the contention seen before.
struct Kill {
    at: Instant,
    /// `queued` answers before the kill.
    queued_before: usize,
}

/// What the load's clients reported once it ended.
struct Drained {
    reports: Vec<TaskReport>,
    raw: RawReport,
    load_time: Duration,
}

/// What the wire showed after the load: every answer, the requests with
/// conflicting final outcomes, and the raw client's finals by request id.
struct Judged {
    answers: Vec<(Instant, String, Answer)>,
    conflicting: Vec<String>,
    raw_session_finals: HashMap<String, Vec<(Instant, String)>>,
}

/// The first coordinator grant answer on `name` after `killed_at`, from
/// the kill.
fn queued_grant_after(
    answers: &[(Instant, String, Answer)],
    name: &str,
    killed_at: Instant,
) -> Option<Duration> {
    answers
        .iter()
        .filter(|(at, _, a)| {
            *at > killed_at && matches!(a, Answer::Granted { key, waiters: _, .. } if key == name)
        })
        .map(|(at, _, _)| at.duration_since(killed_at))
        .min()
}

impl Failover {
    /// The cluster, the bucket, the wire monitor, coordinators c1 and c2
    /// seeing each other, and two names owned by each.
    async fn set_up() -> Failover {
        let cluster = cluster().await;
        let serve_url = cluster.url_as(Role::Coordinator);
        setup_bucket(&cluster).await;
        let wire = WireLog::start(&cluster).await;

        let c1 = start_coordinator(&serve_url, "c1");
        let c2 = start_coordinator(&serve_url, "c2");
        wait_for_ring(&cluster, &["c1", "c2"]).await;

        // Two names per coordinator, so the kill moves half of them.
        let (of_c1, of_c2) = split_names("c1", "c2", 2);
        let names: Vec<String> = of_c1.iter().chain(of_c2.iter()).cloned().collect();
        eprintln!("names owned by c1: {of_c1:?}, by c2: {of_c2:?}");
        let checkers: Arc<Vec<Arc<ExclusionChecker>>> = Arc::new(
            names
                .iter()
                .map(|_| Arc::new(ExclusionChecker::default()))
                .collect(),
        );
        let counters: Arc<Vec<Arc<AtomicU64>>> =
            Arc::new(names.iter().map(|_| Arc::new(AtomicU64::new(0))).collect());
        let (grants_tx, grants_rx) = watch::channel(0u64);
        let (killed_tx, killed_rx) = watch::channel(false);
        Failover {
            c1,
            _c2: c2,
            wire,
            cluster,
            of_c1,
            names,
            checkers,
            counters,
            fence: Arc::new(Fence::new()),
            grants_tx: Arc::new(grants_tx),
            grants_rx,
            killed_tx,
            killed_rx,
            grant_log: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// Connects the clients, then starts the raw client and the load tasks.
    async fn start_load(&self) -> Load {
        let url = self.cluster.url_as(Role::Worker);
        // Clients connect before the load starts, so every one sees the
        // coordinators (its first heartbeat is answered).
        let mut clients = Vec::new();
        for t in 0..TASKS {
            let client = worker_client(&url, &format!("task-{t}")).await;
            clients.push(client);
        }

        // The raw JSON client, on a name c1 owns (the one that is killed).
        let stop_raw = tokio_util::sync::CancellationToken::new();
        let raw = tokio::spawn(raw_client(
            self.cluster.url_as(Role::Restricted),
            self.names[0].clone(),
            self.checkers[0].clone(),
            self.fence.clone(),
            self.counters[0].clone(),
            stop_raw.clone(),
            self.killed_rx.clone(),
        ));

        let started = Instant::now();
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(t, client)| self.spawn_task(t, client))
            .collect();
        Load {
            started,
            tasks,
            raw,
            stop_raw,
        }
    }

    /// Load task `t`: [`ITERATIONS`] acquire → fenced update → release
    /// cycles over the names.
    fn spawn_task(&self, t: usize, client: Client) -> tokio::task::JoinHandle<TaskReport> {
        let (names, checkers, counters, fence, grants_tx, grant_log, seen) = (
            self.names.clone(),
            self.checkers.clone(),
            self.counters.clone(),
            self.fence.clone(),
            self.grants_tx.clone(),
            self.grant_log.clone(),
            self.seen.clone(),
        );
        let note = move |what: &str, problem: String| {
            seen.lock().unwrap().push(format!("{what}: {problem}"));
            problem
        };
        tokio::spawn(async move {
            let mut report = TaskReport::default();
            for i in 0..ITERATIONS {
                // Two tasks on each name at any time (plus the raw client
                // on names[0]): holds of 3-25 ms keep the others queued.
                let k = (t + i as usize) % names.len();
                let name = &names[k];
                let guard = match client
                    .lock(name)
                    .ttl(Duration::from_secs(5))
                    .wait(Duration::from_secs(30))
                    .acquire()
                    .await
                {
                    Ok(g) => g,
                    Err(e) => {
                        report.acquire_errors.push(note(
                            "acquire failed",
                            format!("task {t} iteration {i} {name}: {e}"),
                        ));
                        continue;
                    }
                };
                let token = guard.token();
                checkers[k].enter(token);
                // A fenced read-modify-write with the hold in between: an
                // overlapping holder would lose an update.
                let v = counters[k].load(Ordering::SeqCst);
                tokio::time::sleep(hold(i)).await;
                // A refusal leaves the counter short: judged at the end.
                if let Err(e) =
                    fence.admit_with(name, token, || counters[k].store(v + 1, Ordering::SeqCst))
                {
                    report
                        .fence_refusals
                        .push(note("fence refused", format!("task {t} {name}: {e}")));
                }
                checkers[k].exit();
                grant_log.lock().unwrap().push((k, Instant::now()));
                report.grants += 1;
                grants_tx.send_modify(|n| *n += 1);
                let release_sent = Instant::now();
                if let Err(e) = guard.release().await {
                    let e = note(
                        "release failed",
                        format!("task {t} iteration {i} {name}: {e}"),
                    );
                    report
                        .release_errors
                        .push((release_sent, Instant::now(), e));
                }
            }
            report
        })
    }

    /// Mid-way (at [`KILL_AT`] grants): kill -9 c1.
    async fn kill_c1_mid_load(&mut self, load: &Load) -> Kill {
        let mut rx = self.grants_rx.clone();
        if timeout(STALL, rx.wait_for(|n| *n >= KILL_AT))
            .await
            .is_err()
        {
            self.stalled();
        }
        let before_kill = self.wire.answers();
        let queued_before = before_kill
            .iter()
            .filter(|(_, _, a)| matches!(a, Answer::Queued { .. }))
            .count();
        let killed_at = Instant::now();
        self.c1.kill9();
        let _ = self.killed_tx.send(true);
        let grants_at_kill = *self.grants_rx.borrow();
        eprintln!(
            "killed c1 after {:?} of load, at {grants_at_kill} grants ({queued_before} queued answers so far)",
            load.started.elapsed()
        );
        Kill {
            at: killed_at,
            queued_before,
        }
    }

    /// The load never reached [`KILL_AT`] grants: fails with what each
    /// name's checker and the tasks saw so far.
    fn stalled(&self) -> ! {
        let mut why = Vec::new();
        for (k, name) in self.names.iter().enumerate() {
            let checker = self.checkers[k].clone();
            if let Err(e) = std::panic::catch_unwind(move || checker.assert_clean()) {
                why.push(format!("{name}: {}", panic_text(&e)));
            }
        }
        let seen = self.seen.lock().unwrap();
        panic!(
            "the load stalled: {} of {KILL_AT} grants before the kill after {STALL:?}. \
             Holds: {why:?}. {} problems so far, the first: {:#?}",
            *self.grants_rx.borrow(),
            seen.len(),
            &seen[..seen.len().min(10)]
        );
    }

    /// The load goes on to its end; then the raw client stops.
    async fn drain(&self, load: Load) -> Drained {
        let mut reports = Vec::new();
        for task in load.tasks {
            reports.push(
                timeout(Duration::from_secs(120), task)
                    .await
                    .expect("a load task hung")
                    .expect("a load task panicked"),
            );
        }
        let load_time = load.started.elapsed();
        load.stop_raw.cancel();
        let raw = timeout(Duration::from_secs(40), load.raw)
            .await
            .expect("the raw client hung")
            .expect("the raw client panicked");
        // Late duplicates (a takeover repeating answers) would have arrived by
        // now; a short window catches stragglers of the last requests.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Drained {
            reports,
            raw,
            load_time,
        }
    }

    /// Reads the wire: prints the timings around the kill, and groups every
    /// final answer by request.
    fn judge(&self, kill: &Kill, drained: &Drained) -> Judged {
        let answers = self.wire.answers();
        let events = self.wire.events();
        self.print_timings(kill, drained, &answers, &events);

        // Wire level: every (session, request id) has exactly one distinct final
        // outcome; identical repeats (a takeover repeating a grant) are counted.
        let killed_at = kill.at;
        let finals = finals_by_request(&answers);
        let mut repeats = 0usize;
        let mut conflicting = Vec::new();
        let mut repeated = Vec::new();
        for ((session, re), outcomes) in &finals {
            let d = distinct(outcomes);
            repeats += outcomes.len() - d;
            if outcomes.len() > d {
                repeated.push(format!("{session} {re}: {}", timeline(outcomes, killed_at)));
            }
            if d > 1 {
                conflicting.push(format!(
                    "{session} {re}: {} (times from the kill)",
                    timeline(outcomes, killed_at)
                ));
            }
        }
        conflicting.sort();
        repeated.sort();
        for r in &repeated {
            eprintln!("repeated answer (allowed): {r}");
        }
        eprintln!(
            "wire: {} requests answered, {repeats} identical repeated final answers, {} with conflicting outcomes",
            finals.len(),
            conflicting.len()
        );

        // The raw client: every acknowledged request exactly one final outcome.
        let raw = &drained.raw;
        let raw_session_finals: HashMap<String, Vec<(Instant, String)>> = {
            let raw_ids: BTreeSet<&str> = raw.sent.iter().map(|(id, _, _)| id.as_str()).collect();
            finals
                .iter()
                .filter(|((s, re), _)| {
                    s.starts_with("restricted.raw-") && raw_ids.contains(re.as_str())
                })
                .map(|((_, re), o)| (re.clone(), o.clone()))
                .collect()
        };
        let raw_repeats: usize = raw_session_finals
            .values()
            .map(|o| o.len() - distinct(o))
            .sum();
        eprintln!(
            "raw client: {} requests ({} after the kill), {} grants, {raw_repeats} identical repeats; \
             unanswered {:?}, unexpected {:?}, heartbeats refused {}",
            raw.sent.len(),
            raw.sent_after_kill,
            raw.grants,
            raw.unanswered,
            raw.unexpected,
            raw.heartbeat_refused
        );
        Judged {
            answers,
            conflicting,
            raw_session_finals,
        }
    }

    /// Per name: the longest pause between grants, the first grants and
    /// handoffs after the kill; the coordinators' own events; the load's
    /// totals.
    fn print_timings(
        &self,
        kill: &Kill,
        drained: &Drained,
        answers: &[(Instant, String, Answer)],
        events: &[(Instant, String, serde_json::Value)],
    ) {
        let (names, killed_at) = (&self.names, kill.at);
        let grant_log = self.grant_log.lock().unwrap().clone();
        let first_after = |k: usize| {
            grant_log
                .iter()
                .filter(|(key, at)| *key == k && *at > killed_at)
                .map(|(_, at)| at.duration_since(killed_at))
                .min()
        };
        let handoffs_after = |name: &str| {
            events
                .iter()
                .filter(|(at, kind, v)| {
                    *at > killed_at
                        && kind == "lock.granted"
                        && v["key"] == name
                        && v["handoff"] == serde_json::Value::Bool(true)
                })
                .map(|(at, _, _)| at.duration_since(killed_at))
                .collect::<Vec<_>>()
        };
        // The longest pause between two Rust grants on each name, and where.
        let mut max_gap = Duration::ZERO;
        let mut gaps = Vec::new();
        for k in 0..names.len() {
            let mut times: Vec<Instant> = grant_log
                .iter()
                .filter(|(key, _)| *key == k)
                .map(|(_, at)| *at)
                .collect();
            times.sort();
            let gap = times
                .windows(2)
                .map(|w| (w[1] - w[0], w[0]))
                .max()
                .unwrap_or((Duration::ZERO, killed_at));
            max_gap = max_gap.max(gap.0);
            gaps.push(gap);
        }
        for (k, name) in names.iter().enumerate() {
            let owner = if k < 2 { "c1 (killed)" } else { "c2" };
            let h = handoffs_after(name);
            eprintln!(
                "{name} [{owner}]: longest pause between grants {:?} from {} (from the kill); first Rust grant after the kill at +{:?}, first coordinator grant answer at +{:?}, \
                 first coordinator handoff at +{:?} ({} handoffs after the kill), {} holds",
                gaps[k].0,
                rel(gaps[k].1, killed_at),
                first_after(k),
                queued_grant_after(answers, name, killed_at),
                h.first(),
                h.len(),
                self.checkers[k].entries(),
            );
        }
        for (at, kind, v) in events
            .iter()
            .filter(|(_, k, _)| k.starts_with("coordinator."))
        {
            eprintln!(
                "event {kind} at {} (from the kill): {v}",
                rel(*at, killed_at)
            );
        }
        let all_handoffs = events
            .iter()
            .filter(|(_, kind, v)| {
                kind == "lock.granted" && v["handoff"] == serde_json::Value::Bool(true)
            })
            .count();
        let queued_total = answers
            .iter()
            .filter(|(_, _, a)| matches!(a, Answer::Queued { .. }))
            .count();
        eprintln!(
            "load: {} Rust grants + {} raw grants in {:?}; longest gap between grants on one name: {max_gap:?}; \
             {queued_total} queued answers, {all_handoffs} handoffs by a coordinator",
            drained.reports.iter().map(|r| r.grants).sum::<u64>(),
            drained.raw.grants,
            drained.load_time
        );
    }

    /// The assertions. Every violation is listed before the test fails, so
    /// one run shows all.
    fn check(&self, kill: &Kill, drained: &Drained, judged: &Judged) {
        let (names, killed_at) = (&self.names, kill.at);
        let (reports, raw) = (&drained.reports, &drained.raw);
        let mut failures: Vec<String> = Vec::new();
        let mut fail = |what: String| {
            eprintln!("FAILURE: {what}");
            failures.push(what);
        };
        if kill.queued_before == 0 {
            fail(
                "no waiter was ever queued at a coordinator before the kill: no contention".into(),
            );
        }
        let acquire_errors: Vec<&String> = reports.iter().flat_map(|r| &r.acquire_errors).collect();
        if !acquire_errors.is_empty() {
            fail(format!(
                "{} acquires failed: {acquire_errors:#?}",
                acquire_errors.len()
            ));
        }
        let rust_grants = reports.iter().map(|r| r.grants).sum::<u64>();
        if rust_grants != TASKS as u64 * ITERATIONS {
            fail(format!(
                "{rust_grants} Rust grants, want {} (one per iteration)",
                TASKS as u64 * ITERATIONS
            ));
        }
        for (k, name) in names.iter().enumerate() {
            let checker = self.checkers[k].clone();
            if let Err(e) = std::panic::catch_unwind(move || checker.assert_clean()) {
                fail(format!("{name}: {}", panic_text(&e)));
            }
            let (count, holds) = (
                self.counters[k].load(Ordering::SeqCst),
                self.checkers[k].entries(),
            );
            if count != holds {
                fail(format!(
                    "fenced counter of {name} is {count} after {holds} holds: updates were lost or refused"
                ));
            }
        }
        let refusals: Vec<&String> = reports
            .iter()
            .flat_map(|r| &r.fence_refusals)
            .chain(&raw.fence_refusals)
            .collect();
        if !refusals.is_empty() {
            fail(format!(
                "{} grants refused by the fence: {:#?}",
                refusals.len(),
                &refusals[..refusals.len().min(10)]
            ));
        }
        if !raw.unanswered.is_empty() {
            fail(format!("raw requests never answered: {:?}", raw.unanswered));
        }
        if !raw.unexpected.is_empty() {
            fail(format!(
                "raw requests answered unexpectedly: {:?}",
                raw.unexpected
            ));
        }
        if raw.sent_after_kill == 0 {
            fail("the raw client sent nothing after the kill".into());
        }
        for (id, kind, sent) in &raw.sent {
            match judged.raw_session_finals.get(id) {
                Some(outcomes) if distinct(outcomes) == 1 => {}
                Some(outcomes) => fail(format!(
                    "raw {kind} {id} (sent at {}): final answers {} (times from the kill; want exactly one outcome)",
                    rel(*sent, killed_at),
                    timeline(outcomes, killed_at)
                )),
                None => fail(format!("raw {kind} {id}: no final answer on the wire")),
            }
        }
        let conflicting = &judged.conflicting;
        if !conflicting.is_empty() {
            fail(format!(
                "{} requests with conflicting final answers: {:#?}",
                conflicting.len(),
                &conflicting[..conflicting.len().min(10)]
            ));
        }
        let release_errors: Vec<String> = reports
            .iter()
            .flat_map(|r| &r.release_errors)
            .map(|(sent, failed, e)| {
                format!(
                    "{e} (release began at {}, failed at {} from the kill)",
                    rel(*sent, killed_at),
                    rel(*failed, killed_at)
                )
            })
            .collect();
        if !release_errors.is_empty() {
            fail(format!(
                "{} releases failed: {:#?}",
                release_errors.len(),
                &release_errors[..release_errors.len().min(10)]
            ));
        }
        for name in &self.of_c1 {
            if queued_grant_after(&judged.answers, name, killed_at).is_none() {
                fail(format!(
                    "no coordinator granted a queued waiter on {name} (c1's) after the kill"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

// ---- test 2: restart recovery -------------------------------------------------

/// `name` is still held by `client`'s session under the same grant.
async fn assert_still_held(client: &Client, name: &str, token: FencingToken, when: &str) {
    let held = client
        .holder(name)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("{name} not held {when}"));
    assert_eq!(
        held.session,
        client.session(),
        "held by the first client {when}"
    );
    assert_eq!(held.token, token, "the hold was not re-granted {when}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_keeps_holds_and_grants_the_waiter_queued_before() {
    const NAME: &str = "account:restart";
    let _serial = one_at_a_time().await;
    let cluster = cluster().await;
    let serve_url = cluster.url_as(Role::Coordinator);
    let url = cluster.url_as(Role::Worker);
    setup_bucket(&cluster).await;
    let wire = WireLog::start(&cluster).await;
    let mut coordinator = start_coordinator(&serve_url, "r1");

    let holder = worker_options()
        .name("holder")
        .connect(&url)
        .await
        .expect("client");
    let waiter = worker_options()
        .name("waiter")
        .connect(&url)
        .await
        .expect("client");
    let first = holder
        .lock(NAME)
        .ttl(Duration::from_secs(5))
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .expect("the holder takes the lock");
    let first_token = first.token();

    let waiting = {
        let waiter: Client = waiter.clone();
        tokio::spawn(async move {
            let r = waiter
                .lock(NAME)
                .ttl(Duration::from_secs(5))
                .wait(Duration::from_secs(60))
                .acquire()
                .await;
            (r, Instant::now())
        })
    };
    // The waiter's first answer from the coordinator must be `queued`.
    let session = waiter.session().to_owned();
    let first_answer = wire
        .wait_answer(Duration::from_secs(20), |s, a| {
            s == session && a.re().is_some()
        })
        .await
        .expect("the coordinator answered the waiter's acquire");
    assert!(
        matches!(first_answer, Answer::Queued { .. }),
        "the waiter's acquire was answered {first_answer:?} while {NAME} is held by the holder \
         (token {first_token}); want `queued`"
    );
    assert!(!waiting.is_finished(), "the waiter still waits");

    coordinator.kill9();
    let killed_at = Instant::now();
    assert_still_held(&holder, NAME, first_token, "after the kill").await;

    let restarted = start_coordinator(&serve_url, "r1");
    let restart_took = killed_at.elapsed();
    assert_still_held(&holder, NAME, first_token, "after the restart").await;
    assert!(!first.is_lost(), "the holder's guard saw no loss");
    assert!(
        !waiting.is_finished(),
        "the waiter was not granted while the lock is held"
    );

    let released_at = Instant::now();
    first.release().await.expect("the holder releases");
    let (granted, at) = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiter queued before the restart is granted after it")
        .expect("waiter task");
    let second = granted.expect("the waiter is granted");
    assert!(
        second.token() > first_token,
        "the waiter's token {} is above the holder's {}",
        second.token(),
        first_token
    );
    let held = waiter.holder(NAME).await.expect("read").expect("held");
    assert_eq!(held.session, waiter.session());
    eprintln!(
        "restart: new coordinator ready {restart_took:?} after the kill; waiter granted {:?} after the release \
         (tokens {first_token} → {})",
        at.duration_since(released_at),
        second.token()
    );
    second.release().await.expect("release");
    drop(restarted);
}
