//! `release`.

use super::request::{body, Checks};
use super::{Request, WireError};
use serde::{Deserialize, Serialize};

/// `release`: give up a hold (the lock is handed to the next waiter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    pub token: u64,
}

pub(super) fn parse(raw: &[u8], c: &Checks) -> Result<Request, WireError> {
    let b: ReleaseBody = body(raw)?;
    c.id("id", &b.id)?;
    Ok(Request::Release {
        name: c.name(&b.key)?,
        id: b.id,
        token: b.token,
    })
}
