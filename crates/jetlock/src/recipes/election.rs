//! Leader election on one exclusive lock.
//!
//! The leader of an election is the holder of the lock
//! `election:<name>`, and its term is that grant's fencing token, so
//! everything the lock guarantees carries over: one leader at a time (by
//! what candidates *believe*, the session contract), terms that strictly
//! increase, a crashed leader replaced within its session timeout (with a
//! coordinator) or its lease (without), a deposed leader told through
//! [`Leadership::lost`], and its late writes refused by any resource that
//! fences on the term. Campaigning is waiting for the lock: in arrival
//! order through a coordinator's queue when one runs.
//!
//! Observers watch the lock's key ([`crate::store::LockStore::watch_from`])
//! and see each change of term; a renewal rewrites the record under the same
//! term and is no change.

use crate::client::{read_error, Client, LockGuard};
use crate::error::{LockError, LostReason};
use crate::fence::FencingToken;
use crate::name::{LockName, NameError};
use crate::record::LockRecord;
use crate::store::{Current, KeyWatch, LockStore, ReadError};
use futures::stream::{BoxStream, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// The lock of election `<name>` is `<ELECTION_PREFIX><name>`.
pub const ELECTION_PREFIX: &str = "election:";

/// The lock of election `name`, which must be a valid lock name itself.
pub fn election_lock(name: &str) -> Result<LockName, NameError> {
    LockName::new(name)?;
    LockName::new(&format!("{ELECTION_PREFIX}{name}"))
}

impl Client {
    /// The election of `name`: campaign in it, or observe who leads.
    pub fn election(&self, name: &str) -> Election {
        Election {
            client: self.clone(),
            name: name.to_owned(),
            candidate: None,
            ttl: None,
            wait: None,
        }
    }
}

/// One election, by name, as seen from one client (builder style).
///
/// ```no_run
/// # async fn run(client: jetlock::Client) -> Result<(), jetlock::LockError> {
/// let leadership = client.election("scheduler").candidate("worker-7").campaign().await?;
/// let term = leadership.term(); // pass it with every write a leader makes
/// tokio::select! {
///     _ = leadership.lost() => { /* deposed: stop at once */ }
///     _ = async { /* lead, fencing writes with `term` */ } => {}
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
    candidate: Option<String>,
    ttl: Option<Duration>,
    wait: Option<Duration>,
}

impl Election {
    /// Who this client campaigns as: the owner observers see leading
    /// (default: the client's name and a counter). Two campaigns with the
    /// same candidate id in one client are one leadership (the lock is
    /// reentrant per owner), so give each campaign its own id.
    pub fn candidate(mut self, id: impl Into<String>) -> Self {
        self.candidate = Some(id.into());
        self
    }

    /// The leader's lease (default: the client's default lease). Renewed
    /// while the leadership lives; without a coordinator, a leader that
    /// crashes is replaced when it runs out.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Campaign at most this long ([`LockError::Timeout`] after). Without
    /// it, [`Election::campaign`] waits until elected or dropped.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves when this client leads: the lock is granted. Dropping the
    /// future withdraws the candidacy.
    pub async fn campaign(&self) -> Result<Leadership, LockError> {
        let lock = election_lock(&self.name)?;
        let mut request = self.client.lock(lock.as_str());
        if let Some(candidate) = &self.candidate {
            request = request.owner(candidate.clone());
        }
        if let Some(ttl) = self.ttl {
            request = request.ttl(ttl);
        }
        if let Some(wait) = self.wait {
            request = request.wait(wait);
        }
        let guard = request.acquire().await?;
        Ok(Leadership {
            guard,
            election: self.name.clone(),
            since: SystemTime::now(),
        })
    }

    /// Who leads right now, if anyone (a read: a snapshot for people and
    /// views; a leader proves itself with its term, not with this).
    pub async fn leader(&self) -> Result<Option<Leader>, LockError> {
        Election::leader_in(self.client.store(), &self.name).await
    }

    /// The leaders of this election as they change: first who leads now
    /// (`None`: nobody), then each new term or vacancy. Changes that follow
    /// each other faster than they are read are all delivered, in order. A
    /// broken watch (a server restart) yields its error and resumes after
    /// the last change seen.
    pub async fn observe(&self) -> Result<LeaderChanges, LockError> {
        Election::observe_in(self.client.store(), &self.name).await
    }

    /// [`Election::leader`] of election `name` in a locks bucket, without a
    /// client session (for views such as `jetlock leader`).
    pub async fn leader_in(store: &LockStore, name: &str) -> Result<Option<Leader>, LockError> {
        let lock = election_lock(name)?;
        let current = store.read(&lock).await.map_err(|e| read_error(&lock, e))?;
        Ok(Leader::from_current(current))
    }

    /// [`Election::observe`] of election `name` in a locks bucket, without
    /// a client session.
    pub async fn observe_in(store: &LockStore, name: &str) -> Result<LeaderChanges, LockError> {
        let lock = election_lock(name)?;
        let store = store.clone();
        // Watching from the revision just read delivers that message first,
        // and nothing after it can slip between the read and the watch.
        let from = match store.read(&lock).await {
            Ok(Current::Vacant { revision } | Current::Held { revision, .. }) => revision,
            // An unreadable record is reported by the watch, as a change.
            Err(ReadError::Corrupt { .. }) => 0,
            Err(e) => return Err(read_error(&lock, e)),
        };
        let observer = Observer {
            store,
            name: lock,
            from,
            watch: None,
            last: None,
            failures: 0,
        };
        let changes = futures::stream::unfold(observer, |mut observer| async move {
            let change = observer.next_change().await;
            Some((change, observer))
        });
        Ok(LeaderChanges(changes.boxed()))
    }
}

/// Who leads an election, as its lock's record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The candidate id the leader campaigned as.
    pub candidate: String,
    /// The leader's client session.
    pub session: String,
    /// The term: the fencing token of the leader's grant.
    pub term: FencingToken,
    /// When it was elected, in ms since the Unix epoch by the electing
    /// client's clock (for people; never compare it across machines).
    pub since_ms: u64,
    /// The leader's lease.
    pub lease: Duration,
}

impl Leader {
    fn from_record(record: LockRecord, revision: u64) -> Self {
        Leader {
            term: FencingToken(record.token_at(revision)),
            since_ms: record.acquired_ms,
            lease: Duration::from_millis(record.lease_ms),
            candidate: record.owner,
            session: record.session,
        }
    }

    fn from_current(current: Current) -> Option<Self> {
        match current {
            Current::Vacant { .. } => None,
            Current::Held { revision, record } => Some(Leader::from_record(record, revision)),
        }
    }
}

/// This client leads an election. Dropping it resigns in the background;
/// [`Leadership::resign`] does it in the foreground.
#[must_use = "leadership ends (resigns) when dropped"]
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    election: String,
    since: SystemTime,
}

impl Leadership {
    /// The term: the fencing token of this leadership. Pass it with every
    /// write a leader makes, so a resource refuses a deposed leader's.
    pub fn term(&self) -> FencingToken {
        self.guard.token()
    }

    /// The election's name.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The candidate id this client campaigned as.
    pub fn candidate(&self) -> &str {
        self.guard.owner()
    }

    /// When this client learned it leads (its own clock).
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// Resolves when the leadership is lost (session over, lease run out,
    /// revoked): stop acting as leader when it does.
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.guard.lost()
    }

    /// True once the leadership is lost or its deadline has passed (see
    /// [`LockGuard::is_lost`]): check it before an action you cannot fence.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Why the leadership was lost, once it is.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.guard.lost_reason()
    }

    /// The lock that makes this client leader.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Steps down: the lock is released and the next candidate is elected.
    /// [`LockError::Lost`] when the leadership had been lost already.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

/// The leaders of an election as they change ([`Election::observe`]): a
/// stream of `Ok(Some(leader))` for a new term, `Ok(None)` when nobody
/// leads, and `Err` when the watch broke (it resumes).
pub struct LeaderChanges(BoxStream<'static, Result<Option<Leader>, LockError>>);

impl Stream for LeaderChanges {
    type Item = Result<Option<Leader>, LockError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// The state behind [`LeaderChanges`].
struct Observer {
    store: LockStore,
    name: LockName,
    /// The next revision to watch from.
    from: u64,
    watch: Option<KeyWatch>,
    /// The term last delivered (`Some(None)`: a vacancy).
    last: Option<Option<FencingToken>>,
    failures: u32,
}

impl Observer {
    async fn next_change(&mut self) -> Result<Option<Leader>, LockError> {
        // A key with no message has nobody leading, and no message to say so.
        if self.from == 0 && self.last.is_none() {
            self.last = Some(None);
            return Ok(None);
        }
        loop {
            let watch = match &mut self.watch {
                Some(watch) => watch,
                None => match self.store.watch_from(&self.name, self.from).await {
                    Ok(watch) => self.watch.insert(watch),
                    Err(source) => return Err(self.broken(source).await),
                },
            };
            let (revision, current) = match watch.next().await {
                Some(Ok(change)) => change,
                Some(Err(source)) => return Err(self.broken(source).await),
                None => {
                    self.watch = None;
                    continue;
                }
            };
            self.failures = 0;
            self.from = revision + 1;
            let leader = Leader::from_current(current.map_err(|source| LockError::Corrupt {
                name: self.name.to_string(),
                source,
            })?);
            let term = leader.as_ref().map(|l| l.term);
            if self.last != Some(term) {
                self.last = Some(term);
                return Ok(leader);
            }
        }
    }

    /// The watch broke: pause (longer after each failure in a row) before
    /// the next one resumes, and say why.
    async fn broken(&mut self, source: async_nats::Error) -> LockError {
        self.watch = None;
        self.failures += 1;
        let pause = Duration::from_millis(25 << self.failures.min(6));
        tokio::time::sleep(pause).await;
        LockError::Nats {
            name: self.name.to_string(),
            op: "observe",
            source,
        }
    }
}
