//! Atomic multi-key acquisition: `client.lock_all([a, b]).atomic()`.
//!
//! Every key of the set is granted by one atomic batch of CAS writes
//! (`store/batch.rs`), or none is: the client never holds part of the set,
//! not even while it waits. Each key's message is the record a single grant
//! writes (token 0; the token is the revision the message got), so the
//! guards are ordinary [`LockGuard`]s: renewal, release, the loss signal and
//! fencing work as for any grant.
//!
//! 1. **Batch** — expecting each key's hint (the release marker this
//!    session last wrote for it, or 0). A free set costs one round trip.
//! 2. **Read** — on conflict, read every key. All vacant: the batch again
//!    with their revisions (three times in a row at most, then 3.).
//! 3. **Wait** — watch the held keys from after the revision read, and
//!    send the batch again once each one's newest change is a vacancy. No
//!    polling. After three lost races, watch every key and send again at
//!    the next change, or after a second.
//!
//! The coordinators' queues: like the fast path, an atomic acquire writes a
//! key only when it finds it vacant, and a coordinator's handoff never
//! leaves a key vacant, so the batch never overtakes a queued waiter. It
//! cannot join a queue either (a queue orders one key), so while queued
//! waiters keep a key busy it waits, up to its deadline. A client that may
//! not write the bucket (fast path off) cannot send a batch at all:
//! [`LockError::NotAtomic`].

use super::acquire::read;
use super::attempt::{within, Attempt, Wait, TRANSPORT_RETRIES};
use super::guard::LockGuard;
use super::Inner;
use crate::clock::unix_ms;
use crate::error::LockError;
use crate::name::LockName;
use crate::record::LockRecord;
use crate::store::{BatchError, BatchPut, Current, Nonce, WriteId, Written};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, instrument};

/// How long a wait after lost races (every key vacant, the batch refused
/// all the same) waits for a change before sending again.
const LOST_RACE_PAUSE: Duration = Duration::from_secs(1);

/// Acquires every lock of `names` (sorted, without duplicates) in one write.
#[instrument(level = "debug", skip_all, fields(locks = names.len(), session = %inner.session))]
pub(super) async fn acquire(
    inner: &Arc<Inner>,
    names: &[LockName],
    ttl: Duration,
    wait: Wait,
) -> Result<Vec<LockGuard>, LockError> {
    let refuse = |reason: String| LockError::NotAtomic {
        names: names.iter().map(ToString::to_string).collect(),
        reason,
    };
    let Some(first) = names.first() else {
        return Ok(Vec::new());
    };
    if !inner.fast_path.on() {
        return Err(refuse(
            "this client may not write the locks bucket (fast path off), and coordinators grant one key at a time".into(),
        ));
    }
    if inner.link.ended() {
        return Err(LockError::SessionExpired);
    }
    if !inner.store.in_one_bucket(names.iter()) {
        return Err(refuse(BatchError::Apart.to_string()));
    }
    match inner.store.takes_atomic_batches(first).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(refuse(format!(
                "stream {} does not allow atomic batches (needs nats-server 2.12+; `jetlock setup` turns allow_atomic on)",
                inner.store.kv_of(first).stream_name
            )))
        }
        Err(source) => {
            return Err(LockError::Nats {
                name: first.to_string(),
                op: "atomic acquire",
                source,
            })
        }
    }
    let started = Instant::now();
    let set = AtomicSet::new(inner, names, ttl);
    let mut expected: Vec<u64> = names.iter().map(|n| inner.take_hint(n)).collect();
    let mut round = 0;
    let mut races = 0;
    loop {
        round += 1;
        match set.cas(&expected, round, wait).await {
            Ok(Some(granted)) => {
                debug!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "all granted"
                );
                let guards = set.granted(granted);
                // As in `acquire.rs`: a session no coordinator confirmed
                // may be dead already; the guards are dropped (released).
                if inner.link.ended() {
                    drop(guards);
                    return Err(LockError::SessionExpired);
                }
                return Ok(guards);
            }
            Ok(None) => {}
            Err(Refusal::Unsupported(reason)) => return Err(refuse(reason)),
            Err(Refusal::Failed(e)) => return Err(e),
        }
        let current =
            futures::future::try_join_all(names.iter().map(|n| read(inner, n, wait))).await?;
        let vacant = current.iter().all(|c| matches!(c, Current::Vacant { .. }));
        races = if vacant { races + 1 } else { 0 };
        expected = if vacant && races < 3 {
            current.iter().map(revision).collect()
        } else {
            set.wait_for_vacancy(current, wait, started).await?
        };
    }
}

/// Why a batch was not sent or did not land, beyond a conflict.
enum Refusal {
    /// The bucket does not take it ([`BatchError::Unsupported`]).
    Unsupported(String),
    Failed(LockError),
}

/// One atomic acquisition: a grant write per key, in key order.
#[derive(Clone)]
struct AtomicSet {
    attempts: Vec<Attempt>,
    nonce: Nonce,
    ttl: Duration,
}

impl AtomicSet {
    fn new(inner: &Arc<Inner>, names: &[LockName], ttl: Duration) -> Self {
        let nonce = Nonce::new();
        // One owner for the whole set: operators see one holder of all
        // its keys.
        let owner = inner.default_owner();
        let payload = Arc::new(LockRecord {
            owner,
            session: inner.session.clone(),
            acquired_ms: unix_ms(),
            lease_ms: ttl.as_millis() as u64,
            holds: 1,
            token: 0,
        });
        let attempts = names
            .iter()
            .map(|name| Attempt {
                inner: inner.clone(),
                name: name.clone(),
                nonce,
                payload: payload.clone(),
                ttl,
                auto_renew: true,
            })
            .collect();
        AtomicSet {
            attempts,
            nonce,
            ttl,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.attempts[0].inner
    }

    fn puts<'a>(&'a self, expected: &[u64]) -> Vec<BatchPut<'a>> {
        self.attempts
            .iter()
            .zip(expected)
            .map(|(a, &expected)| BatchPut {
                name: &a.name,
                record: &a.payload,
                expected,
            })
            .collect()
    }

    /// One batch expecting `expected` (round `round` of this acquisition):
    /// `Some` when granted, with when it was first sent (the server's
    /// leases run from its arrival, never earlier), `None` on conflict.
    async fn cas(
        &self,
        expected: &[u64],
        round: u32,
        wait: Wait,
    ) -> Result<Option<(Vec<Written>, Instant)>, Refusal> {
        let write_id = format!("{}.b{round}", self.nonce);
        let puts = self.puts(expected);
        let inner = self.inner();
        // Armed while an earlier send may have landed and nobody knows.
        let mut inflight = Inflight(Some((self, expected, &write_id)));
        let first_sent = Instant::now();
        let mut maybe_landed = false;
        let mut tries = 0;
        let result = loop {
            let write = WriteId {
                id: &write_id,
                resend: maybe_landed,
            };
            let error = match inner.store.put_all(&puts, self.ttl, write).await {
                Ok(w) => break Ok(Some((w, first_sent))),
                Err(BatchError::Conflict) => break Ok(None),
                Err(BatchError::Unsupported(reason)) => break Err(Refusal::Unsupported(reason)),
                Err(e @ BatchError::Apart) => break Err(Refusal::Unsupported(e.to_string())),
                // Nothing was written: send again, as after a lost send.
                Err(BatchError::Dropped(e)) => e.into(),
                Err(BatchError::Transport(e)) => {
                    maybe_landed = true;
                    e
                }
            };
            tries += 1;
            debug!(error = %error, tries, "atomic batch failed to land");
            if !inner.fast_path.on() || !wait.retry_after_transport_error(tries).await {
                if !maybe_landed {
                    inflight.0 = None;
                }
                return Err(Refusal::Failed(LockError::Nats {
                    name: self.attempts[0].name.to_string(),
                    op: "atomic acquire",
                    source: error,
                }));
            }
        };
        inflight.0 = None;
        result
    }

    fn granted(&self, (written, sent): (Vec<Written>, Instant)) -> Vec<LockGuard> {
        self.attempts
            .iter()
            .zip(written)
            .map(|(a, w)| a.granted((w, sent)))
            .collect()
    }

    /// Waits until the keys held in `current` (every key when none is:
    /// then for a change first) show a vacancy, and returns the expected
    /// revisions of the next batch.
    async fn wait_for_vacancy(
        &self,
        mut current: Vec<Current>,
        wait: Wait,
        started: Instant,
    ) -> Result<Vec<u64>, LockError> {
        let inner = self.inner();
        let held: Vec<usize> = (0..current.len())
            .filter(|&i| matches!(current[i], Current::Held { .. }))
            .collect();
        let mut changed = !held.is_empty();
        // With every key vacant the lost races came from writes that are
        // on their way (a watcher shows them) or that failed on the server
        // (none will): then the batch goes again after a second.
        let patience = (!changed).then(|| Instant::now() + LOST_RACE_PAUSE);
        let watched = if changed {
            held
        } else {
            (0..current.len()).collect()
        };
        let mut from: Vec<u64> = watched.iter().map(|&i| revision(&current[i]) + 1).collect();
        let subscribe = |k: usize, from: u64| {
            inner
                .watchers
                .subscribe(&inner.store, &self.attempts[watched[k]].name, from)
        };
        let mut seen: Vec<_> = (0..watched.len()).map(|k| subscribe(k, from[k])).collect();
        debug!(watched = watched.len(), "waiting for the set to be free");
        loop {
            for (k, rx) in seen.iter_mut().enumerate() {
                let latest = rx
                    .borrow_and_update()
                    .latest
                    .clone()
                    .filter(|(revision, _)| *revision >= from[k]);
                if let Some((revision, now)) = latest {
                    from[k] = revision + 1;
                    changed = true;
                    current[watched[k]] = now.map_err(|source| LockError::Corrupt {
                        name: self.attempts[watched[k]].name.to_string(),
                        source,
                    })?;
                }
            }
            let free = watched
                .iter()
                .all(|&i| matches!(current[i], Current::Vacant { .. }));
            if changed && free {
                return Ok(current.iter().map(revision).collect());
            }
            let until = match (wait.deadline(), patience) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let outcome = {
                let changes = seen.iter_mut().map(|rx| Box::pin(rx.changed()));
                within(until, futures::future::select_all(changes))
                    .await
                    .map(|(result, k, _)| (result.is_ok(), k))
            };
            match outcome {
                Some((true, _)) => {}
                None if patience.is_some_and(|at| Instant::now() >= at)
                    && wait.deadline().is_none_or(|at| Instant::now() < at) =>
                {
                    return Ok(current.iter().map(revision).collect());
                }
                // A watcher stops only with nobody subscribed: not reached
                // while this wait holds on; start another all the same.
                Some((false, k)) => seen[k] = subscribe(k, from[k]),
                None => {
                    let blocking = watched
                        .iter()
                        .position(|&i| matches!(current[i], Current::Held { .. }))
                        .unwrap_or(0);
                    let name = self.attempts[watched[blocking]].name.to_string();
                    let failing = seen[blocking].borrow().failing.clone();
                    return Err(match failing {
                        Some(e) => LockError::Nats {
                            name,
                            op: "watch",
                            source: e.into(),
                        },
                        None => LockError::Timeout {
                            name,
                            waited: started.elapsed(),
                        },
                    });
                }
            }
        }
    }
}

/// The CAS precondition a key's state gives (for a held key, a revision
/// the next batch will conflict with, as it must).
fn revision(current: &Current) -> u64 {
    match current {
        Current::Vacant { revision } | Current::Held { revision, .. } => *revision,
    }
}

/// Settles a batch whose outcome is unknown (the future was dropped
/// mid-send, or NATS stopped answering): sends it again with the same
/// write id and releases every key it finds granted, so a cancelled atomic
/// acquire leaves no key held until its lease runs out.
struct Inflight<'a>(Option<(&'a AtomicSet, &'a [u64], &'a str)>);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let Some((set, expected, write_id)) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the leases expire on the server.
        };
        let (set, expected, write_id) = (set.clone(), expected.to_vec(), write_id.to_owned());
        runtime.spawn(async move {
            let inner = set.inner();
            let puts = set.puts(&expected);
            let write = WriteId {
                id: &write_id,
                resend: true,
            };
            let settle = async {
                for _ in 0..TRANSPORT_RETRIES {
                    match inner.store.put_all(&puts, set.ttl, write).await {
                        Ok(written) => {
                            let release_id = format!("{write_id}.x");
                            let release = WriteId {
                                id: &release_id,
                                resend: true,
                            };
                            for (put, w) in puts.iter().zip(written) {
                                let _ = inner
                                    .store
                                    .release(
                                        put.name,
                                        w.revision,
                                        inner.options.marker_ttl,
                                        release,
                                    )
                                    .await;
                            }
                            return;
                        }
                        Err(
                            BatchError::Conflict | BatchError::Unsupported(_) | BatchError::Apart,
                        ) => return,
                        Err(BatchError::Dropped(_) | BatchError::Transport(_)) => {}
                    }
                }
            };
            // Bounded: after the lease the server has expired it anyway.
            let _ = tokio::time::timeout(set.ttl, settle).await;
        });
    }
}
