//! Several locks at once, without deadlock.
//!
//! Every process takes the keys in one global order (ascending KV key), so
//! two transfers over the same two accounts, requested as (a, b) and (b, a),
//! both lock `a` first: no cycle of waiters can form. One deadline covers the
//! whole set; if any lock cannot be had, the ones already taken are released.
//!
//! With [`MultiLockRequest::atomic`] the set is instead granted by one
//! atomic write of every key, or not at all (`atomic.rs`).

use super::acquire::acquire;
use super::attempt::Wait;
use super::guard::LockGuard;
use super::{check_ttl, Inner};
use crate::error::LockError;
use crate::fence::FencingToken;
use crate::name::{LockName, NameError};
use std::sync::Arc;
use std::time::Duration;

/// A multi-key acquisition being built: `client.lock_all([a, b])`.
#[must_use = "a lock request does nothing until `.acquire()` is awaited"]
pub struct MultiLockRequest {
    inner: Arc<Inner>,
    names: Vec<Result<LockName, NameError>>,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    atomic: bool,
}

impl MultiLockRequest {
    pub(crate) fn new(inner: Arc<Inner>, names: Vec<Result<LockName, NameError>>) -> Self {
        MultiLockRequest {
            inner,
            names,
            ttl: None,
            timeout: None,
            atomic: false,
        }
    }

    /// The lease of every lock in the set.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait at most `timeout` for the whole set.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Grant the whole set in one write, or nothing: the client never
    /// holds part of it, not even while it waits (the ordered acquisition
    /// holds the first keys while it waits for the next). Needs a client
    /// that writes the bucket itself ([`crate::Client::fast_path`]) and a
    /// bucket that takes atomic batches (nats-server 2.12+; see
    /// `docs/ARCHITECTURE.md`), or fails with [`LockError::NotAtomic`].
    /// While any key is held it waits for all to be free at once; it does
    /// not queue with a coordinator, so it never overtakes a queued waiter,
    /// and under steady queued contention it waits until its deadline.
    /// At most [`crate::store::MAX_BATCH`] keys.
    pub fn atomic(mut self) -> Self {
        self.atomic = true;
        self
    }

    /// Acquires every lock, in key order (or at once: [`Self::atomic`]).
    /// Duplicate names count once.
    pub async fn acquire(self) -> Result<MultiLockGuard, LockError> {
        let mut names = self.names.into_iter().collect::<Result<Vec<_>, _>>()?;
        names.sort();
        names.dedup();
        let ttl = check_ttl(self.ttl.unwrap_or(self.inner.options.default_ttl))?;
        let wait = Wait::from_timeout(self.timeout);
        if self.atomic {
            let guards = super::atomic::acquire(&self.inner, &names, ttl, wait).await?;
            return Ok(MultiLockGuard { guards });
        }
        let mut guards = Vec::with_capacity(names.len());
        for name in &names {
            match acquire(&self.inner, name, None, ttl, wait, true).await {
                Ok(guard) => guards.push(guard),
                Err(e) => {
                    for guard in guards {
                        let _ = guard.release().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(MultiLockGuard { guards })
    }
}

/// Every lock of a multi-key acquisition, in key order.
#[must_use = "the locks are released when the guard is dropped"]
#[derive(Debug)]
pub struct MultiLockGuard {
    guards: Vec<LockGuard>,
}

impl MultiLockGuard {
    /// The guards, in key order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The fencing token of the lock `name`, if it is in the set.
    pub fn token(&self, name: &str) -> Option<FencingToken> {
        self.guards
            .iter()
            .find(|g| g.name() == name)
            .map(|g| g.token())
    }

    /// True once any lock of the set is lost.
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(|g| g.is_lost())
    }

    /// Resolves when any lock of the set is lost.
    pub async fn lost(&self) {
        futures::future::select_all(self.guards.iter().map(|g| Box::pin(g.lost()))).await;
    }

    /// Releases every lock; the first error is returned after all were tried.
    pub async fn release(self) -> Result<(), LockError> {
        let mut first = Ok(());
        for guard in self.guards.into_iter().rev() {
            if let Err(e) = guard.release().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
