//! Refusals: stable error codes and the error a refused request gets.

use serde::{Deserialize, Serialize};
use std::fmt;

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
    /// Every code, in declaration order (the coordinator's metrics start a
    /// series at 0 for each).
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOp,
        ErrorCode::TooLarge,
        ErrorCode::InvalidKey,
        ErrorCode::InvalidSession,
        ErrorCode::InvalidTtl,
        ErrorCode::InvalidWait,
        ErrorCode::InvalidId,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::NotHolder,
        ErrorCode::StaleToken,
        ErrorCode::NotWaiting,
        ErrorCode::SessionExpired,
        ErrorCode::Duplicate,
        ErrorCode::BadMessageId,
        ErrorCode::NotPermitted,
        ErrorCode::QueueFull,
        ErrorCode::TooManyLocks,
        ErrorCode::TooManyWaits,
        ErrorCode::TooManySessions,
        ErrorCode::Internal,
    ];

    /// The code on the wire (`"busy"`).
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
