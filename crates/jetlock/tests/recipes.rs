//! The recipes on the exclusive lock (leader election, cache single-flight)
//! against a real single-node nats-server.

use futures::StreamExt;
use jetlock::async_nats;
use jetlock::{Client, ClientOptions, FencingToken, Filled, SingleFlight, SingleFlightError};
use jetlock_testkit::belief::Mono;
use jetlock_testkit::history::{check, FencedLedger, History};
use jetlock_testkit::{client, coordinator, single, PATIENCE};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::timeout;

/// A client with a 1 s lease, so a dead filler's lock ends soon.
async fn short_lease_client(url: &str) -> Client {
    ClientOptions::new()
        .default_ttl(Duration::from_secs(1))
        .create_bucket(1)
        .connect(url)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_by_belief_and_terms_rise() {
    const CANDIDATES: usize = 6;
    const TERMS: usize = 5;
    let server = single();
    let history = History::new();
    let ledger = FencedLedger::new();
    let key = "election:orders";
    let mut tasks = Vec::new();
    for n in 0..CANDIDATES {
        let c = client(&server.url(), 1).await;
        let (history, ledger) = (history.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let election = c.election("orders").candidate(format!("candidate-{n}"));
            for _ in 0..TERMS {
                let op = history.acquire_invoked(key, c.session());
                let leadership = election.campaign().await.expect("campaign");
                history.granted(op, leadership.term());
                // What a leader does: writes fenced by its term.
                // A few round trips as leader, while the others campaign.
                for _ in 0..3 {
                    ledger.write(key, c.session(), leadership.term());
                    let _ = c.holder("elsewhere").await;
                }
                let op = history.release_invoked(key, c.session(), leadership.term());
                history.deadline(op, Mono::of(leadership.guard().deadline()));
                let resigned = leadership.resign().await;
                history.released(op, resigned.is_ok());
            }
        }));
    }
    for task in tasks {
        timeout(PATIENCE, task)
            .await
            .expect("campaigns end")
            .unwrap();
    }
    let report = check(&history, &ledger, Duration::from_secs(10));
    report.assert_clean();
    assert_eq!(report.grants, (CANDIDATES * TERMS) as u64);
    assert_eq!(ledger.rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_by_a_higher_term_and_observers_see_it() {
    let server = single();
    let url = server.url();
    let _coordinator = coordinator(&url).await;
    let first = client(&url, 1).await;
    let second = client(&url, 1).await;
    let watcher = client(&url, 1).await;
    let history = History::new();
    let key = "election:scheduler";

    let mut changes = watcher.election("scheduler").observe().await.unwrap();
    let seen = timeout(PATIENCE, changes.next()).await.unwrap().unwrap();
    assert_eq!(seen.unwrap(), None, "nobody leads a new election");

    let op = history.acquire_invoked(key, first.session());
    let leader = first
        .election("scheduler")
        .candidate("first")
        .campaign()
        .await
        .unwrap();
    history.granted(op, leader.term());
    let seen = timeout(PATIENCE, changes.next()).await.unwrap().unwrap();
    let seen = seen.unwrap().expect("a leader");
    assert_eq!(
        (seen.candidate.as_str(), seen.term),
        ("first", leader.term())
    );
    assert_eq!(seen.session, first.session());

    let follower = second.clone();
    let (invoked_tx, invoked_rx) = oneshot::channel();
    let campaign = tokio::spawn(async move {
        invoked_tx.send(Mono::now()).unwrap();
        let l = follower
            .election("scheduler")
            .candidate("second")
            .campaign()
            .await;
        (Mono::now(), l)
    });
    let invoked = invoked_rx.await.unwrap();

    // The leader's process dies: its connection closes, nothing resigns.
    first.nats().drain().await.unwrap();
    timeout(PATIENCE, leader.lost())
        .await
        .expect("the leader learns it lost");
    let lost_op = history.lost(key, first.session(), leader.term());
    history.deadline(lost_op, Mono::of(leader.guard().deadline()));

    let (granted_at, next) = timeout(PATIENCE, campaign).await.unwrap().unwrap();
    let next = next.expect("the follower is elected");
    let op = history.acquire_invoked_at(key, second.session(), invoked);
    history.granted_at(op, next.term(), granted_at);
    assert!(next.term() > leader.term(), "terms rise");

    // The observer sees the new term (after a vacancy, or directly).
    let new_leader = timeout(PATIENCE, async {
        loop {
            match changes.next().await.unwrap().unwrap() {
                Some(l) => return l,
                None => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (new_leader.candidate.as_str(), new_leader.term),
        ("second", next.term())
    );
    let now = second.election("scheduler").leader().await.unwrap();
    assert_eq!(now.map(|l| l.term), Some(next.term()));

    next.resign().await.unwrap();
    assert_eq!(
        timeout(PATIENCE, changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        None
    );
    check(&history, &FencedLedger::new(), Duration::from_secs(10)).assert_clean();
}

/// The value a filler writes, and counts of its fills.
fn counted_fill(
    fills: &Arc<AtomicU64>,
    value: &'static str,
) -> impl FnMut() -> std::future::Ready<Result<Vec<u8>, Infallible>> {
    let fills = fills.clone();
    move || {
        fills.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value.as_bytes().to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requesters_on_a_cold_key_fill_once() {
    thousand_requesters_fill_once(false).await;
}

/// The same with the filler's lock waited for in a coordinator's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_queued_requesters_on_a_cold_key_fill_once() {
    thousand_requesters_fill_once(true).await;
}

async fn thousand_requesters_fill_once(queued: bool) {
    const REQUESTERS: usize = 1000;
    const CLIENTS: usize = 8;
    let server = single();
    // Creates the locks bucket (the coordinator needs it).
    drop(client(&server.url(), 1).await);
    let _coordinator = match queued {
        true => Some(coordinator(&server.url()).await),
        false => None,
    };
    let fills = Arc::new(AtomicU64::new(0));
    // The filler finishes only once every other requester waits for its
    // value, so all of them meet the key cold and in flight.
    let (finish, finishing) = tokio::sync::watch::channel(false);
    let mut flights = Vec::new();
    for _ in 0..CLIENTS {
        // A burst of a thousand requests on two cores (a debug build of the
        // coordinator in this process) delays heartbeat answers past the
        // default 900 ms session timeout.
        let c = ClientOptions::new()
            .session_timeout(Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        flights.push(SingleFlight::open(&c).await.unwrap());
    }
    let mut tasks = Vec::new();
    for n in 0..REQUESTERS {
        let flight = flights[n % CLIENTS].clone();
        let (fills, finishing) = (fills.clone(), finishing.clone());
        tasks.push(tokio::spawn(async move {
            let fill = move || {
                fills.fetch_add(1, Ordering::SeqCst);
                let mut finishing = finishing.clone();
                async move {
                    let _ = finishing.wait_for(|go| *go).await;
                    Ok::<_, Infallible>(b"report".to_vec())
                }
            };
            flight
                .run("report:2026-12", Duration::from_secs(60), fill)
                .await
        }));
    }
    // Each waiting requester watches the key with a consumer of its own.
    let js = async_nats::jetstream::new(flights[0].client().nats().clone());
    let mut stream = js.get_stream("KV_JETLOCK_SINGLE_FLIGHT").await.unwrap();
    timeout(PATIENCE, async {
        while stream.info().await.unwrap().state.consumer_count < REQUESTERS - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every requester but the filler waits");
    finish.send_replace(true);
    let filled_at = std::time::Instant::now();
    let mut tokens = std::collections::HashSet::new();
    let mut filled_here = 0;
    for task in tasks {
        let filled = timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
        assert_eq!(filled.value, "report");
        tokens.insert(filled.token);
        filled_here += u64::from(filled.filled_here);
    }
    let fills = fills.load(Ordering::SeqCst);
    println!(
        "{REQUESTERS} requesters over {CLIENTS} clients (queued: {queued}): {fills} fill(s); all had the value {:?} after the fill",
        filled_at.elapsed()
    );
    assert_eq!(fills, 1, "one filler across the cluster");
    assert_eq!(filled_here, 1);
    assert_eq!(tokens.len(), 1, "every requester read the one value");
}

/// A requester of `key` whose fill, when elected, says it started and
/// returns `value` once told to finish.
struct GatedRequester {
    started: oneshot::Receiver<()>,
    finish: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Filled, SingleFlightError<Infallible>>>,
}

async fn gated_requester(
    client: &Client,
    key: &'static str,
    value: &'static str,
) -> GatedRequester {
    let (started_tx, started) = oneshot::channel();
    let (finish, finish_rx) = oneshot::channel::<()>();
    let flight = SingleFlight::open(client).await.unwrap();
    let task = tokio::spawn(async move {
        let (mut started, mut finish) = (Some(started_tx), Some(finish_rx));
        flight
            .run(key, Duration::from_secs(60), move || {
                let _ = started.take().map(|tx| tx.send(()));
                let finish = finish.take();
                async move {
                    if let Some(finish) = finish {
                        let _ = finish.await;
                    }
                    Ok::<_, Infallible>(value.as_bytes().to_vec())
                }
            })
            .await
    });
    GatedRequester {
        started,
        finish,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filler_that_dies_mid_fill_is_replaced_and_waiters_get_a_value() {
    let server = single();
    let url = server.url();
    let doomed = short_lease_client(&url).await;
    // Its fill never finishes: the process dies mid-fill.
    let dying = gated_requester(&doomed, "rates", "never").await;
    timeout(PATIENCE, dying.started).await.unwrap().unwrap();

    let fills = Arc::new(AtomicU64::new(0));
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let c = short_lease_client(&url).await;
        let fill = counted_fill(&fills, "fresh");
        waiters.push(tokio::spawn(async move {
            c.single_flight("rates", Duration::from_secs(60), fill)
                .await
        }));
    }
    // Dies: its connection closes first (so nothing is released), nothing
    // more runs in it, and its lock ends with its lease.
    doomed.nats().drain().await.unwrap();
    dying.task.abort();
    drop(dying.finish);

    for waiter in waiters {
        let filled = timeout(PATIENCE, waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(filled.value, "fresh");
    }
    assert_eq!(fills.load(Ordering::SeqCst), 1, "one replacement filler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fillers_late_write_is_refused() {
    let server = single();
    let url = server.url();
    let stale = client(&url, 1).await;
    let fresh = client(&url, 1).await;

    // The first filler is elected and starts filling...
    let a = gated_requester(&stale, "ledger-summary", "stale").await;
    timeout(PATIENCE, a.started).await.unwrap().unwrap();

    // ...a second requester waits...
    let b = gated_requester(&fresh, "ledger-summary", "fresh").await;

    // ...the first filler's lock is taken from it (as when it paused past
    // its lease), and the waiter is elected and starts filling.
    let js = async_nats::jetstream::new(stale.nats().clone());
    let locks = js.get_key_value("JETLOCK_LOCKS").await.unwrap();
    locks.purge("sf.ledger-summary").await.unwrap();
    timeout(PATIENCE, b.started).await.unwrap().unwrap();

    // The stale filler's value comes first (seen published, whether the
    // stream takes it or not), and is refused: it waits for the fresh
    // one's and returns that.
    let subject = "$KV.JETLOCK_SINGLE_FLIGHT.ledger-summary";
    let mut published = stale.nats().subscribe(subject).await.unwrap();
    stale.nats().flush().await.unwrap();
    a.finish.send(()).unwrap();
    timeout(PATIENCE, async {
        while let Some(m) = published.next().await {
            let kind = m.headers.as_ref().and_then(|h| h.get("Jetlock-Flight"));
            if kind.map(|k| k.as_str()) == Some("value") {
                return;
            }
        }
    })
    .await
    .expect("the stale filler wrote");
    b.finish.send(()).unwrap();
    let from_b = timeout(PATIENCE, b.task).await.unwrap().unwrap().unwrap();
    let from_a = timeout(PATIENCE, a.task).await.unwrap().unwrap().unwrap();
    assert_eq!(from_b.value, "fresh");
    assert!(from_b.filled_here);
    assert_eq!(from_a.value, "fresh", "the stale value never landed");
    assert!(!from_a.filled_here);
    assert_eq!(from_a.token, from_b.token);
    assert!(from_b.token > FencingToken(0));
}
