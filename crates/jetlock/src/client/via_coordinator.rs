//! Renewals and releases as coordinator requests: how a held lock is kept
//! and given back on the coordinator path (always, for a client without the
//! fast path; for releases with waiters behind them, on the fast path too).
//!
//! Each request is stored by the request stream before it is acknowledged
//! and answered on the session's subject; the coordinator that owns the
//! lock checks the session and token and makes the CAS write. Each try uses
//! a new request id: a re-send under the same id would be de-duplicated by
//! the stream and, if the first answer was lost, never answered.
//!
//! On the fast path a release with waiters behind it goes unstored instead
//! (core NATS, `jetlock.now.release.<session>`), so the handoff CAS is the
//! owner change's only write. Nothing keeps an unstored release: when no
//! answer comes, the release is sent again stored (`guard.rs`), and the
//! session stores its releases for a while.

use super::session::ANSWER_GRACE;
use super::Inner;
use crate::name::LockName;
use crate::protocol::{self, Answer, ErrorCode, Op, ReleaseBody, RenewBody, VERSION};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long an unstored release waits for its answer before it is sent
/// again stored. A coordinator answers in a round trip and a CAS; one
/// that has not taken the key over yet (or a user not allowed to publish
/// the subject) never answers.
const UNSTORED_GRACE: Duration = Duration::from_millis(500);
/// Unstored releases stop this long after one went unanswered.
const UNSTORED_BACKOFF: Duration = Duration::from_secs(60);
/// And while a coordinator that does not serve them answered a heartbeat
/// this recently.
const UNSERVED_MEMORY: Duration = Duration::from_secs(10);

/// Whether this session sends its releases unstored: only while every
/// coordinator that answers its heartbeats serves them (protocol 1.8), and
/// not for a while after one went unanswered.
#[derive(Debug, Default)]
pub(crate) struct Unstored {
    seen: Mutex<UnstoredSeen>,
}

#[derive(Debug, Default)]
struct UnstoredSeen {
    served: bool,
    unserved_at: Option<Instant>,
    failed_at: Option<Instant>,
}

impl Unstored {
    /// A heartbeat answer said whether its coordinator serves them.
    pub(crate) fn heard(&self, served: bool) {
        let mut seen = self.seen.lock().expect("never poisoned");
        if served {
            seen.served = true;
        } else {
            seen.unserved_at = Some(Instant::now());
        }
    }

    pub(crate) fn usable(&self) -> bool {
        let seen = self.seen.lock().expect("never poisoned");
        let now = Instant::now();
        seen.served
            && seen
                .unserved_at
                .is_none_or(|at| now.duration_since(at) > UNSERVED_MEMORY)
            && seen
                .failed_at
                .is_none_or(|at| now.duration_since(at) > UNSTORED_BACKOFF)
    }

    fn failed(&self) {
        self.seen.lock().expect("never poisoned").failed_at = Some(Instant::now());
    }
}

/// A coordinator's verdict on a request about a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict<T> {
    Done(T),
    /// The lock is not held by this session under this token (any more).
    NotHolder,
    /// The coordinators declared this session dead.
    SessionExpired,
}

impl Inner {
    /// Sends one request and waits for its final answer.
    async fn ask(
        &self,
        op: Op,
        name: &LockName,
        id: &str,
        body: Vec<u8>,
    ) -> Result<Answer, async_nats::Error> {
        let answer = self.link.expect(id);
        if let Err(e) = self.link.send(&self.js, op, name.as_str(), id, body).await {
            self.link.abandon(id);
            return Err(e);
        }
        let answer = tokio::time::timeout(ANSWER_GRACE, answer).await;
        self.link.abandon(id);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err("the session link stopped".into()),
            Err(_) => Err(format!("no coordinator answered the {}", op.as_str()).into()),
        }
    }

    /// Releases one hold of `token` through the coordinator, which hands
    /// the lock to the next waiter. `Done(holds)`: released, `holds` left in
    /// the record (0: the lock is free or handed on).
    pub(crate) async fn release_via_coordinator(
        &self,
        name: &LockName,
        token: u64,
    ) -> Result<Verdict<u32>, async_nats::Error> {
        let (id, body) = release_body(name, token)?;
        released(self.ask(Op::Release, name, &id, body).await?)
    }

    /// Releases `token` by an unstored release; an error when no answer
    /// came in time.
    pub(crate) async fn release_unstored(
        &self,
        name: &LockName,
        token: u64,
    ) -> Result<Verdict<u32>, async_nats::Error> {
        let (id, body) = release_body(name, token)?;
        let answer = self.link.expect(&id);
        let subject = self.link.unstored_release_subject(name);
        if let Err(e) = self.nats.publish(subject, body.into()).await {
            self.link.abandon(&id);
            return Err(e.into());
        }
        let answer = tokio::time::timeout(UNSTORED_GRACE, answer).await;
        self.link.abandon(&id);
        match answer {
            Ok(Ok(answer)) => released(answer),
            Ok(Err(_)) => Err("the session link stopped".into()),
            Err(_) => {
                self.link.unstored.failed();
                Err("no coordinator answered the unstored release".into())
            }
        }
    }

    /// Renews the lease of `token` for `ttl` through the coordinator.
    pub(crate) async fn renew_via_coordinator(
        &self,
        name: &LockName,
        token: u64,
        ttl: Duration,
    ) -> Result<Verdict<()>, async_nats::Error> {
        let id = protocol::new_request_id();
        let body = serde_json::to_vec(&RenewBody {
            v: VERSION,
            id: id.clone(),
            key: name.as_str().to_owned(),
            token,
            ttl_ms: Some(ttl.as_millis() as u64),
        })?;
        match self.ask(Op::Renew, name, &id, body).await? {
            Answer::Renewed { .. } => Ok(Verdict::Done(())),
            other => refusal(other, "renew"),
        }
    }
}

/// A release request with a new id: the id and the body.
fn release_body(name: &LockName, token: u64) -> Result<(String, Vec<u8>), async_nats::Error> {
    let id = protocol::new_request_id();
    let body = serde_json::to_vec(&ReleaseBody {
        v: VERSION,
        id: id.clone(),
        key: name.as_str().to_owned(),
        token,
    })?;
    Ok((id, body))
}

/// The verdict of a release's answer.
fn released(answer: Answer) -> Result<Verdict<u32>, async_nats::Error> {
    match answer {
        Answer::Released { holds, .. } => Ok(Verdict::Done(holds)),
        other => refusal(other, "release"),
    }
}

/// An answer that is not the success of `op`.
fn refusal<T>(answer: Answer, op: &str) -> Result<Verdict<T>, async_nats::Error> {
    match answer {
        Answer::Error {
            code: ErrorCode::NotHolder | ErrorCode::StaleToken,
            ..
        } => Ok(Verdict::NotHolder),
        Answer::Error {
            code: ErrorCode::SessionExpired,
            ..
        } => Ok(Verdict::SessionExpired),
        other => Err(format!("unexpected answer to a {op}: {other:?}").into()),
    }
}
