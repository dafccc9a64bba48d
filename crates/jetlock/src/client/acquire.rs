//! Acquiring one lock: fast path, read, watch-and-retry.
//!
//! (A client without the fast path, see `fast_path.rs`, skips all three and
//! asks the coordinators: `queue.rs`.)
//!
//! 1. **Fast path** — one CAS publish, expecting the key's last revision to
//!    be the hint (the release marker this session last wrote for it, or 0
//!    for a key with no message). A free lock costs one round trip.
//! 2. **Read** — on conflict, read the key from the stream leader: a marker
//!    gives the precondition for a second CAS; a record means it is held.
//! 3. **Wait** — watch the key from the revision after the one seen, so no
//!    change can slip between the read and the watch; on each release or
//!    expiry marker, one CAS expecting the marker's revision. No polling.
//!
//! Dropping the future cancels the wait. A CAS still in flight at that
//! moment is settled by a small task: it re-sends the same write (same
//! `Jetlock-Write-Id`; if the first send landed, the re-send recognises it,
//! see `store.rs`) and releases what it finds granted, so a cancelled request
//! never leaves a lock held until its lease runs out.

use super::attempt::{timeout, within, Attempt, Wait};
use super::guard::{Hold, HoldKey, LockGuard};
use super::{check_ttl, Inner};
use crate::clock::unix_ms;
use crate::error::{Holder, LockError};
use crate::name::{LockName, NameError};
use crate::record::LockRecord;
use crate::store::{Current, Nonce, ReadError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, instrument};

/// A lock acquisition being built: `client.lock(name).ttl(..).wait(..)`.
#[must_use = "a lock request does nothing until `.acquire()` or `.try_acquire()` is awaited"]
pub struct LockRequest {
    inner: Arc<Inner>,
    name: Result<LockName, NameError>,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    owner: Option<String>,
    auto_renew: bool,
}

impl LockRequest {
    pub(crate) fn new(inner: Arc<Inner>, name: Result<LockName, NameError>) -> Self {
        LockRequest {
            inner,
            name,
            ttl: None,
            timeout: None,
            owner: None,
            auto_renew: true,
        }
    }

    /// The lease: how long the holder believes it holds the lock after its
    /// last write (grant or renewal). Whole seconds, 1 s to 24 h; default
    /// 10 s. The lock outlives a holder that stops renewing (crash,
    /// partition) a little longer on the server, by
    /// [`crate::store::server_ttl`]: a tenth plus 1 s, against the server's
    /// clock stepping or running fast.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait at most `timeout` for the lock ([`LockError::Timeout`] after).
    /// Without it, `acquire` waits until granted or the future is dropped.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The owner id, which makes acquisition reentrant: a second acquire by
    /// the same owner in the same session while the first guard lives adds a
    /// hold instead of waiting, and the lock is released when every guard
    /// is. Without it, every acquisition is its own owner (tasks in one
    /// process exclude each other, as they must).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether the client renews the lease while the guard lives (default
    /// true). With `false` the lock is a plain lease: `lost()` fires when
    /// it ends, unless released first; the server frees the key after
    /// [`crate::store::server_ttl`].
    pub fn auto_renew(mut self, renew: bool) -> Self {
        self.auto_renew = renew;
        self
    }

    /// Acquires the lock, waiting as configured.
    pub async fn acquire(self) -> Result<LockGuard, LockError> {
        let wait = Wait::from_timeout(self.timeout);
        self.run(wait).await
    }

    /// Acquires the lock only if it is free now ([`LockError::Busy`] if not).
    pub async fn try_acquire(self) -> Result<LockGuard, LockError> {
        self.run(Wait::No).await
    }

    async fn run(self, wait: Wait) -> Result<LockGuard, LockError> {
        let name = self.name?;
        let ttl = check_ttl(self.ttl.unwrap_or(self.inner.options.default_ttl))?;
        acquire(&self.inner, &name, self.owner, ttl, wait, self.auto_renew).await
    }
}

#[instrument(level = "debug", skip_all, fields(lock = %name, session = %inner.session))]
pub(crate) async fn acquire(
    inner: &Arc<Inner>,
    name: &LockName,
    owner: Option<String>,
    ttl: Duration,
    wait: Wait,
    auto_renew: bool,
) -> Result<LockGuard, LockError> {
    if let Some(owner) = &owner {
        let existing = inner
            .holds
            .get(&HoldKey::new(name, owner))
            .and_then(|weak| weak.upgrade());
        if let Some(hold) = existing {
            match Hold::reenter(&hold).await {
                Ok(guard) => return Ok(guard),
                // The earlier hold is gone (its guards saw `lost()`): take
                // the lock afresh like anybody else.
                Err(LockError::Lost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if inner.link.ended() {
        return Err(LockError::SessionExpired);
    }
    let started = Instant::now();
    let attempt = &Attempt {
        inner: inner.clone(),
        name: name.clone(),
        nonce: Nonce::new(),
        payload: Arc::new(LockRecord {
            owner: owner.unwrap_or_else(|| inner.default_owner()),
            session: inner.session.clone(),
            acquired_ms: unix_ms(),
            lease_ms: ttl.as_millis() as u64,
            holds: 1,
            token: 0,
        }),
        ttl,
        auto_renew,
    };
    let granted = if !inner.fast_path.on() {
        super::queue::acquire(attempt, wait, started).await
    } else {
        match fast(inner, name, attempt, wait, started).await {
            // NATS refused our write to the bucket: this user may not use
            // the fast path (any more). Nothing was written.
            Err(LockError::Nats { .. }) if !inner.fast_path.on() => {
                super::queue::acquire(attempt, wait, started).await
            }
            result => result,
        }
    }?;
    // No coordinator confirmed this session lately: one may have declared
    // it dead and would hand this grant on at once, and the session ends
    // (see `SessionLink::unconfirmed`). The guard is dropped (released in
    // the background).
    if inner.link.ended() {
        drop(granted);
        return Err(LockError::SessionExpired);
    }
    Ok(granted)
}

/// The fast path's three steps.
async fn fast(
    inner: &Arc<Inner>,
    name: &LockName,
    attempt: &Attempt,
    wait: Wait,
    started: Instant,
) -> Result<LockGuard, LockError> {
    // 1. Fast path.
    let hint = inner.take_hint(name);
    if let Some(w) = attempt.cas(hint, wait).await? {
        return Ok(attempt.granted(w));
    }
    // 2. Read what is there; under heavy churn a vacancy may be taken
    // between our read and our CAS a few times in a row.
    let mut rounds = 0;
    let mut from = loop {
        match read(inner, name, wait).await? {
            Current::Vacant { revision } => {
                if let Some(w) = attempt.cas(revision, wait).await? {
                    return Ok(attempt.granted(w));
                }
                rounds += 1;
                if rounds == 3 {
                    if let Wait::No = wait {
                        return Err(LockError::Busy {
                            name: name.to_string(),
                            holder: None,
                        });
                    }
                    break revision + 1;
                }
            }
            Current::Held { revision, record } => {
                if let Wait::No = wait {
                    return Err(LockError::Busy {
                        name: name.to_string(),
                        holder: Some(Holder::from_record(record, revision)),
                    });
                }
                // With a coordinator, wait in its FIFO queue.
                if inner.queued() {
                    return super::queue::acquire(attempt, wait, started).await;
                }
                break revision + 1;
            }
        }
    };
    // 3. With a coordinator, wait in its queue (also after losing races
    // for a vacancy: coordinator handoffs never leave the key vacant, so a
    // watcher would starve).
    if inner.queued() {
        return super::queue::acquire(attempt, wait, started).await;
    }
    // Otherwise wait for a release or expiry, one CAS per marker.
    debug!(from, "lock is held; waiting");
    // The client's watcher of the key (shared with its other waits on it)
    // shows the newest change; one before `from` was seen already.
    let mut seen = inner.watchers.subscribe(&inner.store, name, from);
    loop {
        let latest = {
            let s = seen.borrow_and_update();
            s.latest.clone().filter(|(revision, _)| *revision >= from)
        };
        if let Some((revision, current)) = latest {
            from = revision + 1;
            match current {
                Ok(Current::Vacant { revision }) => {
                    if let Some(w) = attempt.cas(revision, wait).await? {
                        debug!(
                            waited_ms = started.elapsed().as_millis() as u64,
                            "granted after wait"
                        );
                        return Ok(attempt.granted(w));
                    }
                }
                Ok(Current::Held { .. }) => {
                    // A coordinator appeared (or its first heartbeat
                    // answer came late): join its queue.
                    if inner.queued() {
                        return super::queue::acquire(attempt, wait, started).await;
                    }
                }
                Err(source) => {
                    return Err(LockError::Corrupt {
                        name: name.to_string(),
                        source,
                    })
                }
            }
        }
        // A coordinator whose first heartbeat answer came late, or that
        // started after this wait did, shows up in the session link, not
        // on the key: look at the link every so often, so a wait on a key
        // that does not change joins the queue too.
        let changed = async { tokio::time::timeout(LINK_CHECK, seen.changed()).await.ok() };
        let changed = match within(wait.deadline(), changed).await {
            Some(None) => {
                if inner.queued() {
                    return super::queue::acquire(attempt, wait, started).await;
                }
                continue;
            }
            Some(Some(changed)) => Some(changed),
            None => None,
        };
        match changed {
            Some(Ok(())) => {}
            // The watcher stops only with nobody subscribed: not reached
            // while this wait holds on; start another all the same.
            Some(Err(_)) => seen = inner.watchers.subscribe(&inner.store, name, from),
            None => {
                let failing = seen.borrow().failing.clone();
                return Err(match failing {
                    Some(e) => LockError::Nats {
                        name: name.to_string(),
                        op: "watch",
                        source: e.into(),
                    },
                    None => timeout(name, started),
                });
            }
        }
    }
}

/// How often a wait without a coordinator looks whether one answers now.
const LINK_CHECK: Duration = Duration::from_millis(250);

pub(super) async fn read(inner: &Inner, name: &LockName, wait: Wait) -> Result<Current, LockError> {
    let mut tries = 0;
    loop {
        match inner.store.read(name).await {
            Ok(current) => return Ok(current),
            Err(ReadError::Transport(_)) if wait.retry_after_transport_error(tries + 1).await => {
                tries += 1;
            }
            Err(e) => return Err(read_error(name, e)),
        }
    }
}

pub(crate) fn read_error(name: &LockName, e: ReadError) -> LockError {
    match e {
        ReadError::Transport(source) => LockError::Nats {
            name: name.to_string(),
            op: "read",
            source,
        },
        ReadError::Corrupt { source, .. } => LockError::Corrupt {
            name: name.to_string(),
            source,
        },
    }
}
