//! Users and subject permissions, on a 3-node cluster from the real
//! `nats/cluster.conf` (passwords generated per run, passed to the servers
//! in the environment) with a coordinator logged in as `coordinator`:
//!
//! - a restricted (protocol-only) worker takes, waits for, renews,
//!   re-enters and releases locks through the coordinator, told to or
//!   finding out by itself, and NATS refuses it writing the bucket,
//!   reading another session's answers, sending as another session and
//!   revoking;
//! - a trusted worker takes, renews and releases with its own CAS writes
//!   (no stored request), and falls back to the coordinator when its bucket
//!   writes are forbidden while it runs;
//! - an operator revokes a lock (the holder's `lost()` fires); a worker
//!   cannot;
//! - connections without credentials or with wrong ones are refused.
//!
//! "Went through the coordinator" is judged by the request stream's last
//! sequence (every request is stored there); "NATS refused" by the
//! permissions error the server sends on the connection.

mod common;
#[path = "auth/credentials.rs"]
mod credentials;
#[path = "auth/kinds.rs"]
mod kinds;
#[path = "auth/operator.rs"]
mod operator;

use common::json::JsonSession;
use common::{cluster, PATIENCE};
use futures::StreamExt;
use jetlock::connect::{Auth, Login};
use jetlock::protocol;
use jetlock::store::{Current, LockStore};
use jetlock::{Client, ClientOptions, ConnectError, LockError, LockName, LostReason};
use jetlock_coordinator::{Coordinator, CoordinatorConfig, EngineConfig};
use jetlock_testkit::server::{NatsCluster, Role};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

// ---- harness ----------------------------------------------------------------

/// The permissions errors one connection got from the server.
#[derive(Clone, Default)]
struct Refusals {
    seen: Arc<Mutex<Vec<String>>>,
    arrived: Arc<Notify>,
}

impl Refusals {
    fn options(&self) -> async_nats::ConnectOptions {
        let me = self.clone();
        async_nats::ConnectOptions::new().event_callback(move |event| {
            let me = me.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = event
                {
                    if text.starts_with("Permissions Violation") {
                        me.seen.lock().unwrap().push(text);
                        me.arrived.notify_waiters();
                    }
                }
            }
        })
    }

    fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the server refused `what` (`Publish` or `Subscription`)
    /// on `subject`.
    async fn wait_for(&self, what: &str, subject: &str) {
        let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
        let found = timeout(Duration::from_secs(10), async {
            loop {
                let arrived = self.arrived.notified();
                if self.all().contains(&wanted) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "the server did not refuse: {wanted}\nrefusals seen: {:?}",
            self.all()
        );
    }
}

/// A plain connection as `role` whose permissions errors are recorded.
async fn connect_as(cluster: &NatsCluster, role: Role) -> (async_nats::Client, Refusals) {
    connect_member_as(cluster, None, role).await
}

/// [`connect_as`], to member `member` only when given.
async fn connect_member_as(
    cluster: &NatsCluster,
    member: Option<usize>,
    role: Role,
) -> (async_nats::Client, Refusals) {
    let refusals = Refusals::default();
    let url = match member {
        Some(i) => cluster.member_url_as(i, role),
        None => cluster.url_as(role),
    };
    let nats = common::nats_with(&url, role, refusals.options()).await;
    (nats, refusals)
}

/// [`connect_member_as`] right after a config reload: a server applying the
/// new config may refuse a login for a moment (seen in a fresh-clone CI
/// run), so the login is retried until accepted.
async fn connect_member_after_reload(
    cluster: &NatsCluster,
    member: usize,
    role: Role,
) -> (async_nats::Client, Refusals) {
    let url = cluster.member_url_as(member, role);
    timeout(PATIENCE, async {
        loop {
            let refusals = Refusals::default();
            match common::try_nats_with(&url, role, refusals.options()).await {
                Ok(nats) => return (nats, refusals),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the member accepts the login after the reload")
}

/// Runs the `jetlock` command logged in as `role` (the password in
/// JETLOCK_PASSWORD, not on the command line).
fn jetlock_as(cluster: &NatsCluster, role: Role, args: &[&str]) -> std::process::Output {
    let login = cluster.login(role);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jetlock"));
    cmd.args(args)
        .env("JETLOCK_URL", cluster.url())
        .env("JETLOCK_USER", login.user())
        .env("JETLOCK_PASSWORD", login.password())
        .env_remove("JETLOCK_BUCKET");
    cmd.output().expect("run jetlock")
}

/// A cluster, the R3 bucket and request stream, and a coordinator (in this
/// process) logged in as `coordinator`, whose permissions errors are kept:
/// every test ends by checking there were none.
struct Deployment {
    cluster: NatsCluster,
    coordinator: Option<Coordinator>,
    coordinator_refusals: Refusals,
    /// The operator's view of the bucket and the request stream.
    operator: async_nats::jetstream::Context,
}

impl Deployment {
    async fn start() -> Deployment {
        let cluster = cluster().await;
        // The bucket, as docker-compose creates it: `jetlock setup` logged
        // in as the coordinator through JETLOCK_USER and JETLOCK_PASSWORD.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = jetlock_as(&cluster, Role::Coordinator, &["setup", "--replicas", "3"]);
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(Instant::now() < deadline, "jetlock setup: {err}");
            eprintln!("jetlock setup failed ({err}); retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (nats, coordinator_refusals) = connect_as(&cluster, Role::Coordinator).await;
        let config = CoordinatorConfig {
            id: "auth-c1".into(),
            replicas: 3,
            engine: EngineConfig {
                preempt_grace: PREEMPT_GRACE,
                ..EngineConfig::default()
            },
            ..CoordinatorConfig::default()
        };
        // A fresh cluster may answer "temporarily unavailable" for a moment.
        let deadline = Instant::now() + PATIENCE;
        let coordinator = loop {
            match Coordinator::start(nats.clone(), config.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("coordinator not started yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("coordinator: {e}"),
            }
        };
        let (operator, _) = connect_as(&cluster, Role::Operator).await;
        Deployment {
            cluster,
            coordinator: Some(coordinator),
            coordinator_refusals,
            operator: async_nats::jetstream::new(operator),
        }
    }

    /// A lock client as `role` (its session prefix is its user name).
    fn options(&self, role: Role) -> ClientOptions {
        ClientOptions::new()
            .name(format!("auth-{}", role.user()))
            .session_prefix(role.user())
    }

    async fn client(&self, role: Role, options: ClientOptions) -> Client {
        options
            .connect(&self.cluster.url_as(role))
            .await
            .unwrap_or_else(|e| panic!("{} client: {e}", role.user()))
    }

    /// The request stream's last sequence: it grows by one per request
    /// stored, whoever sent it.
    async fn requests_stored(&self) -> u64 {
        let mut stream = self
            .operator
            .get_stream(protocol::REQUEST_STREAM)
            .await
            .expect("request stream");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
    }

    /// What the bucket holds under `name`, read by the operator.
    async fn current(&self, name: &str) -> Current {
        let kv = jetlock::bucket::open_bucket(&self.operator, jetlock::bucket::DEFAULT_BUCKET)
            .await
            .expect("operator opens the bucket");
        let store = LockStore::new(self.operator.clone(), kv)
            .await
            .expect("store");
        store
            .read(&LockName::new(name).unwrap())
            .await
            .expect("operator reads the bucket")
    }

    /// Stops the coordinator and checks it was refused nothing.
    async fn finish(mut self) {
        if let Some(c) = self.coordinator.take() {
            c.shutdown().await;
        }
        assert_eq!(
            self.coordinator_refusals.all(),
            Vec::<String>::new(),
            "the coordinator user lacks permissions"
        );
    }
}

/// Runs the tests of this file two at a time, each on a 3-node cluster of
/// its own. Most of their time is waiting (holds kept past two leases, a
/// refused read's request timeout, a reload), so two of them share two
/// cores well; more at once, on a machine with more test threads, could
/// slow renewals past their window.
async fn two_at_a_time() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// The lease of the tests' locks. These tests are about permissions, not
/// latency: a renewal is one or two replicated writes fsynced on every node
/// (`sync_interval: always`, three nodes sharing one disk and two cores) and
/// must land within two thirds of the lease. With 1 s and then 2 s leases,
/// loaded runs (a fresh-clone CI included) lost a hold to a slow renewal;
/// 4 s leaves room. Renewal latency is measured by `jetlock bench`.
const TTL: Duration = Duration::from_secs(4);
/// How long holds are kept to show renewals work: past two leases.
const HOLD: Duration = Duration::from_millis(9_000);
/// The coordinator's preempt grace (default 5 s): the preempt test waits it
/// out, and only needs the holder to lose the lock after some grace.
const PREEMPT_GRACE: Duration = Duration::from_secs(1);

/// The bucket subjects the servers refused the connection named `client`,
/// from their logs ([`common::violations`]).
fn refused_bucket_writes(cluster: &NatsCluster, client: &str) -> Vec<String> {
    let named = format!(":rust:{client}\" ");
    common::violations(cluster)
        .iter()
        .filter(|l| l.contains(&named) && l.contains("Publish Violation"))
        .filter_map(|l| l.split("Subject \"").nth(1))
        .map(|subject| subject.trim_end_matches('"').to_owned())
        .filter(|subject| subject.starts_with("$KV.JETLOCK_LOCKS."))
        .collect()
}

fn token_of(current: &Current) -> Option<(String, u64)> {
    match current {
        Current::Held { revision, record } => {
            Some((record.session.clone(), record.token_at(*revision)))
        }
        Current::Vacant { .. } => None,
    }
}

// ---- the restricted worker ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_worker_locks_only_through_the_coordinator() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    const NAME: &str = "account:restricted";

    // Told to skip the fast path, and finding out by itself.
    let told = d
        .client(
            Role::Restricted,
            d.options(Role::Restricted).name("told").fast_path(false),
        )
        .await;
    let found_out = d
        .client(
            Role::Restricted,
            d.options(Role::Restricted).name("found-out"),
        )
        .await;
    assert!(!told.fast_path());
    assert!(
        !found_out.fast_path(),
        "the client did not notice it may not write the bucket"
    );
    assert!(told.session().starts_with("restricted."));

    // Take: one stored request, and the record names the session.
    let before = d.requests_stored().await;
    let first = told
        .lock(NAME)
        .owner("job-1")
        .ttl(TTL)
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .expect("granted through the coordinator");
    assert!(d.requests_stored().await > before, "no request was stored");
    assert_eq!(
        token_of(&d.current(NAME).await),
        Some((told.session().to_owned(), first.token().get()))
    );

    // Wait: the other client queues behind it.
    let waiting = {
        let c = found_out.clone();
        tokio::spawn(async move {
            c.lock(NAME)
                .ttl(TTL)
                .wait(Duration::from_secs(30))
                .acquire()
                .await
        })
    };

    // Renew: after two and a half leases the hold is alive and unchanged,
    // so renewals (coordinator requests: this user cannot write) happened.
    let held_since = Instant::now();
    let again = told
        .lock(NAME)
        .owner("job-1")
        .ttl(TTL)
        .try_acquire()
        .await
        .expect("reentrant acquire by the same owner");
    assert_eq!(again.token(), first.token(), "re-entry keeps the token");
    again.release().await.expect("one of two holds released");
    tokio::time::sleep_until(held_since + HOLD).await;
    assert!(!first.is_lost(), "lost: {:?}", first.lost_reason());
    assert_eq!(
        token_of(&d.current(NAME).await),
        Some((told.session().to_owned(), first.token().get())),
        "still held by the first client after two and a half leases"
    );
    assert!(!waiting.is_finished(), "the waiter got in while it is held");
    match found_out.lock(NAME).ttl(TTL).try_acquire().await {
        Err(LockError::Busy { holder, .. }) => {
            assert_eq!(holder.map(|h| h.session), Some(told.session().to_owned()))
        }
        other => panic!("a try-lock on a held lock gave {other:?}"),
    }

    // Release: the waiter is handed the lock.
    let first_token = first.token();
    first
        .release()
        .await
        .expect("released through the coordinator");
    let second = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiter is granted")
        .expect("task")
        .expect("granted");
    assert!(second.token() > first_token);
    assert_eq!(
        token_of(&d.current(NAME).await),
        Some((found_out.session().to_owned(), second.token().get()))
    );
    second.release().await.expect("release");
    assert_eq!(token_of(&d.current(NAME).await), None, "released");

    // What NATS refuses this user, on a plain connection. A lock held by a
    // trusted worker is the target.
    let worker = d.client(Role::Worker, d.options(Role::Worker)).await;
    let target = worker
        .lock(NAME)
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .expect("worker takes it");
    let (nats, refusals) = connect_as(&d.cluster, Role::Restricted).await;
    let js = async_nats::jetstream::new(nats.clone());
    let key = format!("$KV.JETLOCK_LOCKS.{}", LockName::new(NAME).unwrap().key());

    // 1. Writing the bucket: a delete marker would free the worker's lock.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    let _ = js
        .publish_with_headers(key.clone(), headers, "".into())
        .await;
    refusals.wait_for("Publish", &key).await;

    // 2. Reading another session's answers (grants, notices).
    let others = protocol::answer_subject(worker.session());
    let mut stolen = nats.subscribe(others.clone()).await.expect("subscribe");
    refusals.wait_for("Subscription", &others).await;

    // 3. Sending as another session, and 4. revoking, even as itself.
    for (op, session) in [
        (protocol::Op::Release, worker.session().to_owned()),
        (protocol::Op::Revoke, format!("restricted.{}", nuid::next())),
    ] {
        let subject = protocol::request_subject(op, &session);
        let body =
            serde_json::json!({"v": 1, "id": "x1", "key": NAME, "token": target.token().get()});
        let body = if op == protocol::Op::Revoke {
            serde_json::json!({"v": 1, "id": "x1", "key": NAME, "grace_ms": 0})
        } else {
            body
        };
        let _ = nats
            .publish(subject.clone(), serde_json::to_vec(&body).unwrap().into())
            .await;
        refusals.wait_for("Publish", &subject).await;
    }

    // None of it reached anything: the worker's lock is intact, and a
    // message on the worker's answer subject does not reach the refused
    // subscription (a control message sent after it, on a subject this
    // user may read, does arrive).
    let mut own = nats
        .subscribe(protocol::answer_subject("restricted.control"))
        .await
        .unwrap();
    let (coordinator_nats, _) = connect_as(&d.cluster, Role::Coordinator).await;
    coordinator_nats
        .publish(others.clone(), "forged".into())
        .await
        .unwrap();
    coordinator_nats
        .publish(
            protocol::answer_subject("restricted.control"),
            "control".into(),
        )
        .await
        .unwrap();
    coordinator_nats.flush().await.unwrap();
    timeout(Duration::from_secs(10), own.next())
        .await
        .expect("the control message arrives");
    use futures::FutureExt;
    assert!(
        stolen.next().now_or_never().is_none(),
        "another session's answer reached the restricted user"
    );
    assert!(!target.is_lost());
    assert_eq!(
        token_of(&d.current(NAME).await),
        Some((worker.session().to_owned(), target.token().get())),
        "the refused writes and requests changed the lock"
    );
    target
        .release()
        .await
        .expect("the worker still releases it");

    // The servers logged every refused write by client name: the client
    // told to skip the fast path never tried one, the other tried only the
    // probe that cannot land (and so learned it at connect).
    assert_eq!(
        refused_bucket_writes(&d.cluster, "told"),
        Vec::<String>::new()
    );
    assert_eq!(
        refused_bucket_writes(&d.cluster, "found-out"),
        ["$KV.JETLOCK_LOCKS.jetlock.write-probe"]
    );
    d.finish().await;
}

// ---- the trusted worker -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_worker_writes_the_bucket_itself() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    const NAME: &str = "account:trusted";
    let worker = d.client(Role::Worker, d.options(Role::Worker)).await;
    assert!(worker.fast_path());
    assert!(worker.session().starts_with("worker."));

    // Take, renew past two leases, re-enter, release: no stored request.
    let before = d.requests_stored().await;
    let guard = worker
        .lock(NAME)
        .owner("o")
        .ttl(TTL)
        .try_acquire()
        .await
        .expect("free lock");
    let again = worker
        .lock(NAME)
        .owner("o")
        .ttl(TTL)
        .try_acquire()
        .await
        .expect("re-entry");
    tokio::time::sleep(HOLD).await;
    assert!(!guard.is_lost(), "lost: {:?}", guard.lost_reason());
    match d.current(NAME).await {
        Current::Held { revision, record } => {
            assert_eq!(record.session, worker.session());
            assert_eq!(record.holds, 2, "re-entry is counted in the record");
            assert!(revision > guard.token().get(), "renewals rewrote it");
        }
        other => panic!("not held: {other:?}"),
    }
    again.release().await.expect("release one");
    guard.release().await.expect("release");
    assert_eq!(token_of(&d.current(NAME).await), None);
    assert_eq!(
        d.requests_stored().await,
        before,
        "the trusted worker sent requests instead of writing"
    );
    // A handoff to a queued worker: the holder's release goes unstored (the
    // servers log a violation if the worker may not send it), so only the
    // waiter's acquire is stored.
    let waiter = d.client(Role::Worker, d.options(Role::Worker)).await;
    let held = worker.lock(NAME).ttl(TTL).acquire().await.expect("free");
    let before = d.requests_stored().await;
    let waiting = common::queued_acquire(waiter.nats(), &waiter, NAME, TTL, PATIENCE).await;
    common::until("the holder hears somebody waits", || held.contended()).await;
    held.release().await.expect("handed on");
    let next = waiting
        .await
        .expect("task")
        .1
        .expect("the waiter is granted");
    next.release().await.expect("release");
    assert_eq!(
        d.requests_stored().await,
        before + 1,
        "a release was stored"
    );
    let refused = common::violations(&d.cluster);
    assert!(
        !refused.iter().any(|v| v.contains("jetlock.now.")),
        "{refused:?}"
    );

    // Its bucket writes are forbidden while it runs (the config is
    // reloaded without them): the next acquire is refused by NATS, and it
    // carries on through the coordinator.
    let conf = jetlock_testkit::server::CLUSTER_CONF;
    let (head, worker_user) = conf.split_at(conf.find("{ user: worker,").expect("worker user"));
    let without_writes = format!(
        "{head}{}",
        worker_user.replacen("\"$KV.JETLOCK_LOCKS.>\",", "", 1)
    );
    assert_ne!(without_writes, conf);
    d.cluster.reload(&without_writes).expect("reload");
    // Wait until every member applied it: each refuses the worker a write
    // (one that could not land anyway: it expects revision 2^63-1).
    for i in 0..d.cluster.servers().len() {
        let (nats, refusals) = connect_member_after_reload(&d.cluster, i, Role::Worker).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "9223372036854775807");
        timeout(PATIENCE, async {
            while refusals.all().is_empty() {
                let _ = nats
                    .publish_with_headers("$KV.JETLOCK_LOCKS.probe", headers.clone(), "".into())
                    .await;
                let _ = timeout(Duration::from_millis(100), refusals.arrived.notified()).await;
            }
        })
        .await
        .expect("the reload forbids the worker's writes");
    }

    let before = d.requests_stored().await;
    let started = Instant::now();
    let guard = worker
        .lock(NAME)
        .ttl(TTL)
        .wait(Duration::from_secs(20))
        .acquire()
        .await
        .expect("granted through the coordinator after the refusal");
    eprintln!("acquire with a refused write took {:?}", started.elapsed());
    assert!(!worker.fast_path(), "the refusal turned the fast path off");
    assert!(d.requests_stored().await > before);
    tokio::time::sleep(HOLD).await;
    assert!(
        !guard.is_lost(),
        "renewals through the coordinator: {:?}",
        guard.lost_reason()
    );
    guard
        .release()
        .await
        .expect("release through the coordinator");
    assert_eq!(token_of(&d.current(NAME).await), None);
    d.finish().await;
}
