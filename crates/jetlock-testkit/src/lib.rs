//! Shared harness for the integration tests: real nats-server processes
//! (from the configs in `nats/`, on free loopback ports, in temp dirs that
//! are removed on drop, even when a test panics) and clients bound to them.
//!
//! The cluster (`nats/cluster.conf`) refuses anonymous connections: each
//! connection logs in as one of its users ([`Role`]). `jetlock serve` and
//! bucket setup as the coordinator, lock clients as the trusted worker
//! (session prefix `worker`), monitors and probes as the operator.
//!
//! - [`server`] — nats-server child processes (also `jetlock dev` and the
//!   demo's embedded server);
//! - [`json`] — a session speaking the JSON protocol, as another
//!   language's client would;
//! - [`history`], [`belief`] — recording what clients did and believed,
//!   and judging it (exclusion, fencing, the session contract);
//! - this module — servers, connections, clients and a coordinator for a
//!   test, and [`ExclusionChecker`].

pub mod belief;
pub mod history;
pub mod json;
pub mod server;

pub use server::{wait_for_jetstream, NatsCluster, NatsServer, Role};

use jetlock::{Client, ClientOptions, FencingToken};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bound for anything a test waits on; a hang fails instead of
/// blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JETLOCK_TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A single JetStream node from `nats/dev.conf`.
pub fn single() -> NatsServer {
    init_tracing();
    NatsServer::start_single(None).expect("start nats-server (run `bash nats/install.sh`)")
}

/// A 3-node cluster from `nats/cluster.conf`, with JetStream up.
pub async fn cluster() -> NatsCluster {
    init_tracing();
    with_jetstream(NatsCluster::start(3).expect("start 3-node cluster")).await
}

/// Waits (up to [`PATIENCE`]) until `cluster` has elected its JetStream
/// meta leader.
pub async fn with_jetstream(cluster: NatsCluster) -> NatsCluster {
    let nats = nats_as(&cluster.url_as(Role::Operator), Role::Operator).await;
    wait_for_jetstream(&nats, PATIENCE)
        .await
        .expect("JetStream meta leader");
    cluster
}

/// A plain NATS connection to `url` (credentials in it) as `role`: the
/// worker roles get the inbox prefix their permissions allow.
pub async fn nats_as(url: &str, role: Role) -> async_nats::Client {
    nats_with(url, role, async_nats::ConnectOptions::new()).await
}

/// [`nats_as`] with `options`.
pub async fn nats_with(
    url: &str,
    role: Role,
    options: async_nats::ConnectOptions,
) -> async_nats::Client {
    try_nats_with(url, role, options)
        .await
        .unwrap_or_else(|e| panic!("connect as {}: {e}", role.user()))
}

/// [`nats_with`], returning a refused login instead of panicking.
pub async fn try_nats_with(
    url: &str,
    role: Role,
    mut options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, jetlock::ConnectError> {
    if let Some(prefix) = role.session_prefix() {
        options = options.custom_inbox_prefix(format!("_INBOX.{prefix}"));
    }
    jetlock::connect::nats(url, &jetlock::connect::Auth::default(), options).await
}

/// Client options of the trusted worker role: its session prefix.
pub fn worker_options() -> ClientOptions {
    ClientOptions::new().session_prefix(Role::Worker.user())
}

/// A client named `name` logged in as the trusted worker (`url` carries the
/// credentials); it must be on the fast path, as its permissions allow.
pub async fn worker_client(url: &str, name: &str) -> Client {
    let client = worker_options()
        .name(name)
        .connect(url)
        .await
        .expect("client");
    assert!(client.fast_path(), "a trusted worker writes the bucket");
    client
}

/// Creates the locks bucket with 3 replicas, as the coordinator (what
/// `jetlock setup` does). A cluster that just elected its meta leader may
/// still answer "JetStream system temporarily unavailable" for a moment:
/// retried, up to a bound.
pub async fn setup_bucket(cluster: &NatsCluster) {
    setup_partitioned(cluster, jetlock::shards::DEFAULT_PARTITIONS).await;
}

/// [`setup_bucket`] for a deployment whose requests are split into
/// `partitions` (`jetlock setup --partitions`; 1: not split, as a
/// deployment made before partitions).
pub async fn setup_partitioned(cluster: &NatsCluster, partitions: u32) {
    let nats = nats_as(&cluster.url_as(Role::Coordinator), Role::Coordinator).await;
    let js = async_nats::jetstream::new(nats);
    let mut spec = jetlock::bucket::BucketSpec::new(jetlock::bucket::DEFAULT_BUCKET, 3);
    spec.partitions = partitions;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match jetlock::bucket::ensure_bucket(&js, &spec).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("bucket not created yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("bucket on the cluster: {e}"),
        }
    }
}

/// Waits until `stream` has a leader and returns its server name (match it
/// to a member with `NatsCluster::index_of`).
pub async fn stream_leader(cluster: &NatsCluster, stream: &str) -> String {
    let nats = nats_as(&cluster.url_as(Role::Operator), Role::Operator).await;
    let js = async_nats::jetstream::new(nats);
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(mut s) = js.get_stream(stream).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        return leader;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the stream has a leader")
}

/// A client on `url` that creates the locks bucket with `replicas`.
pub async fn client(url: &str, replicas: usize) -> Client {
    ClientOptions::new()
        .create_bucket(replicas)
        .connect(url)
        .await
        .expect("connect jetlock client")
}

/// Waits until `condition` holds, checking every 5 ms; panics with `what`
/// after [`PATIENCE`].
pub async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The first lock name `<prefix>:<i>` whose key a deployment of `buckets`
/// buckets keeps in bucket `bucket` (`jetlock::shards`).
pub fn name_in_bucket(bucket: u32, buckets: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|n| {
            let key = jetlock::name::LockName::new(n).expect("a valid name");
            jetlock::shards::bucket_of(key.key(), buckets) == bucket
        })
        .expect("some name routes to every bucket")
}

/// An in-process coordinator on `url`, serving metrics on a free port.
pub async fn coordinator(url: &str) -> jetlock_coordinator::Coordinator {
    use jetlock_coordinator::{Coordinator, CoordinatorConfig};
    let nats = async_nats::connect(url).await.expect("connect");
    let config = CoordinatorConfig {
        metrics_addr: Some("127.0.0.1:0".into()),
        ..CoordinatorConfig::default()
    };
    Coordinator::start(nats, config)
        .await
        .expect("coordinator starts")
}

/// `GET path` of a coordinator's HTTP endpoint over a plain TCP
/// connection: the status code and the whole response (headers too).
/// An error when nothing listens at `addr` (yet).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    Ok((status, response))
}

/// `GET /metrics` of a coordinator over a plain TCP connection.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, response) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{response}");
    response
}

/// Judges a history of exclusive holds on one key: nobody enters while
/// someone is inside, and every grant's token is higher than all before it.
#[derive(Default)]
pub struct ExclusionChecker {
    inside: AtomicBool,
    overlaps: AtomicU64,
    entries: AtomicU64,
    last_token: Mutex<u64>,
    non_increasing: AtomicU64,
}

impl ExclusionChecker {
    pub fn enter(&self, token: FencingToken) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let mut last = self.last_token.lock().unwrap();
        if token.get() <= *last {
            self.non_increasing.fetch_add(1, Ordering::SeqCst);
        }
        *last = token.get();
        self.entries.fetch_add(1, Ordering::SeqCst);
    }

    pub fn exit(&self) {
        self.inside.store(false, Ordering::SeqCst);
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::SeqCst)
    }

    pub fn assert_clean(&self) {
        assert_eq!(self.overlaps.load(Ordering::SeqCst), 0, "overlapping holds");
        assert_eq!(
            self.non_increasing.load(Ordering::SeqCst),
            0,
            "fencing tokens did not strictly increase"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_catches_overlap_and_stale_tokens() {
        // The checker must be able to fail, or the tests built on it prove nothing.
        let c = ExclusionChecker::default();
        c.enter(FencingToken(5));
        c.enter(FencingToken(7)); // second entry while the first is inside
        c.exit();
        c.enter(FencingToken(6)); // lower token than the last grant
        c.exit();
        assert_eq!(c.overlaps.load(Ordering::SeqCst), 1);
        assert_eq!(c.non_increasing.load(Ordering::SeqCst), 1);
    }
}
