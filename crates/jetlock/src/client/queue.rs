//! Waiting for a contended lock in a coordinator's FIFO queue.
//!
//! The acquire request goes to the request stream (stored before it is
//! acknowledged, de-duplicated by its message id, so the publish can be
//! retried); the answer arrives on the session's subject. The coordinator
//! grants in arrival order by one CAS write from the holder to us, so the
//! lease starts at that write. We only know it happened after our publish,
//! so the local lease is counted from the publish; when the wait was long
//! compared with the lease, one renewal right away restarts it from a known
//! time instead.
//!
//! A client without the fast path (see `fast_path.rs`) comes here for every
//! acquire, free lock or not, and its try-locks too (`wait_ms` 0).

use super::attempt::{timeout, Attempt, Wait};
use super::guard::{Grant, Hold, LockGuard};
use super::session::{SessionLink, ANSWER_GRACE};
use super::via_coordinator::Verdict;
use crate::error::{Holder, LockError};
use crate::fence::FencingToken;
use crate::protocol::{self, Answer, ErrorCode, Op};
use crate::record::LockRecord;
use crate::store::{CasError, WriteId};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// The longest single wait asked of a coordinator; a caller that waits
/// forever asks again after it (and goes to the back of the queue).
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10 * 60);

pub(crate) async fn acquire(
    attempt: &Attempt,
    wait: Wait,
    started: Instant,
) -> Result<LockGuard, LockError> {
    let inner = &attempt.inner;
    let name = &attempt.name;
    loop {
        let left = match wait {
            Wait::Until(at) => at.saturating_duration_since(Instant::now()),
            Wait::Forever => MAX_QUEUE_WAIT,
            Wait::No => Duration::ZERO,
        };
        let id = protocol::new_request_id();
        let answer = inner.link.expect(&id);
        // Until the answer is in, dropping this future cancels the request.
        let mut pending = Pending {
            link: inner.link.clone(),
            js: inner.js.clone(),
            key: name.as_str().to_owned(),
            id: Some(id.clone()),
        };
        let body = SessionLink::acquire_body(
            &id,
            name.as_str(),
            &attempt.payload.owner,
            attempt.ttl,
            left,
        );
        let sent = Instant::now();
        let mut tries = 0;
        // A re-publish with the same message id is stored once.
        while let Err(source) = inner
            .link
            .send(&inner.js, Op::Acquire, name.as_str(), &id, body.clone())
            .await
        {
            tries += 1;
            debug!(lock = %name, error = %source, tries, "acquire request not stored");
            if !wait.retry_after_transport_error(tries).await {
                return Err(LockError::Nats {
                    name: name.to_string(),
                    op: "acquire",
                    source,
                });
            }
        }
        let answer = match tokio::time::timeout(left + ANSWER_GRACE, answer).await {
            Ok(Ok(answer)) => answer,
            // No answer in time (no coordinator took over), or the link
            // stopped: `pending` cancels the request on drop.
            Ok(Err(_)) | Err(_) => return Err(timeout(name, started)),
        };
        pending.id = None;
        match answer {
            Answer::Granted { token, waiters, .. } => {
                if waiters > 0 {
                    inner.link.set_contended(name.key(), token);
                }
                return granted(attempt, token, sent).await;
            }
            Answer::Error {
                code,
                message,
                holder,
                ..
            } => match code {
                ErrorCode::Timeout if matches!(wait, Wait::Forever) => continue,
                ErrorCode::Timeout => return Err(timeout(name, started)),
                // Asked to wait, and the wait was over when the request went
                // out (0 ms left, which the coordinator takes for a
                // try-lock): the wait ran out, as the caller was promised.
                ErrorCode::Busy if !matches!(wait, Wait::No) => return Err(timeout(name, started)),
                ErrorCode::Busy => {
                    return Err(LockError::Busy {
                        name: name.to_string(),
                        holder: holder.map(|h| Holder {
                            owner: h.owner,
                            session: h.session,
                            token: FencingToken(h.token),
                            holds: h.holds,
                            lease: Duration::ZERO,
                        }),
                    })
                }
                ErrorCode::SessionExpired => return Err(LockError::SessionExpired),
                code => {
                    return Err(LockError::Refused {
                        name: name.to_string(),
                        op: "acquire",
                        code,
                        message,
                    })
                }
            },
            other => {
                return Err(LockError::Refused {
                    name: name.to_string(),
                    op: "acquire",
                    code: ErrorCode::Internal,
                    message: format!("unexpected answer {other:?}"),
                })
            }
        }
    }
}

/// Builds the guard of a queued grant.
async fn granted(attempt: &Attempt, token: u64, sent: Instant) -> Result<LockGuard, LockError> {
    let inner = &attempt.inner;
    let record = Arc::new(LockRecord {
        token,
        ..(*attempt.payload).clone()
    });
    let mut revision = token;
    let mut lease_from = sent;
    // After a long wait, `sent + ttl` may be close or past although the
    // server's lease just began: restart it from a known time.
    if sent.elapsed() > attempt.ttl / 3 && !inner.fast_path.on() {
        let renew_sent = Instant::now();
        let verdict = inner
            .renew_via_coordinator(&attempt.name, token, attempt.ttl)
            .await;
        match verdict {
            Ok(Verdict::Done(())) => lease_from = renew_sent,
            Ok(Verdict::NotHolder) => {
                return Err(LockError::Lost {
                    name: attempt.name.to_string(),
                    reason: crate::error::LostReason::Taken,
                })
            }
            Ok(Verdict::SessionExpired) => return Err(LockError::SessionExpired),
            Err(source) => return Err(give_back(attempt, token, source).await),
        }
    } else if sent.elapsed() > attempt.ttl / 3 {
        let renew_sent = Instant::now();
        let write_id = format!("{}.g{token}", nuid::next());
        let write = WriteId {
            id: &write_id,
            resend: false,
        };
        match inner
            .store
            .put(&attempt.name, &record, token, attempt.ttl, write)
            .await
        {
            Ok(w) => {
                revision = w.revision;
                lease_from = renew_sent;
            }
            Err(CasError::Conflict { .. }) => {
                return Err(LockError::Lost {
                    name: attempt.name.to_string(),
                    reason: crate::error::LostReason::Taken,
                })
            }
            Err(CasError::Transport(source)) => return Err(give_back(attempt, token, source).await),
        }
    }
    Ok(Hold::start(
        inner.clone(),
        attempt.name.clone(),
        Grant {
            token,
            revision,
            sent: lease_from,
        },
        attempt.ttl,
        record,
        attempt.auto_renew,
    ))
}

/// The lock may be ours for a lease we cannot time: gives it back rather
/// than hold it blind, and reports `source`.
async fn give_back(attempt: &Attempt, token: u64, source: async_nats::Error) -> LockError {
    let _ = attempt
        .inner
        .release_via_coordinator(&attempt.name, token)
        .await;
    LockError::Nats {
        name: attempt.name.to_string(),
        op: "acquire",
        source,
    }
}

/// A request whose answer is still awaited; dropped early, it withdraws
/// the request (and a grant that still comes is released by the link).
struct Pending {
    link: Arc<SessionLink>,
    js: async_nats::jetstream::Context,
    key: String,
    id: Option<String>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        self.link.abandon(&id);
        let (link, js, key) = (self.link.clone(), self.js.clone(), self.key.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { link.cancel(&js, &key, &id).await });
        }
    }
}
