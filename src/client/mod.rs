//! The Rust client: connect, lock, hold, release.
//!
//! - `mod.rs` — [`Client`] and [`ClientOptions`] (connection, session,
//!   defaults, the per-session tables);
//! - `acquire.rs` — [`LockRequest`]: the CAS fast path, the read, and the
//!   watch-and-retry wait;
//! - `guard.rs` — [`LockGuard`]: a held lease, the
//!   loss signal, reentrant holds and release;
//! - `multi.rs` — [`MultiLockRequest`]: several keys in a global order;
//! - `renewer.rs` — one lease renewer per client for all its holds.

mod acquire;
mod guard;
mod multi;
mod queue;
mod renewer;
mod session;

pub use acquire::{unix_ms, LockRequest};
pub use guard::LockGuard;
pub use multi::{MultiLockGuard, MultiLockRequest};

use crate::bucket::{self, BucketSpec, DEFAULT_BUCKET, DEFAULT_MARKER_TTL};
use crate::error::{ConnectError, Holder, LockError};
use crate::name::LockName;
use crate::store::{Current, LockStore};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Default lease of a lock; it is renewed every third of it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest lease: `Nats-TTL` counts whole seconds.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease accepted.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default session timeout (see [`ClientOptions::session_timeout`]).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_millis(900);
/// How many release revisions the client remembers to make re-acquiring a
/// recently released name one round trip.
const MAX_HINTS: usize = 65_536;

/// Options of a [`Client`], builder style.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    name: String,
    bucket: String,
    default_ttl: Duration,
    marker_ttl: Duration,
    create_bucket: Option<usize>,
    session_timeout: Duration,
    queue: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: format!("jetlock-{}", std::process::id()),
            bucket: DEFAULT_BUCKET.to_owned(),
            default_ttl: DEFAULT_TTL,
            marker_ttl: DEFAULT_MARKER_TTL,
            create_bucket: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            queue: true,
        }
    }
}

impl ClientOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Who this client is, for operators: default owner ids are
    /// `<name>#<n>`, and the NATS connection is named after it.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The locks bucket (default `JETLOCK_LOCKS`).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// The lease of locks that do not set one (default 10 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Create the bucket with `replicas` replicas if it does not exist
    /// (development; production creates it with `jetlock setup`).
    pub fn create_bucket(mut self, replicas: usize) -> Self {
        self.create_bucket = Some(replicas);
        self
    }

    /// After how long without heartbeats the coordinators declare this
    /// session dead and move its locks on (default 900 ms; heartbeats go out
    /// every quarter of it). Longer tolerates longer stalls of this process;
    /// shorter hands a hung holder's locks on sooner.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Whether a contended acquire joins the coordinator's FIFO queue when a
    /// coordinator runs (default true). With `false`, or with no coordinator
    /// answering, waiters watch the key and race for it on release: safe,
    /// but not in arrival order.
    pub fn queue(mut self, queue: bool) -> Self {
        self.queue = queue;
        self
    }

    /// Connects to NATS at `url` (comma-separated for several servers).
    pub async fn connect(self, url: &str) -> Result<Client, ConnectError> {
        let nats = async_nats::ConnectOptions::new()
            .name(&self.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(server_list(url))
            .await
            .map_err(|source| ConnectError::Nats {
                url: url.to_owned(),
                source,
            })?;
        self.with_nats(nats).await
    }

    /// Uses an existing NATS connection.
    pub async fn with_nats(self, nats: async_nats::Client) -> Result<Client, ConnectError> {
        let js = async_nats::jetstream::new(nats.clone());
        let kv = match self.create_bucket {
            Some(replicas) => {
                let mut spec = BucketSpec::new(&self.bucket, replicas);
                spec.marker_ttl = self.marker_ttl;
                bucket::ensure_bucket(&js, &spec).await?
            }
            None => bucket::open_bucket(&js, &self.bucket).await?,
        };
        let store = LockStore::new(js.clone(), kv)
            .await
            .map_err(ConnectError::Stream)?;
        let session = nuid::next().to_string();
        let (link, settled) = session::SessionLink::new(session.clone(), self.session_timeout);
        let inner = Arc::new(Inner {
            session,
            nats: nats.clone(),
            js,
            store,
            options: self,
            next_owner: AtomicU64::new(1),
            holds: DashMap::new(),
            hints: DashMap::new(),
            renewer: renewer::Renewer::start(),
            link: link.clone(),
        });
        session::SessionLink::start(&link, Arc::downgrade(&inner), nats)
            .await
            .map_err(|e| ConnectError::Stream(e.into()))?;
        // The first heartbeat tells whether a coordinator runs: answered in
        // a round trip, or refused at once when nobody listens.
        let _ = tokio::time::timeout(Duration::from_millis(500), settled).await;
        Ok(Client { inner })
    }
}

/// A session with the lock service. Cheap to clone; clones share the
/// session, its reentrant holds and its connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) nats: async_nats::Client,
    pub(crate) store: LockStore,
    pub(crate) session: String,
    pub(crate) options: ClientOptions,
    next_owner: AtomicU64,
    /// Live holds by (key, owner), for reentrant acquisition.
    pub(crate) holds: DashMap<(String, String), Weak<guard::Hold>>,
    /// Revision of the last release marker this session wrote per key: the
    /// CAS precondition of the next grant, so re-acquiring is one round trip.
    hints: DashMap<String, u64>,
    /// Renews every hold of this session.
    pub(crate) renewer: Arc<renewer::Renewer>,
    pub(crate) js: async_nats::jetstream::Context,
    /// Heartbeats, answers and notices from the coordinators.
    pub(crate) link: Arc<session::SessionLink>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last client handle and last hold are gone.
        self.renewer.stop();
        self.link.stop();
    }
}

impl Inner {
    pub(crate) fn default_owner(&self) -> String {
        let n = self.next_owner.fetch_add(1, Ordering::Relaxed);
        format!("{}#{n}", self.options.name)
    }

    /// Whether contended acquires should join a coordinator's queue.
    pub(crate) fn queued(&self) -> bool {
        self.options.queue && self.link.coordinated()
    }

    /// Releases `token` through the coordinator, which hands the lock to
    /// the next waiter. `Ok(false)`: the lock was no longer ours.
    pub(crate) async fn release_via_coordinator(
        &self,
        name: &LockName,
        token: u64,
    ) -> Result<bool, async_nats::Error> {
        use crate::protocol::{Answer, ErrorCode, Op, ReleaseBody, VERSION};
        let id = nuid::next().to_string();
        let answer = self.link.expect(&id);
        let body = serde_json::to_vec(&ReleaseBody {
            v: VERSION,
            id: id.clone(),
            key: name.as_str().to_owned(),
            token,
        })?;
        if let Err(e) = self.link.send(&self.js, Op::Release, &id, body).await {
            self.link.abandon(&id);
            return Err(e);
        }
        let answer = tokio::time::timeout(session::ANSWER_GRACE, answer).await;
        self.link.abandon(&id);
        match answer {
            Ok(Ok(Answer::Released { .. })) => Ok(true),
            Ok(Ok(Answer::Error {
                code: ErrorCode::NotHolder | ErrorCode::StaleToken,
                ..
            })) => Ok(false),
            Ok(Ok(other)) => Err(format!("unexpected answer to a release: {other:?}").into()),
            Ok(Err(_)) => Err("the session link stopped".into()),
            Err(_) => Err("no coordinator answered the release".into()),
        }
    }

    pub(crate) fn take_hint(&self, key: &str) -> u64 {
        self.hints.remove(key).map(|(_, rev)| rev).unwrap_or(0)
    }

    pub(crate) fn remember_release(&self, key: &str, revision: u64) {
        if self.hints.len() >= MAX_HINTS {
            // Hints only save a round trip; dropping them all is safe.
            self.hints.clear();
        }
        self.hints.insert(key.to_owned(), revision);
    }
}

impl Client {
    /// Connects with default options.
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        ClientOptions::new().connect(url).await
    }

    /// Starts building an acquisition of the lock `name`.
    pub fn lock(&self, name: &str) -> LockRequest {
        LockRequest::new(self.inner.clone(), LockName::new(name))
    }

    /// Starts building an acquisition of several locks at once (both
    /// accounts of a transfer), taken in one global order so that two
    /// requests for overlapping sets never deadlock.
    pub fn lock_all<I, S>(&self, names: I) -> MultiLockRequest
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        MultiLockRequest::new(
            self.inner.clone(),
            names
                .into_iter()
                .map(|n| LockName::new(n.as_ref()))
                .collect(),
        )
    }

    /// Who holds `name` right now, if anyone (a read: a snapshot, never a
    /// basis for a decision).
    pub async fn holder(&self, name: &str) -> Result<Option<Holder>, LockError> {
        let name = LockName::new(name)?;
        match self.inner.store.read(&name).await {
            Ok(Current::Vacant { .. }) => Ok(None),
            Ok(Current::Held { revision, record }) => {
                Ok(Some(Holder::from_record(record, revision)))
            }
            Err(e) => Err(acquire::read_error(&name, e)),
        }
    }

    /// This client's session id (written into every record it holds).
    pub fn session(&self) -> &str {
        &self.inner.session
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.inner.nats
    }

    /// The CAS layer, for tools and benchmarks that work on the bucket.
    pub fn store(&self) -> &LockStore {
        &self.inner.store
    }
}

/// Splits a comma-separated server list (`nats://a:4222,nats://b:4222`),
/// which async-nats itself takes only as a list.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration, LockError> {
    if ttl < MIN_TTL {
        return Err(LockError::InvalidTtl {
            ttl,
            reason: "leases are at least 1 s (the server's TTL resolution)",
        });
    }
    if ttl > MAX_TTL {
        return Err(LockError::InvalidTtl {
            ttl,
            reason: "leases are at most 24 h",
        });
    }
    // The server counts whole seconds; use the rounded lease everywhere so
    // the local deadline never outlives the server's.
    Ok(Duration::from_secs(crate::store::whole_seconds(ttl)))
}
