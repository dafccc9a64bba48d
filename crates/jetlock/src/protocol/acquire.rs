//! `acquire` (and `preempt`, the same body on its own subject).

use super::request::present;
use super::request::{body, Checks};
use super::{ErrorCode, Op, Request, WireError};
use crate::name::{part, LockName, Part};
use serde::{Deserialize, Serialize};

/// `acquire`: take the lock, or join its queue for at most `wait_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    /// Reentrancy identity inside the session (default: the session id).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub owner: Option<String>,
    /// The lease (default 10 s).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_ms: Option<u64>,
    /// How long to wait in the queue; 0 (the default) is a try-lock.
    #[serde(default)]
    pub wait_ms: u64,
    /// Only `true` on the `preempt` subject: there the holder is asked to
    /// give way (a `revoke_notice` and a grace period) once this request
    /// heads the queue. On the `acquire` subject `true` is `not_permitted`:
    /// preempting needs the permission to publish on
    /// `jetlock.req.preempt.<session>`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub preempt: Option<bool>,
}

/// Checks an `acquire` body sent as `session` on the `acquire` or the
/// `preempt` subject.
pub(super) fn parse(op: Op, session: &str, raw: &[u8], c: &Checks) -> Result<Request, WireError> {
    let b: AcquireBody = body(raw)?;
    c.id("id", &b.id)?;
    let preempt = op == Op::Preempt;
    match (preempt, b.preempt) {
        (false, Some(true)) => {
            return Err(WireError::new(
                ErrorCode::NotPermitted,
                "preempt: true is only accepted on jetlock.req.preempt.<session>, \
                 which NATS permissions grant to priority users \
                 (docs/PROTOCOL.md, Versioning)",
            ))
        }
        (true, Some(false)) => {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "preempt: false on the preempt subject; send a plain acquire",
            ))
        }
        _ => {}
    }
    let owner = b.owner.unwrap_or_else(|| session.to_owned());
    c.id("owner", &owner)?;
    if b.wait_ms > c.limits.max_wait_ms {
        return Err(WireError::new(
            ErrorCode::InvalidWait,
            format!(
                "wait_ms {} is above the maximum wait {}",
                b.wait_ms, c.limits.max_wait_ms
            ),
        ));
    }
    let name = c.name(&b.key)?;
    check_part(&name, session)?;
    Ok(Request::Acquire {
        name,
        id: b.id,
        owner,
        ttl_ms: c.ttl(b.ttl_ms)?,
        wait_ms: b.wait_ms,
        preempt,
    })
}

/// A name under a reserved marker (`:~rw:`, `:~sem:`) must be a part of a
/// read/write lock or semaphore, and a session takes only its own reader
/// key: holding another session's would hold up that session's reads, an
/// act in its name.
fn check_part(name: &LockName, session: &str) -> Result<(), WireError> {
    match part(name.as_str()) {
        None => Ok(()),
        Some((_, Err(why))) => Err(WireError::new(
            ErrorCode::InvalidKey,
            format!(
                "{name}: `:~rw:` and `:~sem:` name the parts of read/write locks and \
                 semaphores; {why} (docs/PROTOCOL.md, Read/write locks and semaphores)"
            ),
        )),
        Some((_, Ok(Part::Read { session: of }))) if of != session => Err(WireError::new(
            ErrorCode::NotPermitted,
            format!("{name} holds the reads of session {of}; a session takes only its own"),
        )),
        Some((_, Ok(_))) => Ok(()),
    }
}
