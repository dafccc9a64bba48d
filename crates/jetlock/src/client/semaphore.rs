//! Semaphores: at most N holders of a name at once (`shared.rs` has the
//! layout and the rule they keep).
//!
//! Permit `i` is the ordinary lock `N:~sem:permit:<i>`, so each permit is
//! a fenced lease of its own, renewed, with its own loss signal. A newcomer
//! tries the permits below N from a random one on and keeps one it gets
//! only if nobody holds the gate `N:~sem:queue`; otherwise, and when all
//! are taken, it queues for the gate (FIFO through the coordinators) and,
//! holding it, waits for a permit below N to come free.
//!
//! N is the caller's: a live change is every caller passing the new N.
//! Growing lets more in at once. Shrinking revokes nothing: a permit at or
//! above the new N stays held until released, and only permits below N
//! are given out, so the holders settle at the new N as the old permits
//! are released (at most the larger N meanwhile).

use super::attempt::Wait;
use super::guard::LockGuard;
use super::rwlock::{busy, Take};
use super::shared::{gate_open, renamed, sub_name, Holders, PartGuard};
use super::{check_ttl, Inner};
use crate::error::LockError;
use crate::name::{LockName, NameError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use crate::name::MAX_PERMITS;

/// A permit acquisition being built: `client.semaphore(name, permits)`.
#[must_use = "a permit request does nothing until `.acquire()` or `.try_acquire()` is awaited"]
pub struct SemaphoreRequest {
    inner: Arc<Inner>,
    name: Result<LockName, NameError>,
    permits: u32,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    auto_renew: bool,
}

impl SemaphoreRequest {
    pub(crate) fn new(inner: Arc<Inner>, name: Result<LockName, NameError>, permits: u32) -> Self {
        SemaphoreRequest {
            inner,
            name,
            permits,
            ttl: None,
            timeout: None,
            auto_renew: true,
        }
    }

    /// The permit's lease, as for [`crate::LockRequest::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait at most `timeout` ([`LockError::Timeout`] after).
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether the lease is renewed while the permit lives (default true).
    pub fn auto_renew(mut self, renew: bool) -> Self {
        self.auto_renew = renew;
        self
    }

    /// Acquires a permit, waiting as configured.
    pub async fn acquire(self) -> Result<Permit, LockError> {
        let wait = Wait::from_timeout(self.timeout);
        self.run(wait).await
    }

    /// Acquires a permit only if one is free now ([`LockError::Busy`] if not).
    pub async fn try_acquire(self) -> Result<Permit, LockError> {
        self.run(Wait::No).await
    }

    async fn run(self, wait: Wait) -> Result<Permit, LockError> {
        let name = self.name?;
        if self.permits == 0 || self.permits > MAX_PERMITS {
            return Err(LockError::InvalidPermits {
                permits: self.permits,
                max: MAX_PERMITS,
            });
        }
        let ttl = check_ttl(self.ttl.unwrap_or(self.inner.options.default_ttl))?;
        let inner = &self.inner;
        // Every permit is its own owner: permits are not reentrant.
        let owner = inner.default_owner();
        let take = Take {
            inner,
            owner: &owner,
            key_owner: &owner,
            ttl,
            wait,
            auto_renew: self.auto_renew,
        };
        let started = Instant::now();
        let slots = Slots::of(&name, self.permits)?;
        let (guard, index) = permit(&take, &slots)
            .await
            .map_err(|e| renamed(e, &name, started))?;
        Ok(Permit {
            part: PartGuard::new(guard, name),
            index,
        })
    }
}

/// A semaphore's keys, for one N.
struct Slots {
    gate: LockName,
    under: LockName,
    permits: Vec<LockName>,
}

impl Slots {
    fn of(name: &LockName, permits: u32) -> Result<Slots, LockError> {
        Ok(Slots {
            gate: sub_name(name, "sem", &["queue"])?,
            under: sub_name(name, "sem", &["permit"])?,
            permits: (0..permits)
                .map(|i| sub_name(name, "sem", &["permit", &i.to_string()]))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Takes the first free permit, trying from a random one on.
    async fn take_any(&self, take: &Take<'_>) -> Result<Option<(LockGuard, u32)>, LockError> {
        let n = self.permits.len();
        let start = fastrand::usize(..n);
        for i in (0..n).map(|k| (start + k) % n) {
            match take.lock(&self.permits[i], Wait::No).await {
                Ok(guard) => return Ok(Some((guard, i as u32))),
                Err(LockError::Busy { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether a permit below N looks free in what `holders` saw.
    fn any_free(&self, holders: &Holders) -> bool {
        self.permits
            .iter()
            .any(|p| !holders.held().contains(p.key()))
    }
}

async fn permit(take: &Take<'_>, slots: &Slots) -> Result<(LockGuard, u32), LockError> {
    if let Some((guard, index)) = slots.take_any(take).await? {
        if gate_open(take.inner, &slots.gate, None).await? {
            return Ok((guard, index));
        }
        // Somebody queued first: our permit is theirs.
        let _ = guard.release().await;
    }
    if let Wait::No = take.wait {
        return Err(busy(&slots.gate));
    }
    let pass =
        super::acquire::acquire(take.inner, &slots.gate, None, take.ttl, take.wait, true).await?;
    let taken = wait_for_permit(take, slots, &pass).await;
    let _ = pass.release().await;
    taken
}

/// Holding the gate: takes the next permit below N to come free.
async fn wait_for_permit(
    take: &Take<'_>,
    slots: &Slots,
    pass: &LockGuard,
) -> Result<(LockGuard, u32), LockError> {
    let deadline = take.wait.deadline();
    let started = Instant::now();
    let timeout = || super::attempt::timeout(&slots.gate, started);
    // Watching before trying: a permit freed between a failed try and the
    // wait is still seen.
    let Some(mut holders) = Holders::open(take.inner, &slots.under, deadline).await? else {
        return Err(timeout());
    };
    loop {
        if let Some(got) = slots.take_any(take).await? {
            return Ok(got);
        }
        loop {
            tokio::select! {
                next = holders.next(deadline) => {
                    if next?.is_none() {
                        return Err(timeout());
                    }
                }
                () = pass.lost() => {
                    return Err(LockError::Lost {
                        name: slots.gate.to_string(),
                        reason: pass.lost_reason().unwrap_or(crate::error::LostReason::Expired),
                    });
                }
            }
            if slots.any_free(&holders) {
                break;
            }
        }
    }
}

/// A held permit. Dropping it releases it in the background;
/// [`Permit::release`] does it in the foreground. Its token (its own
/// lease's), loss signal and deadline are the [`PartGuard`]'s it
/// dereferences to.
#[must_use = "the permit is released when it is dropped"]
#[derive(Debug)]
pub struct Permit {
    part: PartGuard,
    index: u32,
}

impl Permit {
    /// Which permit this is, below the N it was taken with.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Releases the permit; see [`LockGuard::release`].
    pub async fn release(self) -> Result<(), LockError> {
        self.part.release().await
    }
}

impl std::ops::Deref for Permit {
    type Target = PartGuard;

    fn deref(&self) -> &PartGuard {
        &self.part
    }
}
