//! The Rust client: connect, lock, hold, release.
//!
//! - `mod.rs` — [`Client`] and [`ClientOptions`] (connection, session,
//!   defaults, the per-session tables);
//! - `acquire.rs` — [`LockRequest`]: the CAS fast path, the read, and the
//!   watch-and-retry wait;
//! - `attempt.rs` — one acquisition's CAS writes and how long it waits,
//!   shared by the fast path and the queued acquire;
//! - `guard.rs` — [`LockGuard`]: a held lease, the
//!   loss signal, reentrant holds and release;
//! - `multi.rs` — [`MultiLockRequest`]: several keys in a global order;
//! - `atomic.rs` — several keys in one atomic write, or none;
//! - `rwlock.rs`, `semaphore.rs` — read/write locks and semaphores, built
//!   of ordinary locks by the rule in `shared.rs`;
//! - `renewer.rs` — one lease renewer per client for all its holds;
//! - `session.rs` — heartbeats, answers and notices from the coordinators;
//! - `queue.rs` — waiting in a coordinator's FIFO queue;
//! - `fast_path.rs` — whether the client may write the bucket itself, or
//!   goes through the coordinators for everything;
//! - `via_coordinator.rs` — renewals and releases as coordinator requests.

mod acquire;
mod atomic;
mod attempt;
pub mod belief;
mod fast_path;
mod guard;
mod hints;
mod multi;
mod queue;
mod renewer;
mod rwlock;
mod semaphore;
mod session;
mod shared;
mod via_coordinator;
mod watchers;

/// Re-exported from [`crate::connect`], where it lives with the URL handling.
pub use crate::connect::server_list;
pub(crate) use acquire::read_error;
pub use acquire::LockRequest;
pub use guard::LockGuard;
pub use multi::{MultiLockGuard, MultiLockRequest};
pub use rwlock::{RwLockGuard, RwLockRequest, RwMode};
pub use semaphore::{Permit, SemaphoreRequest, MAX_PERMITS};
pub use shared::{HeldAs, PartGuard};

use crate::bucket::{self, BucketSpec, DEFAULT_BUCKET, DEFAULT_MARKER_TTL};
use crate::connect::{Auth, Credentials, Login};
use crate::error::{ConnectError, Holder, LockError};
use crate::name::LockName;
use crate::protocol::ClientInfo;
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
    session_prefix: Option<String>,
    fast_path: bool,
    auth: Auth,
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
            session_prefix: None,
            fast_path: true,
            auth: Auth::default(),
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

    /// Session ids become `<prefix>.<random>` instead of `<random>`, so a
    /// NATS user can be allowed its own sessions' subjects only
    /// (`jetlock.req.*.<prefix>.>`, `jetlock.to.<prefix>.>`, see
    /// `nats/cluster.conf`). 1 to 3 dot-separated tokens of `A-Z a-z 0-9 _ -`
    /// ([`ConnectError::InvalidSessionPrefix`] otherwise). When this client
    /// makes its own connection ([`ClientOptions::connect`]), its inbox
    /// (replies, acks, watch deliveries) is `_INBOX.<prefix>` too: give the
    /// user `_INBOX.<prefix>.>` to subscribe, not `_INBOX.>`. With
    /// [`ClientOptions::with_nats`], set that on your connection
    /// (`async_nats::ConnectOptions::custom_inbox_prefix`).
    pub fn session_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.session_prefix = Some(prefix.into());
        self
    }

    /// Whether this client writes the locks bucket itself (default true):
    /// a free lock is one CAS, a renewal or release another. With `false`
    /// every acquire, renewal and release is a request to the coordinators
    /// (a coordinator must run), for NATS users that may not write the
    /// bucket; `queue` is then always on. A client that made its own
    /// connection also turns the fast path off by itself, once, when NATS
    /// refuses its writes to the bucket (see [`Client::fast_path`]).
    pub fn fast_path(mut self, on: bool) -> Self {
        self.fast_path = on;
        self
    }

    /// The NATS user and password to connect as. Without any credentials
    /// set, those in the URL are used (`nats://user:password@host:4222`,
    /// percent-encoded). Like the other credential setters, replaces
    /// credentials set before: a server takes one kind per connection.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth = self
            .auth
            .with_credentials(Credentials::UserPassword(Login::new(user, password)));
        self
    }

    /// Connect with a token (`authorization { token: ... }`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = self.auth.with_credentials(Credentials::Token(token.into()));
        self
    }

    /// Connect as the user whose nkey seed (`SU...`) is in the file at
    /// `path`, read at connect.
    pub fn nkey_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.auth = self
            .auth
            .with_credentials(Credentials::NkeyFile(path.into()));
        self
    }

    /// Connect with the user JWT and nkey seed of the `.creds` file at
    /// `path` (servers in operator mode), read at connect.
    pub fn credentials_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.auth = self
            .auth
            .with_credentials(Credentials::CredsFile(path.into()));
        self
    }

    /// Present this client certificate and key (PEM files) to servers that
    /// verify clients (`tls { verify: true }`). Requires TLS.
    pub fn client_certificate(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.auth = self.auth.client_certificate(cert, key);
        self
    }

    /// Trust servers whose certificates the CA in this PEM file signed.
    /// Requires TLS.
    pub fn root_certificates(mut self, ca: impl Into<std::path::PathBuf>) -> Self {
        self.auth = self.auth.root_certificates(ca);
        self
    }

    /// Refuse to connect without TLS (implied by a client certificate or a
    /// CA, and by `tls://` URLs).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.auth = self.auth.require_tls(required);
        self
    }

    /// All credentials and TLS settings at once, replacing those set before.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Connects to NATS at `url` (comma-separated for several servers).
    /// Servers not up yet are waited for; refused credentials fail at once
    /// ([`ConnectError::NotAuthorized`]), and so does TLS
    /// ([`ConnectError::Tls`]).
    pub async fn connect(self, url: &str) -> Result<Client, ConnectError> {
        let session = self.new_session()?;
        let fast_path = Arc::new(fast_path::FastPath::new(self.fast_path, &self.bucket));
        let watcher = fast_path.clone();
        let (conn_observer, conn) = session::conn_events();
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .max_reconnects(None)
            .event_callback(move |event| {
                watcher.observe(&event);
                conn_observer(&event);
                async {}
            });
        if let Some(prefix) = &self.session_prefix {
            options = options.custom_inbox_prefix(format!("_INBOX.{prefix}"));
        }
        let nats = crate::connect::nats_waiting(url, &self.auth, options).await?;
        self.start(nats, session, fast_path, true, conn).await
    }

    /// Uses an existing NATS connection. jetlock cannot see its server
    /// errors, so a user that may not write the bucket needs
    /// `.fast_path(false)` here. Nor can it see the connection drop: a
    /// reconnect that the coordinators see as a close is then noticed only
    /// at the next heartbeat, after the reconnect grace, so a holder may
    /// still believe in a lock handed on meanwhile. Prefer
    /// [`ClientOptions::connect`] for holders of locks that cannot fence.
    pub async fn with_nats(self, nats: async_nats::Client) -> Result<Client, ConnectError> {
        let session = self.new_session()?;
        let fast_path = Arc::new(fast_path::FastPath::new(self.fast_path, &self.bucket));
        // No event callback on a connection made elsewhere: a reconnect
        // shows only as a new connection id at the next heartbeat.
        let (_, conn) = tokio::sync::watch::channel(session::ConnState::default());
        self.start(nats, session, fast_path, false, conn).await
    }

    /// A new session id, under the prefix if there is one.
    fn new_session(&self) -> Result<String, ConnectError> {
        let id = nuid::next().to_string();
        match &self.session_prefix {
            Some(prefix) => prefixed_session(prefix, &id),
            None => Ok(id),
        }
    }

    async fn start(
        self,
        nats: async_nats::Client,
        session: String,
        fast_path: Arc<fast_path::FastPath>,
        probe: bool,
        conn: tokio::sync::watch::Receiver<session::ConnState>,
    ) -> Result<Client, ConnectError> {
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
        if probe {
            fast_path.probe(&store).await;
        }
        let (link, settled) = session::SessionLink::new(
            session.clone(),
            self.session_timeout,
            store.partitions(),
            ClientInfo::this_process(&self.name),
            conn,
        );
        let inner = Arc::new(Inner {
            session,
            nats: nats.clone(),
            js,
            store,
            options: self,
            next_owner: AtomicU64::new(1),
            holds: DashMap::new(),
            hints: hints::Hints::default(),
            renewer: renewer::Renewer::start(),
            link: link.clone(),
            fast_path,
            watchers: watchers::Watchers::default(),
            reads: rwlock::Reads::default(),
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
    pub(crate) holds: DashMap<guard::HoldKey, Weak<guard::Hold>>,
    /// Revision of the last release marker this session wrote per key: the
    /// CAS precondition of the next grant, so re-acquiring is one round trip.
    hints: hints::Hints,
    /// Renews every hold of this session.
    pub(crate) renewer: Arc<renewer::Renewer>,
    pub(crate) js: async_nats::jetstream::Context,
    /// Heartbeats, answers and notices from the coordinators.
    pub(crate) link: Arc<session::SessionLink>,
    /// Whether this client writes the bucket itself.
    pub(crate) fast_path: Arc<fast_path::FastPath>,
    /// The keys this client's waits without a coordinator watch.
    pub(crate) watchers: watchers::Watchers,
    /// This session's reads of read/write locks (`rwlock.rs`).
    pub(crate) reads: rwlock::Reads,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last client handle and last hold are gone.
        self.renewer.stop();
        self.link.stop();
    }
}

impl Inner {
    /// `<client name>#<n>`, in one allocation of the right size.
    pub(crate) fn default_owner(&self) -> String {
        use std::fmt::Write;
        let n = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let mut owner = String::with_capacity(self.options.name.len() + 21);
        owner.push_str(&self.options.name);
        write!(owner, "#{n}").expect("writing to a String cannot fail");
        owner
    }

    /// Whether contended acquires should join a coordinator's queue.
    pub(crate) fn queued(&self) -> bool {
        self.options.queue && self.link.coordinated()
    }

    pub(crate) fn take_hint(&self, name: &LockName) -> u64 {
        self.hints.take(name)
    }

    pub(crate) fn remember_release(&self, name: &LockName, revision: u64) {
        self.hints.remember(name, revision);
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

    /// Starts building a read (shared) acquisition of the read/write lock
    /// `name`: many readers at once, none while a writer holds it or waits.
    pub fn read_lock(&self, name: &str) -> RwLockRequest {
        RwLockRequest::new(self.inner.clone(), LockName::new(name), RwMode::Read)
    }

    /// Starts building a write (exclusive) acquisition of the read/write
    /// lock `name`. A read/write lock shares nothing with the plain lock
    /// of the same name.
    pub fn write_lock(&self, name: &str) -> RwLockRequest {
        RwLockRequest::new(self.inner.clone(), LockName::new(name), RwMode::Write)
    }

    /// Starts building a permit acquisition of the semaphore `name` with
    /// `permits` permits (1 to [`MAX_PERMITS`]).
    pub fn semaphore(&self, name: &str, permits: u32) -> SemaphoreRequest {
        SemaphoreRequest::new(self.inner.clone(), LockName::new(name), permits)
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

    /// Whether this client writes the locks bucket itself (the fast path),
    /// or asks the coordinators for every acquire, renewal and release:
    /// because of [`ClientOptions::fast_path`], or because NATS refused
    /// its writes to the bucket.
    pub fn fast_path(&self) -> bool {
        self.inner.fast_path.on()
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

/// The session id `<prefix>.<id>`, or why `prefix` cannot start one
/// ([`ConnectError::InvalidSessionPrefix`]).
pub fn prefixed_session(prefix: &str, id: &str) -> Result<String, ConnectError> {
    let session = format!("{prefix}.{id}");
    crate::protocol::check_session(&session).map_err(|e| ConnectError::InvalidSessionPrefix {
        prefix: prefix.to_owned(),
        reason: e.message,
    })?;
    Ok(session)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_start_with_the_prefix_and_bad_prefixes_are_refused() {
        let session = ClientOptions::new()
            .session_prefix("billing.eu")
            .new_session()
            .unwrap();
        let (prefix, id) = session.rsplit_once('.').unwrap();
        assert_eq!(prefix, "billing.eu");
        assert_eq!(id.len(), 22, "a nuid: {session}");
        assert!(!ClientOptions::new().new_session().unwrap().contains('.'));
        // A fourth token would leave no room for the nuid; spaces, dots at
        // the ends and wildcards would widen or break subjects.
        for bad in [
            "a.b.c.d",
            "a b",
            "",
            ".a",
            "a.",
            "a..b",
            "a.*",
            "a.>",
            &"x".repeat(106),
        ] {
            match ClientOptions::new().session_prefix(bad).new_session() {
                Err(ConnectError::InvalidSessionPrefix { prefix, .. }) => assert_eq!(prefix, bad),
                other => panic!("prefix {bad:?} gave {other:?}"),
            }
        }
        assert!(ClientOptions::new()
            .session_prefix("x".repeat(105))
            .new_session()
            .is_ok());
    }
}
