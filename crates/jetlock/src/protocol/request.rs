//! A request: the checked form every op's body becomes, the limits it is
//! checked against, and the one entry point that reads a body. Each op's
//! body and checks are in its own file (`acquire.rs`, `release.rs`, ...):
//! a new op is one new file and one arm in [`parse_request`].

use super::{acquire, cancel, release, renew, revoke};
use super::{ErrorCode, Op, WireError, MAX_ID_BYTES, MAX_REQUEST_BYTES, VERSION};
use crate::name::LockName;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Acquire {
        id: String,
        name: LockName,
        owner: String,
        ttl_ms: u64,
        wait_ms: u64,
        preempt: bool,
    },
    Release {
        id: String,
        name: LockName,
        token: u64,
    },
    Renew {
        id: String,
        name: LockName,
        token: u64,
        ttl_ms: u64,
    },
    Cancel {
        id: String,
        name: LockName,
        target: String,
    },
    Revoke {
        id: String,
        name: LockName,
        grace_ms: u64,
        reason: String,
    },
}

impl Request {
    pub fn id(&self) -> &str {
        match self {
            Request::Acquire { id, .. }
            | Request::Release { id, .. }
            | Request::Renew { id, .. }
            | Request::Cancel { id, .. }
            | Request::Revoke { id, .. } => id,
        }
    }

    pub fn name(&self) -> &LockName {
        match self {
            Request::Acquire { name, .. }
            | Request::Release { name, .. }
            | Request::Renew { name, .. }
            | Request::Cancel { name, .. }
            | Request::Revoke { name, .. } => name,
        }
    }
}

/// Limits the coordinator applies while checking requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_ttl_ms: u64,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_wait_ms: u64,
    pub max_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_ttl_ms: 10_000,
            min_ttl_ms: 1_000,
            max_ttl_ms: 24 * 60 * 60 * 1000,
            max_wait_ms: 15 * 60 * 1000,
            max_grace_ms: 60_000,
        }
    }
}

/// What can be read from a request body even when the rest is bad: the
/// request id, so the error answer can name it.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    v: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// The request id of a body, if it has a usable one (for error answers).
pub fn probe_id(body: &[u8]) -> Option<String> {
    let probe: Probe = serde_json::from_slice(body).ok()?;
    match probe.id? {
        serde_json::Value::String(s) if check_id("id", &s).is_ok() => Some(s),
        _ => None,
    }
}

/// Parses and checks a request body published as `session` to an `op`
/// subject.
pub fn parse_request(
    op: Op,
    session: &str,
    raw: &[u8],
    limits: &Limits,
) -> Result<Request, WireError> {
    if raw.len() > MAX_REQUEST_BYTES {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "request body is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                raw.len()
            ),
        ));
    }
    let probe: Probe = serde_json::from_slice(raw).map_err(|e| {
        WireError::new(
            ErrorCode::BadRequest,
            format!("body is not a JSON object: {e}"),
        )
    })?;
    match probe.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(other) => {
            return Err(WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {other} is not supported; this coordinator speaks v{VERSION}"
                ),
            ))
        }
        None => {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("missing field `v` (the protocol version, {VERSION})"),
            ))
        }
    }
    let c = Checks { limits };
    match op {
        Op::Acquire | Op::Preempt => acquire::parse(op, session, raw, &c),
        Op::Release => release::parse(raw, &c),
        Op::Renew => renew::parse(raw, &c),
        Op::Cancel => cancel::parse(raw, &c),
        Op::Revoke => revoke::parse(raw, &c),
    }
}

/// The checks every op's body goes through.
pub(super) struct Checks<'a> {
    pub limits: &'a Limits,
}

impl Checks<'_> {
    /// A lock name from a `key` field.
    pub fn name(&self, key: &str) -> Result<LockName, WireError> {
        LockName::new(key).map_err(|e| WireError::new(ErrorCode::InvalidKey, e.to_string()))
    }

    /// A lease asked for (or the default), within the limits.
    pub fn ttl(&self, ttl_ms: Option<u64>) -> Result<u64, WireError> {
        let limits = self.limits;
        let ttl_ms = ttl_ms.unwrap_or(limits.default_ttl_ms);
        if ttl_ms < limits.min_ttl_ms || ttl_ms > limits.max_ttl_ms {
            return Err(WireError::new(
                ErrorCode::InvalidTtl,
                format!(
                    "ttl_ms {ttl_ms} is outside {}..={}",
                    limits.min_ttl_ms, limits.max_ttl_ms
                ),
            ));
        }
        // The server counts whole seconds; round up so a lease is never
        // shorter than asked.
        Ok(ttl_ms.div_ceil(1000) * 1000)
    }

    /// An id-like field (`id`, `owner`, `target`, `reason`).
    pub fn id(&self, field: &str, value: &str) -> Result<(), WireError> {
        check_id(field, value)
    }
}

/// A body of type `T`, or `bad_request` saying why not.
pub(super) fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(raw).map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))
}

/// Reads an optional request field that is present: its value must have
/// the field's type, so `"ttl_ms":null` is `bad_request` like `"ttl_ms":"10"`
/// (serde would read `null` as absent and apply the default). Absent fields
/// never get here (`#[serde(default)]`).
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

pub(super) fn check_id(field: &str, value: &str) -> Result<(), WireError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(WireError::new(
            ErrorCode::InvalidId,
            format!("`{field}` must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}
