//! What coordinators send a session on `jetlock.to.<session>`: answers
//! to its requests, and notices.

use super::{ErrorCode, WireError, VERSION};
use serde::{Deserialize, Serialize};

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
