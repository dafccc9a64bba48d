//! `renew`.

use super::request::{body, present, Checks};
use super::{Request, WireError};
use serde::{Deserialize, Serialize};

/// `renew`: extend the lease of a held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    pub token: u64,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_ms: Option<u64>,
}

pub(super) fn parse(raw: &[u8], c: &Checks) -> Result<Request, WireError> {
    let b: RenewBody = body(raw)?;
    c.id("id", &b.id)?;
    Ok(Request::Renew {
        name: c.name(&b.key)?,
        id: b.id,
        token: b.token,
        ttl_ms: c.ttl(b.ttl_ms)?,
    })
}
