//! The coordinator's wire protocol (version 1): subjects, JSON messages,
//! error codes. `docs/PROTOCOL.md` is the prose version of this file, for
//! people writing clients in other languages.
//!
//! - Requests go to `jetlock.req.<op>.<session>` and are stored by the
//!   `JETLOCK_REQ` stream, so an acknowledged request survives a
//!   coordinator crash; the publisher sets `Nats-Msg-Id` so a retried
//!   publish is stored once.
//! - Answers and notices for a session go to `jetlock.to.<session>` (core
//!   NATS). The session is in the subject, so subject permissions decide who
//!   can send requests as a session and who can read its answers.
//! - Heartbeats: `jetlock.hb.<session>` (core NATS request; the coordinator
//!   that owns the session answers).
//!
//! Parsing never panics and never trusts a field: every message is checked
//! here, and a bad one becomes a [`WireError`] with a stable [`ErrorCode`].

use crate::name::LockName;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// The revision of v1, announced in the coordinators' service metadata
/// (`protocol_revision`). Revision 2 moved preempting to its own subject and
/// refuses `preempt: true` on the acquire subject (`docs/PROTOCOL.md`,
/// "Versioning").
pub const REVISION: u32 = 2;
/// Largest request body the coordinator reads (the request stream refuses
/// larger messages at publish time).
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Longest session id, in bytes.
pub const MAX_SESSION_BYTES: usize = 128;
/// Most tokens in a session id (`team.worker.<nuid>`).
pub const MAX_SESSION_TOKENS: usize = 4;
/// Longest request id or owner id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Root of every jetlock subject.
pub const PREFIX: &str = "jetlock";
/// Stream that stores requests.
pub const REQUEST_STREAM: &str = "JETLOCK_REQ";
/// Subjects the request stream captures.
pub const REQUEST_SUBJECTS: &str = "jetlock.req.>";
/// Coordinator heartbeats: `jetlock.coord.hb.<coordinator id>`.
pub const COORDINATOR_HEARTBEATS: &str = "jetlock.coord.hb.*";
/// Session heartbeats: `jetlock.hb.<session>`.
pub const SESSION_HEARTBEATS: &str = "jetlock.hb.>";
/// Where the server's client-disconnect advisories are imported to (see
/// `nats/*.conf`): lets coordinators see a holder's process exit at once.
pub const DISCONNECT_EVENTS: &str = "jetlock.sys.disconnect";

/// The request kinds, the `<op>` token of a request subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Acquire,
    Release,
    Renew,
    Cancel,
    Revoke,
    /// An acquire that asks the holder to give way. Its own subject, so
    /// NATS permissions decide who may preempt (see `nats/cluster.conf`).
    Preempt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Renew => "renew",
            Op::Cancel => "cancel",
            Op::Revoke => "revoke",
            Op::Preempt => "preempt",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "acquire" => Op::Acquire,
            "release" => Op::Release,
            "renew" => Op::Renew,
            "cancel" => Op::Cancel,
            "revoke" => Op::Revoke,
            "preempt" => Op::Preempt,
            _ => return None,
        })
    }
}

/// The subject a session publishes `op` requests to.
pub fn request_subject(op: Op, session: &str) -> String {
    format!("{PREFIX}.req.{}.{session}", op.as_str())
}

/// The subject a session's answers and notices arrive on.
pub fn answer_subject(session: &str) -> String {
    format!("{PREFIX}.to.{session}")
}

/// The subject a session heartbeats on.
pub fn heartbeat_subject(session: &str) -> String {
    format!("{PREFIX}.hb.{session}")
}

/// The subject a coordinator heartbeats on.
pub fn coordinator_subject(id: &str) -> String {
    format!("{PREFIX}.coord.hb.{id}")
}

/// The `Nats-Msg-Id` of a request: the stream de-duplicates on it, so a
/// publish retried after a lost ack is stored once.
pub fn message_id(session: &str, id: &str) -> String {
    format!("{session}:{id}")
}

/// Checks a request's `Nats-Msg-Id` against the session of its subject: it
/// must start with `<session>:`. The stream de-duplicates message ids across
/// all sessions, so an id another session may also send lets one drop the
/// other's request; ids bound to the sender's session cannot collide.
/// A request without a message id is not de-duplicated and collides with
/// nothing, so it passes.
pub fn check_message_id(session: &str, msg_id: Option<&str>) -> Result<(), WireError> {
    let Some(msg_id) = msg_id else {
        return Ok(());
    };
    let bound = msg_id
        .strip_prefix(session)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|id| !id.is_empty());
    if bound {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::BadMessageId,
        format!("Nats-Msg-Id {msg_id:?} must be \"{session}:<request id>\", the subject's session"),
    ))
}

/// A new request id nobody can guess from ids seen before. A request's
/// message id is `<session>:<id>`, and the stream drops a second message
/// with the same message id whoever sends it, so a guessable id lets
/// another user of the same NATS account drop a request before it is sent.
/// `nuid::next()` is not enough: its 12-character prefix is shared by every
/// id of the process (session ids, which events show, included) and its
/// sequence grows by a fixed step of 33 to 332. A fresh generator draws a
/// new prefix from the OS (about 71 bits) and a new sequence (about 59).
pub fn new_request_id() -> String {
    nuid::NUID::new().next().to_string()
}

/// Checks a session id: 1–4 dot-separated tokens of `[A-Za-z0-9_-]`, at
/// most 128 bytes. Subject wildcards and spaces cannot appear, so a session
/// id never widens a subject.
pub fn check_session(session: &str) -> Result<(), WireError> {
    let bad = |why: &str| {
        WireError::new(
            ErrorCode::InvalidSession,
            format!("session id {session:?} {why}"),
        )
    };
    if session.is_empty() || session.len() > MAX_SESSION_BYTES {
        return Err(bad("must be 1 to 128 bytes"));
    }
    let mut tokens = 0;
    for token in session.split('.') {
        tokens += 1;
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad("must be dot-separated tokens of A-Z a-z 0-9 _ -"));
        }
    }
    if tokens > MAX_SESSION_TOKENS {
        return Err(bad("has more than 4 tokens"));
    }
    Ok(())
}

/// Splits `jetlock.req.<op>.<session>`.
pub fn parse_request_subject(subject: &str) -> Result<(Op, &str), WireError> {
    let rest = subject
        .strip_prefix("jetlock.req.")
        .ok_or_else(|| WireError::new(ErrorCode::BadRequest, "not a request subject"))?;
    let (op, session) = rest
        .split_once('.')
        .ok_or_else(|| WireError::new(ErrorCode::BadRequest, "request subject has no session"))?;
    let op = Op::parse(op).ok_or_else(|| {
        WireError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown request kind {op:?} (acquire, release, renew, cancel, revoke, preempt)"
            ),
        )
    })?;
    check_session(session)?;
    Ok((op, session))
}

/// Stable error codes of the wire protocol. New codes may be added in a
/// minor revision; a client treats an unknown code like `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, a missing or mistyped field, an unknown field.
    BadRequest,
    /// `v` is not a version this coordinator speaks.
    UnsupportedVersion,
    /// The op token of the subject is unknown.
    UnknownOp,
    /// The body is larger than 4 KiB.
    TooLarge,
    /// The lock name is empty, too long, or has control characters.
    InvalidKey,
    /// A session id in the subject is malformed, or the body names another.
    InvalidSession,
    /// `ttl_ms` is outside 1 s–24 h.
    InvalidTtl,
    /// `wait_ms` is above the coordinator's maximum wait.
    InvalidWait,
    /// A request id or owner id is empty, too long or has control characters.
    InvalidId,
    /// The lock is held and the request did not wait (`wait_ms: 0`).
    Busy,
    /// The wait ended before the lock was free.
    Timeout,
    /// The acquire was cancelled by a `cancel` request.
    Cancelled,
    /// The requesting session does not hold the lock.
    NotHolder,
    /// The token is not the current holder's token (stale or future).
    StaleToken,
    /// `cancel` named a request that is not waiting (granted, done, unknown).
    NotWaiting,
    /// The session was declared dead (missed heartbeats or its connection
    /// closed); its locks were released. Start a new session.
    SessionExpired,
    /// The request id was used before by this session for another request.
    Duplicate,
    /// The request's `Nats-Msg-Id` does not start with its subject's
    /// session (`<session>:`).
    BadMessageId,
    /// The request needs a permission it was not sent with: `preempt: true`
    /// on the `acquire` subject (preempting has its own subject), or a
    /// preempt on a lock whose policy forbids preemption.
    NotPermitted,
    /// The lock has as many waiters as its policy allows.
    QueueFull,
    /// The session holds as many locks as `max_locks_per_session` allows.
    TooManyLocks,
    /// The session has as many acquires waiting as `max_waits_per_session`
    /// allows.
    TooManyWaits,
    /// A new session whose prefix has as many live sessions as
    /// `max_sessions_per_prefix` allows (its id without the last token).
    TooManySessions,
    /// A fault inside jetlock or NATS; the request may be retried. A code
    /// this build does not know (from a newer coordinator) reads as this.
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::InvalidSession => "invalid_session",
            ErrorCode::InvalidTtl => "invalid_ttl",
            ErrorCode::InvalidWait => "invalid_wait",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::NotHolder => "not_holder",
            ErrorCode::StaleToken => "stale_token",
            ErrorCode::NotWaiting => "not_waiting",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::BadMessageId => "bad_message_id",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::TooManyLocks => "too_many_locks",
            ErrorCode::TooManyWaits => "too_many_waits",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

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

/// `release`: give up a hold (the lock is handed to the next waiter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub v: u32,
    pub id: String,
    pub key: String,
    pub token: u64,
}

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

/// Reads an optional request field that is present: its value must have
/// the field's type, so `"ttl_ms":null` is `bad_request` like `"ttl_ms":"10"`
/// (serde would read `null` as absent and apply the default). Absent fields
/// never get here (`#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

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
    body: &[u8],
    limits: &Limits,
) -> Result<Request, WireError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "request body is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                body.len()
            ),
        ));
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| {
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
    let bad = |e: serde_json::Error| WireError::new(ErrorCode::BadRequest, e.to_string());
    let name = |key: &str| {
        LockName::new(key).map_err(|e| WireError::new(ErrorCode::InvalidKey, e.to_string()))
    };
    let ttl = |ttl_ms: Option<u64>| {
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
    };
    Ok(match op {
        Op::Acquire | Op::Preempt => {
            let b: AcquireBody = serde_json::from_slice(body).map_err(bad)?;
            check_id("id", &b.id)?;
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
            check_id("owner", &owner)?;
            if b.wait_ms > limits.max_wait_ms {
                return Err(WireError::new(
                    ErrorCode::InvalidWait,
                    format!(
                        "wait_ms {} is above the maximum wait {}",
                        b.wait_ms, limits.max_wait_ms
                    ),
                ));
            }
            Request::Acquire {
                name: name(&b.key)?,
                id: b.id,
                owner,
                ttl_ms: ttl(b.ttl_ms)?,
                wait_ms: b.wait_ms,
                preempt,
            }
        }
        Op::Release => {
            let b: ReleaseBody = serde_json::from_slice(body).map_err(bad)?;
            check_id("id", &b.id)?;
            Request::Release {
                name: name(&b.key)?,
                id: b.id,
                token: b.token,
            }
        }
        Op::Renew => {
            let b: RenewBody = serde_json::from_slice(body).map_err(bad)?;
            check_id("id", &b.id)?;
            Request::Renew {
                name: name(&b.key)?,
                id: b.id,
                token: b.token,
                ttl_ms: ttl(b.ttl_ms)?,
            }
        }
        Op::Cancel => {
            let b: CancelBody = serde_json::from_slice(body).map_err(bad)?;
            check_id("id", &b.id)?;
            check_id("target", &b.target)?;
            Request::Cancel {
                name: name(&b.key)?,
                id: b.id,
                target: b.target,
            }
        }
        Op::Revoke => {
            let b: RevokeBody = serde_json::from_slice(body).map_err(bad)?;
            check_id("id", &b.id)?;
            let reason = b.reason.unwrap_or_else(|| "revoked by an operator".into());
            check_id("reason", &reason)?;
            Request::Revoke {
                name: name(&b.key)?,
                id: b.id,
                grace_ms: b.grace_ms.min(limits.max_grace_ms),
                reason,
            }
        }
    })
}

fn check_id(field: &str, value: &str) -> Result<(), WireError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(WireError::new(
            ErrorCode::InvalidId,
            format!("`{field}` must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Why a holder lost a lock, in `lost` notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostCause {
    /// An operator or a preempting request revoked it.
    Revoked,
    /// The session was declared dead.
    SessionExpired,
}

/// Everything the coordinator sends on `jetlock.to.<session>`: answers to
/// requests (`re` set) and notices about held locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    /// The lock is yours. `token` is the fencing token; `waiters` how many
    /// wait behind you (release promptly when it is not 0).
    Granted {
        v: u32,
        re: String,
        key: String,
        token: u64,
        ttl_ms: u64,
        holds: u32,
        waiters: u32,
    },
    /// The acquire waits in the queue at `position` (1: next).
    Queued {
        v: u32,
        re: String,
        key: String,
        position: u32,
    },
    /// The hold is released; `holds` is what remains (0: the lock is gone).
    Released {
        v: u32,
        re: String,
        key: String,
        holds: u32,
    },
    Renewed {
        v: u32,
        re: String,
        key: String,
        token: u64,
        ttl_ms: u64,
    },
    Cancelled {
        v: u32,
        re: String,
        key: String,
    },
    /// The revoke request was accepted; the holder is being told.
    Revoking {
        v: u32,
        re: String,
        key: String,
        token: u64,
        grace_ms: u64,
    },
    /// A request failed. `re` is absent when the request id was unreadable.
    Error {
        v: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        code: ErrorCode,
        message: String,
        /// For `busy`: the current holder.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<HolderInfo>,
    },
    /// Notice: somebody waits for a lock you hold.
    Contended {
        v: u32,
        key: String,
        token: u64,
        waiters: u32,
    },
    /// Notice: give the lock up within `grace_ms`; after that it is taken.
    RevokeNotice {
        v: u32,
        key: String,
        token: u64,
        grace_ms: u64,
        reason: String,
    },
    /// Notice: the lock is no longer yours; `token` is fenced off.
    Lost {
        v: u32,
        key: String,
        token: u64,
        cause: LostCause,
    },
    /// Notice: the server reported this session's connection closed. A
    /// live client (one that reconnected) heartbeats at once, naming its
    /// new connection, or the session is declared dead after the reconnect
    /// grace.
    Probe {
        v: u32,
    },
}

impl Answer {
    pub fn error(re: Option<String>, key: Option<String>, e: WireError) -> Answer {
        Answer::Error {
            v: VERSION,
            re,
            key,
            code: e.code,
            message: e.message,
            holder: None,
        }
    }

    /// The request this answers, if it is an answer.
    pub fn re(&self) -> Option<&str> {
        match self {
            Answer::Granted { re, .. }
            | Answer::Queued { re, .. }
            | Answer::Released { re, .. }
            | Answer::Renewed { re, .. }
            | Answer::Cancelled { re, .. }
            | Answer::Revoking { re, .. } => Some(re),
            Answer::Error { re, .. } => re.as_deref(),
            _ => None,
        }
    }

    /// Whether this ends its request (everything but `queued`).
    pub fn is_final(&self) -> bool {
        !matches!(self, Answer::Queued { .. })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("answers always serialize")
    }
}

/// Who holds a lock, in `busy` errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub session: String,
    pub owner: String,
    pub token: u64,
    pub holds: u32,
}

/// A session heartbeat (`jetlock.hb.<session>`). Every field is optional;
/// an empty body is a valid heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// After how long without a heartbeat the session is dead (clamped by
    /// the coordinator; default 900 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The session's NATS connection (`server_id` and client id from the
    /// server's INFO): when the server reports that this connection closed,
    /// the session is dead at once instead of after `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// The session is closing: release its locks now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// One NATS client connection, as the server names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnId {
    pub server_id: String,
    pub cid: u64,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub v: u32,
    /// False when the session was declared dead: its locks are gone and the
    /// client must start a new session.
    pub alive: bool,
    /// The timeout the coordinator applies to this session.
    pub timeout_ms: u64,
    /// Live coordinators.
    pub coordinators: u32,
    /// The reconnect grace the coordinator applies: after the server
    /// reports the session's connection closed, a heartbeat naming a new
    /// connection must arrive within it, or the session is dead. Absent
    /// from coordinators before protocol 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// The answering coordinator's id: after a reconnect, the client counts
    /// which coordinators heard its new connection. Absent from
    /// coordinators before protocol 1.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why a new session was not taken (`too_many_sessions`), with
    /// `alive: false`. Absent from coordinators before protocol 1.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ErrorCode>,
}

/// A coordinator's heartbeat (`jetlock.coord.hb.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorBeat {
    pub v: u32,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// The coordinator's wall clock, Unix ms (`jetlock doctor` compares
    /// clocks with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// The part of a server client-disconnect advisory jetlock reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectAdvisory {
    pub server: AdvisoryServer,
    pub client: AdvisoryClient,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdvisoryServer {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdvisoryClient {
    pub id: u64,
}

impl DisconnectAdvisory {
    pub fn conn(&self) -> ConnId {
        ConnId {
            server_id: self.server.id.clone(),
            cid: self.client.id,
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(op: Op, body: &str) -> Result<Request, WireError> {
        parse_request(op, "s1", body.as_bytes(), &Limits::default())
    }

    #[test]
    fn acquire_defaults() {
        let r = parse(Op::Acquire, r#"{"v":1,"id":"r1","key":"acct:1"}"#).unwrap();
        assert_eq!(
            r,
            Request::Acquire {
                id: "r1".into(),
                name: LockName::new("acct:1").unwrap(),
                owner: "s1".into(),
                ttl_ms: 10_000,
                wait_ms: 0,
                preempt: false,
            }
        );
    }

    #[test]
    fn preempting_needs_the_preempt_subject() {
        let body = r#"{"v":1,"id":"r1","key":"acct:1","wait_ms":9000,"preempt":true}"#;
        assert_eq!(
            parse(Op::Acquire, body).unwrap_err().code,
            ErrorCode::NotPermitted
        );
        assert!(matches!(
            parse(Op::Preempt, body).unwrap(),
            Request::Acquire { preempt: true, .. }
        ));
        let plain = r#"{"v":1,"id":"r1","key":"acct:1","wait_ms":9000}"#;
        assert!(matches!(
            parse(Op::Preempt, plain).unwrap(),
            Request::Acquire { preempt: true, .. }
        ));
        assert!(matches!(
            parse(Op::Acquire, plain).unwrap(),
            Request::Acquire { preempt: false, .. }
        ));
        let off = r#"{"v":1,"id":"r1","key":"acct:1","preempt":false}"#;
        assert!(matches!(
            parse(Op::Acquire, off).unwrap(),
            Request::Acquire { preempt: false, .. }
        ));
        assert_eq!(
            parse(Op::Preempt, off).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request_subject("jetlock.req.preempt.team.w1").unwrap(),
            (Op::Preempt, "team.w1")
        );
    }

    #[test]
    fn message_ids_are_bound_to_the_subject_session() {
        assert!(check_message_id("team.a", Some("team.a:r1")).is_ok());
        assert!(check_message_id("team.a", None).is_ok());
        for bad in [
            "team.b:r1",
            "team.ab:r1",
            "team.a",
            "team.a:",
            "team:a:r1",
            "",
        ] {
            let e = check_message_id("team.a", Some(bad)).expect_err(bad);
            assert_eq!(e.code, ErrorCode::BadMessageId, "{bad}");
        }
    }

    /// Base-62 value of a nuid's 10 sequence characters.
    fn nuid_sequence(id: &str) -> u64 {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        id.as_bytes()[12..].iter().fold(0, |n, c| {
            n * 62 + ALPHABET.iter().position(|a| a == c).expect("base 62") as u64
        })
    }

    /// Whether `next` is what a guesser expects after seeing `seen`: the same
    /// prefix and a sequence at most a few hundred steps on.
    fn guessable(seen: &str, next: &str) -> bool {
        seen[..12] == next[..12]
            && nuid_sequence(next)
                .checked_sub(nuid_sequence(seen))
                .is_some_and(|d| d < 333 * 100)
    }

    #[test]
    fn request_ids_cannot_be_guessed_from_earlier_ids() {
        // What the stream's de-duplication made exploitable: one seen id
        // (a session id in an event) gives away the next ones.
        let seen = nuid::next().to_string();
        let next = nuid::next().to_string();
        assert!(guessable(&seen, &next), "{seen} {next}");
        for _ in 0..100 {
            let (seen, next) = (new_request_id(), new_request_id());
            assert_eq!(next.len(), 22);
            assert!(!guessable(&seen, &next), "{seen} then {next}");
            let session = nuid::next().to_string();
            assert!(!guessable(&session, &new_request_id()));
        }
    }

    #[test]
    fn ttl_rounds_up_to_seconds() {
        let r = parse(
            Op::Acquire,
            r#"{"v":1,"id":"r1","key":"k","ttl_ms":1500,"wait_ms":5}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::Acquire { ttl_ms: 2000, .. }));
    }

    #[test]
    fn bad_bodies_get_stable_codes() {
        let cases: &[(Op, &str, ErrorCode)] = &[
            (Op::Acquire, "not json", ErrorCode::BadRequest),
            (Op::Acquire, "[1,2]", ErrorCode::BadRequest),
            (
                Op::Acquire,
                r#"{"id":"r","key":"k"}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":2,"id":"r","key":"k"}"#,
                ErrorCode::UnsupportedVersion,
            ),
            (
                Op::Acquire,
                r#"{"v":"1","id":"r","key":"k"}"#,
                ErrorCode::UnsupportedVersion,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":7,"key":"k"}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","ttl_ms":-1}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","extra":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":""}"#,
                ErrorCode::InvalidKey,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"a\u0000b"}"#,
                ErrorCode::InvalidKey,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"","key":"k"}"#,
                ErrorCode::InvalidId,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","owner":"a\nb"}"#,
                ErrorCode::InvalidId,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","ttl_ms":10}"#,
                ErrorCode::InvalidTtl,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","wait_ms":99999999999}"#,
                ErrorCode::InvalidWait,
            ),
            (
                Op::Release,
                r#"{"v":1,"id":"r","key":"k"}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Release,
                r#"{"v":1,"id":"r","key":"k","token":"5"}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Cancel,
                r#"{"v":1,"id":"r","key":"k"}"#,
                ErrorCode::BadRequest,
            ),
            // `null` is a wrong type, for optional fields too: it neither
            // picks the default nor passes as absent.
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","ttl_ms":null}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","owner":null}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Acquire,
                r#"{"v":1,"id":"r","key":"k","wait_ms":null}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Renew,
                r#"{"v":1,"id":"r","key":"k","token":1,"ttl_ms":null}"#,
                ErrorCode::BadRequest,
            ),
            (
                Op::Revoke,
                r#"{"v":1,"id":"r","key":"k","reason":null}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (op, body, code) in cases {
            let err = parse(*op, body).expect_err(body);
            assert_eq!(err.code, *code, "{body}: {err}");
        }
        let big = format!(r#"{{"v":1,"id":"r","key":"{}"}}"#, "k".repeat(5000));
        assert_eq!(
            parse(Op::Acquire, &big).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn request_subjects_parse_and_refuse_wildcards() {
        assert_eq!(
            parse_request_subject("jetlock.req.acquire.team.w1").unwrap(),
            (Op::Acquire, "team.w1")
        );
        for bad in [
            "jetlock.req.acquire",
            "jetlock.req.steal.s1",
            "jetlock.req.acquire.*",
            "jetlock.req.acquire.a.>",
            "jetlock.req.acquire.a..b",
            "jetlock.req.acquire.a.b.c.d.e",
            "other.req.acquire.s1",
        ] {
            assert!(parse_request_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_round_trip_with_a_type_tag() {
        let a = Answer::Granted {
            v: 1,
            re: "r1".into(),
            key: "acct:1".into(),
            token: 42,
            ttl_ms: 10_000,
            holds: 1,
            waiters: 0,
        };
        let json = String::from_utf8(a.to_json()).unwrap();
        assert!(json.starts_with(r#"{"type":"granted""#), "{json}");
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), a);
        let future = r#"{"type":"error","v":1,"re":"r","code":"from_the_future","message":"m"}"#;
        assert!(matches!(
            serde_json::from_str::<Answer>(future).unwrap(),
            Answer::Error {
                code: ErrorCode::Internal,
                ..
            }
        ));
        let e = Answer::error(None, None, WireError::new(ErrorCode::Busy, "held"));
        let json = String::from_utf8(e.to_json()).unwrap();
        assert!(json.contains(r#""code":"busy""#), "{json}");
    }

    #[test]
    fn probe_finds_the_id_of_a_bad_request() {
        assert_eq!(probe_id(br#"{"v":9,"id":"r7"}"#).as_deref(), Some("r7"));
        assert_eq!(probe_id(br#"{"v":1,"id":5}"#), None);
        assert_eq!(probe_id(b"garbage"), None);
    }
}
