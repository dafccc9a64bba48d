//! Read/write locks: many readers or one writer (`shared.rs` has the
//! layout and the rule they keep).
//!
//! - A session's reads hold one key of its own, `N:~rw:read:<session>`
//!   (its reads after the first add holds to it), so readers of different
//!   sessions never contend on a write: 32 readers are 32 independent CAS
//!   creates (docs/ARCHITECTURE.md has the measurement behind this
//!   choice), and the keys under the name stay one per reading session,
//!   whatever the owners. A first read then reads the gate `N:~rw:write`;
//!   held by somebody else, it deletes its key and queues for the gate,
//!   takes its key while holding the gate, and passes the gate on. A
//!   session's further read checks the gate first and, with a writer
//!   waiting, queues behind it instead of adding a hold.
//! - A writer holds the gate, then waits until no reader key is held. A
//!   queued writer thus stops new readers from barging past it, and the
//!   readers queued behind it go in turn once it releases: FIFO, no
//!   starvation either way.
//! - A writer's token is its gate grant's revision, written after every
//!   earlier reader's key: above every earlier reader's token, so a fence
//!   refuses a reader that outlived a writer's grant ([`crate::Fence`]'s
//!   `admit_read`).
//! - Reentrant: reads share their session's key; a second write by the
//!   same owner adds a hold; a read by the owner holding the write goes in
//!   (downgrade). A write by an owner holding a read is refused
//!   ([`LockError::Upgrade`]): two upgrading readers would wait for each
//!   other forever.

use super::acquire::acquire;
use super::attempt::Wait;
use super::guard::{Hold, HoldKey, LockGuard};
use super::shared::{confirmed, gate_open, renamed, sub_name, Holders, PartGuard};
use super::{check_ttl, Inner};
use crate::error::LockError;
use crate::name::{LockName, NameError};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Read (shared) or write (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwMode {
    Read,
    Write,
}

/// A read or write acquisition being built: `client.read_lock(name)` or
/// `client.write_lock(name)`, then `.ttl(..)`, `.wait(..)`, `.owner(..)`.
#[must_use = "a lock request does nothing until `.acquire()` or `.try_acquire()` is awaited"]
pub struct RwLockRequest {
    inner: Arc<Inner>,
    name: Result<LockName, NameError>,
    mode: RwMode,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    owner: Option<String>,
    auto_renew: bool,
}

impl RwLockRequest {
    pub(crate) fn new(inner: Arc<Inner>, name: Result<LockName, NameError>, mode: RwMode) -> Self {
        RwLockRequest {
            inner,
            name,
            mode,
            ttl: None,
            timeout: None,
            owner: None,
            auto_renew: true,
        }
    }

    /// The lease, as for [`crate::LockRequest::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait at most `timeout` ([`LockError::Timeout`] after).
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The owner id that makes reads and writes reentrant.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether the lease is renewed while the guard lives (default true).
    pub fn auto_renew(mut self, renew: bool) -> Self {
        self.auto_renew = renew;
        self
    }

    /// Acquires, waiting as configured.
    pub async fn acquire(self) -> Result<RwLockGuard, LockError> {
        let wait = Wait::from_timeout(self.timeout);
        self.run(wait).await
    }

    /// Acquires only if it can be had now ([`LockError::Busy`] if not).
    pub async fn try_acquire(self) -> Result<RwLockGuard, LockError> {
        self.run(Wait::No).await
    }

    async fn run(self, wait: Wait) -> Result<RwLockGuard, LockError> {
        let name = self.name?;
        let ttl = check_ttl(self.ttl.unwrap_or(self.inner.options.default_ttl))?;
        let inner = &self.inner;
        let owner = self.owner.unwrap_or_else(|| inner.default_owner());
        let started = Instant::now();
        let keys = Keys::of(&name, &inner.session)?;
        let take = Take {
            inner,
            owner: &owner,
            key_owner: &owner,
            ttl,
            wait,
            auto_renew: self.auto_renew,
        };
        let guard = match self.mode {
            RwMode::Read => read(&take, &keys).await,
            RwMode::Write => write(&take, &keys).await,
        }
        .map_err(|e| renamed(e, &name, started))?;
        let read = (self.mode == RwMode::Read).then(|| Read::new(inner, name.key(), &owner));
        Ok(RwLockGuard {
            part: PartGuard::new(guard, name),
            mode: self.mode,
            _read: read,
        })
    }
}

/// The keys of a read/write lock, as one session sees them.
struct Keys {
    /// The read/write lock's own key (no key holds it).
    lock: String,
    gate: LockName,
    readers: LockName,
    mine: LockName,
}

impl Keys {
    fn of(name: &LockName, session: &str) -> Result<Keys, LockError> {
        Ok(Keys {
            lock: name.key().to_owned(),
            gate: sub_name(name, "rw", &["write"])?,
            readers: sub_name(name, "rw", &["read"])?,
            mine: sub_name(name, "rw", &["read", session])?,
        })
    }
}

/// What every acquisition of a sub-lock of one request shares.
pub(super) struct Take<'a> {
    pub(super) inner: &'a Arc<Inner>,
    /// Who asks (reentrancy of writes, downgrades, upgrades).
    pub(super) owner: &'a str,
    /// The owner the keys taken are held as: `owner` (reads hold their
    /// session's key as its [`Tenure`]'s owner instead).
    pub(super) key_owner: &'a str,
    pub(super) ttl: Duration,
    pub(super) wait: Wait,
    pub(super) auto_renew: bool,
}

impl Take<'_> {
    /// Whether `key_owner` already holds `name` in this client (a
    /// reentry).
    pub(super) fn holds(&self, name: &LockName) -> bool {
        self.holds_as(name, self.key_owner)
    }

    fn holds_as(&self, name: &LockName, owner: &str) -> bool {
        self.inner
            .holds
            .get(&HoldKey::new(name, owner))
            .and_then(|weak| weak.upgrade())
            .is_some()
    }

    pub(super) async fn lock(&self, name: &LockName, wait: Wait) -> Result<LockGuard, LockError> {
        self.lock_as(name, self.key_owner, wait).await
    }

    async fn lock_as(
        &self,
        name: &LockName,
        owner: &str,
        wait: Wait,
    ) -> Result<LockGuard, LockError> {
        acquire(
            self.inner,
            name,
            Some(owner.to_owned()),
            self.ttl,
            wait,
            self.auto_renew,
        )
        .await
    }
}

async fn read(take: &Take<'_>, keys: &Keys) -> Result<LockGuard, LockError> {
    // One read at a time finds out whether the session's key is held and
    // takes it: two first reads racing would each try to create it. The
    // turn is never held while waiting for the gate, which the session's
    // own writer may hold (its downgrade read needs the turn).
    let turn = take.inner.reads.entry(keys.mine.key());
    let mut tenure = turn.lock().await;
    let mut queue = false;
    if let Some(owner) = holding(take, keys, &tenure) {
        // The key is held by this session's other reads, and a writer
        // waits for it: adding a hold would let this read barge past the
        // writer, so with the gate taken it queues instead.
        if !gate_open(take.inner, &keys.gate, Some(take.owner)).await? {
            queue = true;
        } else if let Some(taken) = add_hold(take, &keys.mine, &owner).await {
            return taken;
        }
        // Otherwise the tenure's hold was lost meanwhile: a new tenure.
    }
    if !queue {
        let owner = begin(&mut tenure);
        let guard = take.lock_as(&keys.mine, &owner, take.wait).await?;
        if gate_open(take.inner, &keys.gate, Some(take.owner)).await? {
            return Ok(guard);
        }
        // A writer holds or passes the gate: our key may hold it up, so
        // it goes, and we queue behind the writer.
        let _ = guard.release().await;
    }
    drop(tenure);
    if let Wait::No = take.wait {
        return Err(busy(&keys.gate));
    }
    let pass = acquire(take.inner, &keys.gate, None, take.ttl, take.wait, true).await?;
    let taken = {
        let mut tenure = turn.lock().await;
        let held = match holding(take, keys, &tenure) {
            Some(owner) => add_hold(take, &keys.mine, &owner).await,
            None => None,
        };
        match held {
            Some(taken) => taken,
            None => {
                let owner = begin(&mut tenure);
                take.lock_as(&keys.mine, &owner, take.wait).await
            }
        }
    };
    // A pass whose release is lost holds the gate until its lease ends:
    // later comers wait longer, nobody gets in wrongly.
    let _ = pass.release().await;
    taken
}

async fn write(take: &Take<'_>, keys: &Keys) -> Result<LockGuard, LockError> {
    if take.inner.reads.reading(&keys.lock, take.owner) {
        return Err(LockError::Upgrade {
            name: keys.gate.to_string(),
        });
    }
    let reentry = take.holds(&keys.gate);
    let guard = take.lock(&keys.gate, take.wait).await?;
    if reentry {
        return Ok(guard);
    }
    match drain(take, keys, &guard).await {
        Ok(()) => Ok(guard),
        Err(e) => {
            let _ = guard.release().await;
            Err(e)
        }
    }
}

/// Waits, holding the gate, until no reader key is held, as the watch
/// shows and a write then confirms: the watch may have been started at a
/// deposed leader that had not seen a reader's key yet.
async fn drain(take: &Take<'_>, keys: &Keys, gate: &LockGuard) -> Result<(), LockError> {
    let deadline = take.wait.deadline();
    let started = Instant::now();
    let timeout = || super::attempt::timeout(&keys.gate, started);
    let Some(mut readers) = Holders::open(take.inner, &keys.readers, deadline).await? else {
        return Err(timeout());
    };
    loop {
        if readers.held().is_empty()
            && confirmed(take.inner, &keys.gate, &keys.readers, true, readers.last()).await?
        {
            return Ok(());
        }
        if let Wait::No = take.wait {
            return Err(busy(&keys.gate));
        }
        tokio::select! {
            next = readers.next(deadline) => {
                if next?.is_none() {
                    return Err(timeout());
                }
            }
            // A confirmation refused: the watch has not shown what came
            // since; look again when it shows it, or shortly.
            () = tokio::time::sleep(CONFIRM_AGAIN), if readers.held().is_empty() => {}
            () = gate.lost() => {
                return Err(LockError::Lost {
                    name: keys.gate.to_string(),
                    reason: gate.lost_reason().unwrap_or(crate::error::LostReason::Expired),
                });
            }
        }
    }
}

/// How long a refused confirmation waits for the watch before trying again.
const CONFIRM_AGAIN: Duration = Duration::from_millis(100);

/// What the owner of a session's reader key starts with (see [`Tenure`]).
const READER: &str = "reader";

/// The owner a session's reader key is held as while this client holds
/// it: `reader.<nuid>`, new each time the session takes the key afresh.
/// The session's reads share it, one hold each. A key left held by an
/// earlier tenure (its release failed: a server down) is then another
/// owner's, so a new read waits for its lease to end, as anybody would.
/// Under one fixed owner the new read was taken for a reentry of that
/// orphan: the coordinator added a hold to it, the client's guard wrote
/// against the grant's revision, and every renewal and release conflicted
/// (the hold lost, the key kept held by each new read, writers starved).
type Tenure = Option<String>;

/// Starts a new tenure: the owner the reader key is taken as now.
fn begin(tenure: &mut Tenure) -> String {
    let owner = format!("{READER}.{}", nuid::next());
    *tenure = Some(owner.clone());
    owner
}

/// The current tenure's owner, while this client holds the reader key.
fn holding(take: &Take<'_>, keys: &Keys, tenure: &Tenure) -> Option<String> {
    tenure
        .clone()
        .filter(|owner| take.holds_as(&keys.mine, owner))
}

/// One more hold on the session's reader key for the tenure `owner`, or
/// `None` when that hold was lost meanwhile. Never a fresh acquire under
/// the tenure's owner: a coordinator would take it for a reentry of what
/// the lost hold left on the key (see [`Tenure`]).
async fn add_hold(
    take: &Take<'_>,
    name: &LockName,
    owner: &str,
) -> Option<Result<LockGuard, LockError>> {
    let hold = take
        .inner
        .holds
        .get(&HoldKey::new(name, owner))
        .and_then(|weak| weak.upgrade())?;
    match Hold::reenter(&hold).await {
        Err(LockError::Lost { .. }) => None,
        taken => Some(taken),
    }
}

/// A session's reads: who reads which lock (to refuse upgrades), and one
/// entry per reader key, its [`Tenure`], so that first reads take turns.
#[derive(Default)]
pub(crate) struct Reads {
    by_owner: DashMap<(String, String), u32>,
    entries: DashMap<String, Arc<tokio::sync::Mutex<Tenure>>>,
}

impl Reads {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<Tenure>> {
        self.entries.entry(key.to_owned()).or_default().clone()
    }

    /// Whether `owner` reads the read/write lock whose key is `lock`.
    fn reading(&self, lock: &str, owner: &str) -> bool {
        self.by_owner
            .get(&(lock.to_owned(), owner.to_owned()))
            .is_some_and(|n| *n > 0)
    }
}

/// One read by one owner, counted while its guard lives.
struct Read {
    inner: Arc<Inner>,
    key: (String, String),
}

impl Read {
    fn new(inner: &Arc<Inner>, lock: &str, owner: &str) -> Read {
        let key = (lock.to_owned(), owner.to_owned());
        *inner.reads.by_owner.entry(key.clone()).or_default() += 1;
        Read {
            inner: inner.clone(),
            key,
        }
    }
}

impl Drop for Read {
    fn drop(&mut self) {
        let reads = &self.inner.reads.by_owner;
        reads.alter(&self.key, |_, n| n.saturating_sub(1));
        reads.remove_if(&self.key, |_, n| *n == 0);
    }
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Read").field(&self.key.1).finish()
    }
}

pub(super) fn busy(name: &LockName) -> LockError {
    LockError::Busy {
        name: name.to_string(),
        holder: None,
    }
}

/// A held read or write lock. Dropping it releases the hold in the
/// background; [`RwLockGuard::release`] does it in the foreground. Its
/// token, loss signal and deadline are the [`PartGuard`]'s it dereferences
/// to.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct RwLockGuard {
    part: PartGuard,
    mode: RwMode,
    /// Counts this read for [`LockError::Upgrade`] while the guard lives.
    _read: Option<Read>,
}

impl RwLockGuard {
    pub fn mode(&self) -> RwMode {
        self.mode
    }

    /// Releases this hold; see [`LockGuard::release`].
    pub async fn release(self) -> Result<(), LockError> {
        self.part.release().await
    }
}

impl std::ops::Deref for RwLockGuard {
    type Target = PartGuard;

    fn deref(&self) -> &PartGuard {
        &self.part
    }
}
