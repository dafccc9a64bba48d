//! Errors of the client API, one enum per operation family, matchable by kind.

use crate::bucket::BucketError;
use crate::fence::FencingToken;
use crate::name::NameError;
use crate::record::RecordError;
use std::fmt;
use std::time::Duration;

/// Who holds a lock (from the ownership record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub session: String,
    pub token: FencingToken,
    /// Reentrant hold count.
    pub holds: u32,
    /// Lease length.
    pub lease: Duration,
}

impl Holder {
    pub(crate) fn from_record(record: crate::record::LockRecord, revision: u64) -> Self {
        Holder {
            token: FencingToken(record.token_at(revision)),
            holds: record.holds,
            lease: Duration::from_millis(record.lease_ms),
            owner: record.owner,
            session: record.session,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "owner {:?} (session {}, token {})",
            self.owner, self.session, self.token
        )
    }
}

/// Why a held lock stopped being held by its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Renewals failed (server unreachable) until the lease ran out on the
    /// holder's own clock; the server expires it no earlier.
    Expired,
    /// The record changed under the holder: the lease expired on the server
    /// and someone else was granted the lock, or an operator revoked it.
    Taken,
    /// A coordinator asked the holder to give the lock up (operator
    /// revocation or a preempting request). The holder has the announced
    /// grace period to finish and release; after it the lock is taken and
    /// the token fenced off.
    Revoked,
    /// The coordinators declared this client's session dead (heartbeats
    /// missed for longer than the session timeout) and released its locks.
    SessionExpired,
    /// No coordinator confirmed this client's session for its session
    /// timeout (a server or the network in between hung): the coordinators
    /// may have declared it dead and handed its locks on, so its holds are
    /// given up before they could. The session ends with them: new
    /// acquisitions fail with [`LockError::SessionExpired`] (connect again).
    Unconfirmed,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::Expired => "the lease ran out before a renewal succeeded",
            LostReason::Taken => "the lock was expired, revoked or granted to someone else",
            LostReason::Revoked => {
                "a coordinator revoked the lock (finish and release within the grace period)"
            }
            LostReason::SessionExpired => "the session was declared dead by the coordinators",
            LostReason::Unconfirmed => {
                "no coordinator confirmed the session within its timeout (they may have declared it dead)"
            }
        })
    }
}

/// Failures of lock operations.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock name is not acceptable.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The lease (TTL) is out of range.
    #[error("lease {ttl:?} is out of range: {reason}")]
    InvalidTtl { ttl: Duration, reason: &'static str },
    /// `try_acquire` found the lock held.
    #[error("lock {name:?} is held{}", holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default())]
    Busy {
        name: String,
        /// The holder, when the read that found it held could decode it.
        holder: Option<Holder>,
    },
    /// Waiting for the lock took longer than allowed.
    #[error("timed out after {waited:?} waiting for lock {name:?}")]
    Timeout { name: String, waited: Duration },
    /// A write lock asked for by an owner that holds the same read/write
    /// lock for reading: release the read first (two readers upgrading
    /// would wait for each other forever).
    #[error(
        "lock {name:?} is held for reading by this owner; release the read before taking the write"
    )]
    Upgrade { name: String },
    /// A semaphore's permit count is out of range.
    #[error("a semaphore has 1 to {max} permits, not {permits}")]
    InvalidPermits { permits: u32, max: u32 },
    /// A partition group's partition count is out of range.
    #[error("a partition group has 1 to {max} partitions, not {partitions}")]
    InvalidPartitions { partitions: u32, max: u32 },
    /// An atomic multi-key acquisition
    /// ([`MultiLockRequest::atomic`](crate::MultiLockRequest::atomic)) is
    /// not possible for this client or on this bucket; nothing was written.
    /// The ordered `lock_all` still is.
    #[error("cannot lock {names:?} atomically: {reason}")]
    NotAtomic { names: Vec<String>, reason: String },
    /// The lock is no longer held by this guard.
    #[error("lock {name:?} was lost: {reason}")]
    Lost { name: String, reason: LostReason },
    /// The bucket holds a value jetlock cannot read under this lock's key.
    #[error("lock {name:?} has an unreadable record: {source}")]
    Corrupt {
        name: String,
        #[source]
        source: RecordError,
    },
    /// This client's session is over: the coordinators declared it dead, or
    /// none confirmed it within its timeout (they may have). Create a new
    /// client.
    #[error("the session is over: the coordinators declared it dead, or none confirmed it in time (missed heartbeats); connect a new client")]
    SessionExpired,
    /// A coordinator refused the request.
    #[error("coordinator refused {op} of lock {name:?}: {code}: {message}")]
    Refused {
        name: String,
        op: &'static str,
        code: crate::protocol::ErrorCode,
        message: String,
    },
    /// NATS did not answer (timeout, disconnect, permissions).
    #[error("{op} of lock {name:?} failed: {source}")]
    Nats {
        name: String,
        op: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

/// Failures of [`crate::Client::connect`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `url` has its password replaced by `***`.
    #[error("could not connect to NATS at {url}: {source}")]
    Nats {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the credentials (or their absence).
    #[error("NATS at {url} refused the connection {credentials}: check the credentials (user and password, token, nkey or creds file) and that the server knows them")]
    NotAuthorized {
        url: String,
        /// The user that was refused, when a user and password were sent.
        user: Option<String>,
        /// How the connection presented itself (`as user "worker"`, `with
        /// a token`, `with the creds file ...`): no secret.
        credentials: String,
    },
    /// TLS failed: a server certificate no trusted CA signed, a client
    /// certificate the server refused or did not get, or certificate files
    /// that are not PEM.
    #[error("TLS with NATS at {url} failed: {source} (check the CA that signed the server's certificate, and the client certificate and key)")]
    Tls {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A credentials or certificate file could not be read, or holds no
    /// usable key.
    #[error("could not use the {what} {}: {source}", path.display())]
    Credentials {
        /// `nkey file`, `creds file`, `TLS client certificate`, ...
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    InvalidUrl(#[from] UrlError),
    /// [`crate::ClientOptions::session_prefix`] would not give valid
    /// session ids.
    #[error("session prefix {prefix:?} is not usable: {reason} (1-3 dot-separated tokens of A-Z a-z 0-9 _ -, at most 105 bytes)")]
    InvalidSessionPrefix { prefix: String, reason: String },
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("could not open the locks stream: {0}")]
    Stream(#[source] async_nats::Error),
}

/// Why a server list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server URL {url} {reason}")]
pub struct UrlError {
    /// The URL, with any password replaced by `***`.
    pub url: String,
    pub reason: &'static str,
}
