//! `revoke`.

use super::request::{body, present, Checks};
use super::{Request, WireError};
use serde::{Deserialize, Serialize};

/// `revoke`: force the holder off a lock (operators). The holder gets a
/// `revoking` notice, `grace_ms` to finish, then loses the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    #[serde(default)]
    pub grace_ms: u64,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<String>,
}

pub(super) fn parse(raw: &[u8], c: &Checks) -> Result<Request, WireError> {
    let b: RevokeBody = body(raw)?;
    c.id("id", &b.id)?;
    let reason = b.reason.unwrap_or_else(|| "revoked by an operator".into());
    c.id("reason", &reason)?;
    Ok(Request::Revoke {
        name: c.name(&b.key)?,
        id: b.id,
        grace_ms: b.grace_ms.min(c.limits.max_grace_ms),
        reason,
    })
}
