//! One acquisition's compare-and-swap writes, shared by the fast path
//! (`acquire.rs`) and the queued acquire through the coordinators
//! (`queue.rs`): how long to wait ([`Wait`]), the write itself
//! ([`Attempt`]), and settling a write whose outcome is unknown.

use super::guard::{Grant, Hold, LockGuard};
use super::Inner;
use crate::error::LockError;
use crate::name::LockName;
use crate::record::LockRecord;
use crate::store::{CasError, Nonce, WriteId, Written};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// How often a try-lock re-sends after a transport error (re-sends are
/// safe: a re-send recognises its own landed write by its write id). A waiting acquisition keeps
/// retrying, with backoff, until its deadline: a leader election mid-request
/// costs the caller time, not an error.
pub(super) const TRANSPORT_RETRIES: u32 = 3;

/// How long to wait for a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Try once.
    No,
    Until(Instant),
    Forever,
}

impl Wait {
    pub(crate) fn from_timeout(timeout: Option<Duration>) -> Self {
        match timeout {
            Some(d) => Wait::Until(Instant::now() + d),
            None => Wait::Forever,
        }
    }

    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Until(at) => Some(at),
            _ => None,
        }
    }

    /// After `tries` failed sends, whether to send again (after a backoff
    /// that doubles from 25 ms to at most 1 s, cut short by the deadline).
    pub(crate) async fn retry_after_transport_error(self, tries: u32) -> bool {
        let give_up = match self {
            Wait::No => tries > TRANSPORT_RETRIES,
            Wait::Until(at) => Instant::now() >= at,
            Wait::Forever => false,
        };
        if give_up {
            return false;
        }
        let pause = Duration::from_millis(25 << tries.min(6)).min(Duration::from_secs(1));
        within(self.deadline(), tokio::time::sleep(pause))
            .await
            .is_some()
    }
}

/// One acquisition's CAS writes.
#[derive(Clone)]
pub(crate) struct Attempt {
    pub(crate) inner: Arc<Inner>,
    pub(crate) name: LockName,
    pub(super) nonce: Nonce,
    /// Shared with the hold it grants, which rewrites it.
    pub(crate) payload: Arc<LockRecord>,
    pub(crate) ttl: Duration,
    pub(crate) auto_renew: bool,
}

impl Attempt {
    fn write_id(&self, expected: u64) -> String {
        self.nonce.write_id('a', expected)
    }

    /// One CAS expecting `expected`: `Some` when granted (with when the
    /// winning message was first sent: the server's lease runs from its
    /// arrival, never earlier), `None` on conflict.
    pub(super) async fn cas(
        &self,
        expected: u64,
        wait: Wait,
    ) -> Result<Option<(Written, Instant)>, LockError> {
        let write_id = self.write_id(expected);
        // Armed until the outcome is known; it only copies the attempt if
        // it has to settle it (the acquire future was dropped mid-send).
        let mut inflight = Inflight(Some((self, expected)));
        let first_sent = Instant::now();
        let mut tries = 0;
        let result = loop {
            // A re-send that finds our first send landed (still the key's
            // last message) is the grant.
            let write = WriteId {
                id: &write_id,
                resend: tries > 0,
            };
            let put = self
                .inner
                .store
                .put(&self.name, &self.payload, expected, self.ttl, write);
            match put.await {
                Ok(w) => break Ok(Some((w, first_sent))),
                Err(CasError::Conflict { .. }) => break Ok(None),
                Err(CasError::Transport(source)) => {
                    tries += 1;
                    debug!(lock = %self.name, error = %source, tries, "acquire CAS failed to send");
                    // A refused write is not retried: see `fast_path.rs`.
                    if !self.inner.fast_path.on() || !wait.retry_after_transport_error(tries).await
                    {
                        // Leave `inflight` armed: its task settles the write.
                        return Err(LockError::Nats {
                            name: self.name.to_string(),
                            op: "acquire",
                            source,
                        });
                    }
                }
            }
        };
        inflight.0 = None;
        result
    }

    pub(super) fn granted(&self, (w, sent): (Written, Instant)) -> LockGuard {
        debug!(lock = %self.name, token = w.revision, "granted");
        Hold::start(
            self.inner.clone(),
            self.name.clone(),
            Grant {
                token: w.revision,
                revision: w.revision,
                sent,
            },
            self.ttl,
            self.payload.clone(),
            self.auto_renew,
        )
    }
}

/// Settles a CAS whose outcome is unknown (the future was dropped mid-way,
/// or NATS stopped answering): re-send it and release whatever it granted.
struct Inflight<'a>(Option<(&'a Attempt, u64)>);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let Some((attempt, expected)) = self.0.take() else {
            return;
        };
        let attempt = attempt.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the lease expires on the server.
        };
        runtime.spawn(async move {
            let Attempt {
                inner,
                name,
                payload,
                ttl,
                ..
            } = &attempt;
            let write_id = attempt.write_id(expected);
            // The first send may have landed: every send here is a re-send.
            let write = WriteId {
                id: &write_id,
                resend: true,
            };
            let settle = async {
                for _ in 0..TRANSPORT_RETRIES {
                    match inner.store.put(name, payload, expected, *ttl, write).await {
                        Ok(w) => {
                            let marker_ttl = inner.options.marker_ttl;
                            let release_id = format!("{write_id}.x");
                            let release = WriteId {
                                id: &release_id,
                                resend: true,
                            };
                            let _ = inner
                                .store
                                .release(name, w.revision, marker_ttl, release)
                                .await;
                            return;
                        }
                        Err(CasError::Conflict { .. }) => return,
                        Err(CasError::Transport(_)) => {}
                    }
                }
            };
            // Bounded: after the lease the server has expired it anyway.
            let _ = tokio::time::timeout(*ttl, settle).await;
        });
    }
}

pub(super) async fn within<F: std::future::Future>(
    deadline: Option<Instant>,
    f: F,
) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, f).await.ok(),
        None => Some(f.await),
    }
}

pub(crate) fn timeout(name: &LockName, started: Instant) -> LockError {
    LockError::Timeout {
        name: name.to_string(),
        waited: started.elapsed(),
    }
}
