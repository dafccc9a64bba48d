//! A held lock: its lease, its loss signal, its reentrant holds.
//!
//! One [`Hold`] per grant, shared by the [`LockGuard`]s of its reentrant
//! acquisitions. The hold's state (the key's current revision and the hold
//! count) sits behind one async mutex, so the renewer's renewals, reentrant
//! acquisitions and releases each CAS against the revision the previous one
//! wrote. The client's renewer (`renewer.rs`) renews every third of the lease. If a renewal finds
//! the record changed, or no renewal succeeds before the lease would end on
//! the holder's own clock (measured from when the last successful renewal was
//! *sent*, so it ends before the server's TTL, which is longer by a margin
//! for the server's clock: `store::server_ttl`), the hold is lost: `lost()`
//! resolves at once, and further releases report [`LockError::Lost`].
//!
//! On the coordinator path (a client without the fast path) the same
//! rewrites are `renew` requests instead of CAS writes, and reentrant holds
//! are counted by the hold alone (see [`Hold::write_via_coordinator`]).

use super::via_coordinator::Verdict;
use super::Inner;
use crate::error::{LockError, LostReason};
use crate::fence::FencingToken;
use crate::name::LockName;
use crate::record::LockRecord;
use crate::store::{CasError, Nonce, WriteId};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

/// Pause between renewal attempts after a transport error.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// Which rewrite of the record a hold is making.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// The renewer's renewal: retried until the lease would end.
    Renew,
    /// A reentrant acquisition or a partial release: a caller is waiting,
    /// so a few retries, then an error.
    Holds(&'static str),
}

/// A fresh grant, as the acquirer learned it.
pub(crate) struct Grant {
    /// The fencing token: the revision of the granting write.
    pub(crate) token: u64,
    /// The record's current revision (the token, unless it was rewritten
    /// since the grant).
    pub(crate) revision: u64,
    /// When the write that started the current lease was sent: the
    /// server's lease began no earlier.
    pub(crate) sent: Instant,
}

/// A hold's entry in the client's table of holds: the lock and the owner
/// that holds it (reentrant acquisitions look it up by both).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct HoldKey {
    pub(crate) name: LockName,
    pub(crate) owner: Arc<str>,
}

impl HoldKey {
    pub(crate) fn new(name: &LockName, owner: &str) -> Self {
        HoldKey {
            name: name.clone(),
            owner: owner.into(),
        }
    }
}

pub(crate) struct Hold {
    inner: Arc<Inner>,
    /// The lock name and the owner.
    key: HoldKey,
    token: FencingToken,
    ttl: Duration,
    nonce: Nonce,
    /// The record as granted; a rewrite writes it with this hold's token
    /// and hold count.
    record: Arc<LockRecord>,
    state: Mutex<HoldState>,
    lost: CancellationToken,
    lost_reason: OnceLock<LostReason>,
    /// Renew the lease (the default) or let it run out at its TTL.
    auto_renew: bool,
    /// When the renewer first looks at this hold.
    first_due: Instant,
    /// `HoldState::expires`, readable without waiting for a renewal in
    /// flight (which holds the state's lock until it lands or the lease
    /// ends): for [`LockGuard::deadline`].
    lease_end: std::sync::Mutex<Instant>,
    /// [`LockGuard::deadline`] as it stood when the hold was lost: the
    /// session's may be gone by then (it ended, or gave its holds up).
    deadline_at_loss: OnceLock<Instant>,
}

struct HoldState {
    /// The key's revision as last written by this hold.
    revision: u64,
    /// Live guards of this hold.
    holds: u32,
    /// Local lease end: send time of the last successful write + lease.
    expires: Instant,
    /// Once true nothing more is written.
    done: bool,
}

impl Hold {
    /// Starts holding `grant` and returns its first guard.
    pub(crate) fn start(
        inner: Arc<Inner>,
        name: LockName,
        grant: Grant,
        ttl: Duration,
        record: Arc<LockRecord>,
        auto_renew: bool,
    ) -> LockGuard {
        let Grant {
            token,
            revision,
            sent,
        } = grant;
        let token = FencingToken(token);
        let key = HoldKey {
            name,
            owner: record.owner.as_str().into(),
        };
        // The lease is counted from when the granting write was first sent:
        // the server's TTL starts on its arrival, which is later, so the
        // holder's deadline never outlives the server's.
        let expires = sent + ttl;
        let hold = Arc::new(Hold {
            nonce: Nonce::new(),
            inner,
            key,
            token,
            ttl,
            record,
            state: Mutex::new(HoldState {
                revision,
                holds: 1,
                expires,
                done: false,
            }),
            lost: CancellationToken::new(),
            lost_reason: OnceLock::new(),
            auto_renew,
            first_due: if auto_renew { sent + ttl / 3 } else { expires },
            lease_end: std::sync::Mutex::new(expires),
            deadline_at_loss: OnceLock::new(),
        });
        hold.inner
            .holds
            .insert(hold.key.clone(), Arc::downgrade(&hold));
        hold.inner.renewer.register(Arc::downgrade(&hold));
        LockGuard {
            hold,
            released: false,
        }
    }

    /// A reentrant acquisition: one more hold, written to the record (which
    /// also proves the lock is still ours and refreshes the lease).
    pub(crate) async fn reenter(hold: &Arc<Hold>) -> Result<LockGuard, LockError> {
        let mut state = hold.state.lock().await;
        hold.check(&state)?;
        let holds = state.holds + 1;
        hold.write(&mut state, holds, Rewrite::Holds("reenter"))
            .await?;
        state.holds = holds;
        debug!(lock = %hold.key.name, holds, "reentrant hold");
        Ok(LockGuard {
            hold: hold.clone(),
            released: false,
        })
    }

    fn check(&self, state: &HoldState) -> Result<(), LockError> {
        match self.lost_reason.get() {
            Some(reason) => Err(LockError::Lost {
                name: self.key.name.to_string(),
                reason: *reason,
            }),
            None if state.done => Err(LockError::Lost {
                name: self.key.name.to_string(),
                reason: LostReason::Taken,
            }),
            None => Ok(()),
        }
    }

    /// Rewrites the record with `holds`, renewing the lease.
    async fn write(
        &self,
        state: &mut HoldState,
        holds: u32,
        rewrite: Rewrite,
    ) -> Result<(), LockError> {
        if !self.inner.fast_path.on() {
            return self.write_via_coordinator(state, rewrite).await;
        }
        let record = LockRecord {
            holds,
            token: self.token.get(),
            ..(*self.record).clone()
        };
        let write_id = self.nonce.write_id('w', state.revision);
        let sent = Instant::now();
        let mut tries = 0;
        loop {
            let write = WriteId {
                id: &write_id,
                resend: tries > 0,
            };
            let put =
                self.inner
                    .store
                    .put(&self.key.name, &record, state.revision, self.ttl, write);
            match tokio::time::timeout_at(state.expires, put).await {
                Ok(Ok(w)) => {
                    state.revision = w.revision;
                    self.extend(state, sent + self.ttl);
                    return Ok(());
                }
                Ok(Err(CasError::Conflict { .. })) => {
                    self.mark_lost(state, LostReason::Taken);
                    return Err(self.lost_error(LostReason::Taken));
                }
                Ok(Err(CasError::Transport(source))) => {
                    if !self.inner.fast_path.on() {
                        // NATS refused the write: this user may not write
                        // the bucket (any more).
                        return self.write_via_coordinator(state, rewrite).await;
                    }
                    tries += 1;
                    self.after_failed_try(state, rewrite, tries, source).await?;
                }
                Err(_elapsed) => {
                    self.mark_lost(state, LostReason::Expired);
                    return Err(self.lost_error(LostReason::Expired));
                }
            }
        }
    }

    /// [`Hold::write`] on the coordinator path: a `renew` request, which
    /// proves the lock is still this session's under this token and
    /// restarts the lease. The record keeps the hold count its grant (or
    /// the last fast-path write) gave it; reentrant holds are counted here.
    async fn write_via_coordinator(
        &self,
        state: &mut HoldState,
        rewrite: Rewrite,
    ) -> Result<(), LockError> {
        let mut tries = 0;
        loop {
            // The coordinator writes after this: the server's lease ends
            // no earlier than `sent + ttl`.
            let sent = Instant::now();
            let renew =
                self.inner
                    .renew_via_coordinator(&self.key.name, self.token.get(), self.ttl);
            let reason = match tokio::time::timeout_at(state.expires, renew).await {
                Ok(Ok(Verdict::Done(()))) => {
                    self.extend(state, sent + self.ttl);
                    return Ok(());
                }
                Ok(Ok(Verdict::NotHolder)) => LostReason::Taken,
                Ok(Ok(Verdict::SessionExpired)) => LostReason::SessionExpired,
                Ok(Err(source)) => {
                    tries += 1;
                    self.after_failed_try(state, rewrite, tries, source).await?;
                    continue;
                }
                Err(_elapsed) => LostReason::Expired,
            };
            self.mark_lost(state, reason);
            return Err(self.lost_error(reason));
        }
    }

    /// After failed try number `tries` of a rewrite: gives up (a rewrite a
    /// caller waits for, after 3 tries) or pauses before the next try; the
    /// hold is lost when its lease ends first.
    async fn after_failed_try(
        &self,
        state: &mut HoldState,
        rewrite: Rewrite,
        tries: u32,
        source: async_nats::Error,
    ) -> Result<(), LockError> {
        if let Rewrite::Holds(op) = rewrite {
            if tries > 3 {
                return Err(LockError::Nats {
                    name: self.key.name.to_string(),
                    op,
                    source,
                });
            }
        }
        warn!(lock = %self.key.name, error = %source, "lock write failed; retrying");
        if tokio::time::timeout_at(state.expires, tokio::time::sleep(RENEW_RETRY))
            .await
            .is_err()
        {
            self.mark_lost(state, LostReason::Expired);
            return Err(self.lost_error(LostReason::Expired));
        }
        Ok(())
    }

    /// Gives up one hold: rewrites the count, or releases the lock when it
    /// was the last one.
    async fn release_one(&self) -> Result<(), LockError> {
        let mut state = self.state.lock().await;
        // A revoked holder may (and should) still release within its grace.
        let revoked_in_grace = !state.done && self.lost_reason.get() == Some(&LostReason::Revoked);
        if !revoked_in_grace {
            self.check(&state)?;
        }
        if state.holds > 1 {
            let holds = state.holds - 1;
            // The coordinator path counts reentrant holds here alone.
            if self.inner.fast_path.on() {
                self.write(&mut state, holds, Rewrite::Holds("release"))
                    .await?;
            }
            state.holds = holds;
            return Ok(());
        }
        // Last hold: whatever happens below, this hold writes no more.
        state.done = true;
        self.finish();
        let token = self.token.get();
        let link = &self.inner.link;
        let fast = self.inner.fast_path.on();
        // Set when the coordinator did not answer the release: it may
        // still have carried it out (handing the lock on).
        let mut asked_coordinator = false;
        if !fast || (link.is_contended(self.key.name.key(), token) && link.coordinated()) {
            // Someone waits: the coordinator hands the lock to the next
            // waiter in the same write that ends our hold. (On the
            // coordinator path it always releases.)
            link.forget_contended(self.key.name.key(), token);
            match self.release_via_coordinator(token).await {
                Ok(()) => return Ok(()),
                Err(e @ LockError::Lost { .. }) => return Err(e),
                // No answer: release directly (it conflicts harmlessly if
                // the coordinator did it after all).
                Err(e) if fast => {
                    asked_coordinator = true;
                    debug!(lock = %self.key.name, error = %e, "release through the coordinator failed")
                }
                // The server expires the lease.
                Err(e) => return Err(e),
            }
        }
        let write_id = self.nonce.write_id('x', state.revision);
        let marker_ttl = self.inner.options.marker_ttl;
        let mut tries = 0;
        loop {
            let write = WriteId {
                id: &write_id,
                resend: tries > 0,
            };
            match self
                .inner
                .store
                .release(&self.key.name, state.revision, marker_ttl, write)
                .await
            {
                Ok(w) => {
                    self.inner.remember_release(&self.key.name, w.revision);
                    debug!(lock = %self.key.name, token = %self.token, "released");
                    return Ok(());
                }
                // Our release landed after all and the lock has moved on
                // since: the coordinator carried out a release whose answer
                // was lost (a lame-duck server closed the connection), or
                // our own first try landed but its ack was lost and the
                // next holder wrote before this re-send. The hold was still
                // ours when this release began (not lost by our own
                // clock), so nobody else took it before.
                Err(CasError::Conflict { .. }) if asked_coordinator || tries > 0 => {
                    debug!(lock = %self.key.name, token = %self.token, "released by the coordinator");
                    return Ok(());
                }
                Err(CasError::Conflict { .. }) => {
                    self.set_lost(LostReason::Taken);
                    return Err(self.lost_error(LostReason::Taken));
                }
                Err(CasError::Transport(source)) => {
                    tries += 1;
                    if tries > 3 {
                        // The server will expire the lease.
                        return Err(LockError::Nats {
                            name: self.key.name.to_string(),
                            op: "release",
                            source,
                        });
                    }
                }
            }
        }
    }

    /// Releases the lock through the coordinator, until the record counts
    /// no hold: a record last written on the fast path may count more than
    /// this hold's last one (the fast path was turned off while reentrant
    /// holds were out).
    async fn release_via_coordinator(&self, token: u64) -> Result<(), LockError> {
        // Unstored, so the handoff is the owner change's only write: on
        // the fast path, and for a hold not known lost (the coordinator
        // drops an unstored release it does not see as this hold's; a
        // revoked hold's would only wait to be sent stored).
        let mut unstored = self.inner.fast_path.on()
            && self.inner.link.unstored.usable()
            && self.lost_reason.get().is_none();
        // Set when an unstored release went unanswered: the coordinator
        // may have carried it out and died (or been cut off) before its
        // answer.
        let mut unanswered = false;
        loop {
            let verdict = if unstored {
                match self.inner.release_unstored(&self.key.name, token).await {
                    // Unanswered: stored, under a new id.
                    Err(e) => {
                        debug!(lock = %self.key.name, error = %e, "unstored release unanswered");
                        unstored = false;
                        unanswered = true;
                        continue;
                    }
                    verdict => verdict,
                }
            } else {
                self.inner
                    .release_via_coordinator(&self.key.name, token)
                    .await
            };
            let reason = match verdict {
                Ok(Verdict::Done(0)) => return Ok(()),
                // Each release takes one hold off the record; the hold
                // was still there, so no earlier release ended it.
                Ok(Verdict::Done(_left)) => {
                    unanswered = false;
                    continue;
                }
                // After an unanswered unstored release, the hold was not
                // lost by our own clock when the release began and no
                // notice said so since: nobody took it before that
                // release, which was carried out (as for a conflict after
                // an unanswered release in `release_one`).
                Ok(Verdict::NotHolder) if unanswered && self.lost_reason.get().is_none() => {
                    debug!(lock = %self.key.name, token, "released by the coordinator");
                    return Ok(());
                }
                Ok(Verdict::NotHolder) => LostReason::Taken,
                Ok(Verdict::SessionExpired) => LostReason::SessionExpired,
                Err(source) => {
                    return Err(LockError::Nats {
                        name: self.key.name.to_string(),
                        op: "release",
                        source,
                    })
                }
            };
            self.set_lost(reason);
            return Err(self.lost_error(reason));
        }
    }

    /// A write landed: the local lease now ends at `expires`.
    fn extend(&self, state: &mut HoldState, expires: Instant) {
        state.expires = expires;
        *self.lease_end.lock().expect("never poisoned") = expires;
    }

    /// When the renewer should first look at this hold.
    pub(crate) fn first_due(&self) -> Instant {
        self.first_due
    }

    /// The renewer's visit: renew the lease (or, for a plain lease, fire
    /// `lost()` once it has run out). Returns when to come back, or `None`
    /// when the hold is finished.
    pub(crate) async fn tick(&self) -> Option<Instant> {
        let mut state = self.state.lock().await;
        if state.done {
            return None;
        }
        if !self.auto_renew {
            if Instant::now() < state.expires {
                return Some(state.expires);
            }
            self.mark_lost(&mut state, LostReason::Expired);
            return None;
        }
        let holds = state.holds;
        match self.write(&mut state, holds, Rewrite::Renew).await {
            Ok(()) => {
                debug!(lock = %self.key.name, revision = state.revision, "lease renewed");
                Some(Instant::now() + self.ttl / 3)
            }
            Err(e) => {
                info!(lock = %self.key.name, error = %e, "renewals stopped");
                None
            }
        }
    }

    /// The fencing token of this hold.
    pub(crate) fn token(&self) -> FencingToken {
        self.token
    }

    /// A coordinator says the lock is lost (`over`) or being revoked: fire
    /// `lost()`. During a revocation's grace period the hold can still
    /// release.
    pub(crate) fn lose(&self, reason: LostReason, over: bool) {
        if over {
            if let Ok(mut state) = self.state.try_lock() {
                state.done = true;
            }
        }
        self.set_lost(reason);
    }

    fn mark_lost(&self, state: &mut HoldState, reason: LostReason) {
        state.done = true;
        self.set_lost(reason);
    }

    fn set_lost(&self, reason: LostReason) {
        let _ = self.deadline_at_loss.set(self.deadline());
        if self.lost_reason.set(reason).is_ok() {
            warn!(lock = %self.key.name, token = %self.token, %reason, "lock lost");
            self.lost.cancel();
        }
        self.finish();
    }

    /// See [`LockGuard::deadline`].
    fn deadline(&self) -> Instant {
        if let Some(at) = self.deadline_at_loss.get() {
            return *at;
        }
        let lease_end = *self.lease_end.lock().expect("never poisoned");
        let session = self.inner.link.deadline();
        session.map_or(lease_end, |at| at.min(lease_end))
    }

    /// Forgets the hold for reentrancy (the renewer skips it once `done`).
    fn finish(&self) {
        self.inner
            .holds
            .remove_if(&self.key, |_, weak| std::ptr::eq(weak.as_ptr(), self));
    }

    fn lost_error(&self, reason: LostReason) -> LockError {
        LockError::Lost {
            name: self.key.name.to_string(),
            reason,
        }
    }
}

/// A held lock. Dropping it releases the hold (in the background);
/// [`LockGuard::release`] does it in the foreground and reports the result.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    hold: Arc<Hold>,
    released: bool,
}

impl LockGuard {
    /// The fencing token of this grant: pass it to every protected write.
    pub fn token(&self) -> FencingToken {
        self.hold.token
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.hold.key.name.as_str()
    }

    /// The owner id (pass it to `.owner()` to re-enter).
    pub fn owner(&self) -> &str {
        &self.hold.key.owner
    }

    /// The lease length.
    pub fn ttl(&self) -> Duration {
        self.hold.ttl
    }

    /// Resolves when the lock is lost (renewal failed, lease ran out,
    /// revoked, taken). Stop using the protected resource when it does.
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.hold.lost.clone().cancelled_owned()
    }

    /// True once the lock is lost, or its [`LockGuard::deadline`] has
    /// passed: a process that was stopped past it reads true as soon as it
    /// runs, before its timers fire `lost()`.
    pub fn is_lost(&self) -> bool {
        self.hold.lost.is_cancelled() || Instant::now() >= self.hold.deadline()
    }

    /// True once a coordinator told this holder that somebody waits for
    /// the lock (a `contended` notice, or waiters at the grant). Its last
    /// release then hands the lock on through the coordinator, in one
    /// write. A hint for holders that may give way sooner: it is not
    /// cleared when the waiters give up.
    pub fn contended(&self) -> bool {
        let hold = &self.hold;
        hold.inner
            .link
            .is_contended(hold.key.name.key(), hold.token.get())
    }

    /// Why the lock was lost, once it is.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.hold.lost_reason.get().copied()
    }

    /// When this client gives the lock up by its own monotonic clock unless
    /// something lands first: the earlier of the lease's local end (send
    /// time of the last successful write + lease; a renewal moves it on)
    /// and the session's deadline (a tenth of the session timeout before a
    /// coordinator could declare it dead, or of the reconnect grace after
    /// the connection dropped; a confirmed heartbeat moves it on). Once the
    /// hold is lost it stays what it was at the loss. `lost()` fires there (`Expired`, `Unconfirmed`) while the
    /// process runs. A process that was stopped past it (SIGSTOP, a long
    /// pause) cannot act until it runs again; `is_lost()` compares with it,
    /// so check `is_lost()` before each protected call you cannot fence.
    pub fn deadline(&self) -> std::time::Instant {
        self.hold.deadline().into_std()
    }

    /// Releases this hold. With reentrant holds outstanding, the lock stays
    /// held by the others. [`LockError::Lost`] when the lock had already
    /// been lost: writes made since then were fenced off.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.hold.release_one().await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let hold = self.hold.clone();
        // Without a runtime nothing can be sent (and nothing renews): the
        // server expires the lease.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = hold.release_one().await;
            });
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.hold.key.name.as_str())
            .field("owner", &self.hold.key.owner)
            .field("token", &self.hold.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}
