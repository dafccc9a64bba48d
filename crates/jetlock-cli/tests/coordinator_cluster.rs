//! Coordinators (`jetlock serve`, as child processes) on a 3-node cluster
//! (`nats/cluster.conf`, R3 bucket and request stream):
//!
//! - kill -9 one of two coordinators during a steady, contended load: every
//!   acquire is answered (no timeouts, no errors), every acknowledged wire
//!   request gets exactly one final outcome, holds never overlap (judged by
//!   fencing tokens and a fenced counter);
//! - restart recovery: a lock held before a coordinator restart stays held,
//!   and a waiter queued before it is granted after it;
//! - locks over three buckets (`buckets.rs`): setup spreads their leaders,
//!   the coordinator serves every bucket, the doctor reports it.
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

#[path = "coordinator_cluster/buckets.rs"]
mod buckets;
mod common;
#[path = "coordinator_cluster/failover.rs"]
mod failover;

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

/// `n` lock names owned (rendezvous hashing of their request partitions
/// over {c1, c2}) by each of the two coordinators: (names of `a`, names of
/// `b`).
fn split_names(a: &str, b: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ring = Ring::new(a.to_owned(), Duration::from_secs(60));
    ring.beat(b, None, Instant::now());
    ring.set_partitions(jetlock::shards::DEFAULT_PARTITIONS);
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for i in 0.. {
        let name = format!("acct:{i}");
        let key = LockName::new(&name).unwrap();
        if ring.owner_of_key(key.key()) == a {
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
