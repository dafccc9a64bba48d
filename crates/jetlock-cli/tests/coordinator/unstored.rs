//! Releases with waiters behind them go unstored (protocol 1.8): the
//! handoff CAS is the owner change's only write, and a client whose
//! unstored release nobody answers still hands the lock on.

use super::*;

/// The last sequence of `stream`.
async fn last_seq(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

/// `holder` holds `name`; `waiter` queues behind it; `holder` releases.
/// Returns how many messages the request stream and the bucket stored
/// from the release to the waiter's grant, and the two tokens.
async fn hand_on(
    watcher: &async_nats::Client,
    holder: &jetlock::Client,
    waiter: &jetlock::Client,
    name: &'static str,
) -> (u64, u64, FencingToken, FencingToken) {
    let js = async_nats::jetstream::new(watcher.clone());
    let bucket = format!("KV_{}", jetlock::bucket::DEFAULT_BUCKET);
    let first = holder.lock(name).acquire().await.unwrap();
    let waiting = queued_acquire(watcher, waiter, name, Duration::from_secs(30), PATIENCE).await;
    common::until("the holder hears somebody waits", || first.contended()).await;
    let requests = last_seq(&js, protocol::REQUEST_STREAM).await;
    let writes = last_seq(&js, &bucket).await;
    let held = first.token();
    first.release().await.unwrap();
    let (_, next) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter is granted")
        .unwrap();
    let next = next.expect("the waiter is granted");
    let stored = (
        last_seq(&js, protocol::REQUEST_STREAM).await - requests,
        last_seq(&js, &bucket).await - writes,
    );
    let token = next.token();
    next.release().await.unwrap();
    (stored.0, stored.1, held, token)
}

/// One server, one coordinator, a holder, a waiter and a plain connection
/// (dropped in this order: the server last).
struct Rig {
    holder: jetlock::Client,
    waiter: jetlock::Client,
    watcher: async_nats::Client,
    _coordinator: jetlock_coordinator::Coordinator,
    _server: common::NatsServer,
}

impl Rig {
    async fn start() -> Rig {
        let server = single();
        let url = server.url();
        Rig {
            _coordinator: coordinator(&url).await,
            holder: client(&url, "holder").await,
            waiter: client(&url, "waiter").await,
            watcher: async_nats::connect(&url).await.unwrap(),
            _server: server,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_a_waiter_is_one_write_and_stores_no_request() {
    let rig = Rig::start().await;
    let (holder, waiter, watcher) = (&rig.holder, &rig.waiter, &rig.watcher);
    let (requests, writes, held, next) = hand_on(watcher, holder, waiter, "unstored").await;
    assert_eq!(requests, 0, "the release was stored in the request stream");
    assert_eq!(writes, 1, "the handoff is the only write on the bucket");
    assert!(next > held);
}

/// A user who may not publish unstored releases (a deployment whose
/// permissions predate them): its first one goes unanswered and is sent
/// again stored; the next releases are stored at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_send_unstored_releases_still_hands_locks_on() {
    let server =
        common::NatsServer::start_denying("older", "jetlock.now.>").expect("start nats-server");
    let login = |user| server.login(user);
    let _c = jetlock_coordinator::Coordinator::start(
        login("admin").await,
        jetlock_coordinator::CoordinatorConfig::default(),
    )
    .await
    .expect("coordinator starts");
    let jetlock_client = |nats| async move {
        jetlock::ClientOptions::new()
            .create_bucket(1)
            .with_nats(nats)
            .await
            .expect("connect jetlock client")
    };
    let holder = jetlock_client(login("older").await).await;
    let waiter = jetlock_client(login("admin").await).await;
    let watcher = login("admin").await;
    // The server refuses each unstored release and logs it.
    let refused = || {
        let log = server.log();
        log.lines()
            .filter(|l| {
                l.contains("Violation") && l.contains("jetlock.now.") && l.contains(".release.")
            })
            .count()
    };
    for round in 1..=2 {
        let (requests, writes, held, next) = hand_on(&watcher, &holder, &waiter, "denied").await;
        assert_eq!(requests, 1, "round {round}: the release is stored");
        assert_eq!(writes, 1, "round {round}: the handoff is the only write");
        assert!(next > held);
        // Only the first release tried unstored.
        assert_eq!(refused(), 1, "round {round}");
    }
}

/// An unstored release the coordinator carried out but whose answer was
/// lost (its coordinator died between the handoff and the answer): the
/// holder's own release then goes unanswered (the coordinator drops an
/// unstored release of a hold that ended) and its stored copy is refused
/// `not_holder`. The hold was not lost by the holder's clock when its
/// release began, so `release()` reports it released, not `Lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_carried_out_whose_answer_was_lost_is_reported_released() {
    let rig = Rig::start().await;
    let (holder, waiter, watcher) = (&rig.holder, &rig.waiter, &rig.watcher);
    let held = holder.lock("answer-lost").acquire().await.unwrap();
    let waiting = queued_acquire(
        watcher,
        waiter,
        "answer-lost",
        Duration::from_secs(30),
        PATIENCE,
    )
    .await;
    common::until("the holder hears somebody waits", || held.contended()).await;
    // The lost-answer release: the holder's own, sent under an id the
    // holder is not waiting on, so its `released` answer is dropped.
    let body = serde_json::to_vec(&protocol::ReleaseBody {
        v: protocol::VERSION,
        id: protocol::new_request_id(),
        key: "answer-lost".into(),
        token: held.token().get(),
    })
    .unwrap();
    watcher
        .publish(
            protocol::unstored_release_subject(holder.session()),
            body.into(),
        )
        .await
        .unwrap();
    let (_, next) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter is granted")
        .unwrap();
    let next = next.expect("the waiter is granted");
    assert!(next.token() > held.token());
    held.release()
        .await
        .expect("a release carried out is not reported lost");
    next.release().await.unwrap();
}
