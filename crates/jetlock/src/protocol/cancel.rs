//! `cancel`.

use super::request::{body, Checks};
use super::{Request, WireError};
use serde::{Deserialize, Serialize};

/// `cancel`: withdraw a waiting acquire of this session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    /// The `id` of the acquire to cancel.
    pub target: String,
}

pub(super) fn parse(raw: &[u8], c: &Checks) -> Result<Request, WireError> {
    let b: CancelBody = body(raw)?;
    c.id("id", &b.id)?;
    c.id("target", &b.target)?;
    Ok(Request::Cancel {
        name: c.name(&b.key)?,
        id: b.id,
        target: b.target,
    })
}
