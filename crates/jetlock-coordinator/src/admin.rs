//! The coordinators' operator endpoints, part of the NATS service `jetlock`
//! (so `$SRV.PING.jetlock`, `$SRV.INFO.jetlock` and `$SRV.STATS.jetlock`
//! find every coordinator). Any one coordinator answers, since each mirrors
//! every queue and session:
//!
//! - `jetlock.admin.locks` — body: optional `{"prefix": "account"}`;
//!   answer: [`LocksView`], held locks and locks with waiters;
//! - `jetlock.admin.members` — answer: [`MembersView`], live coordinators
//!   and sessions;
//! - `jetlock.admin.settings` — answer: [`SettingsView`], the live settings
//!   this coordinator applies and where each comes from. Every coordinator
//!   answers (each in a queue group of its own), so a caller that waits
//!   for several answers sees coordinators that disagree.
//!
//! Answers are JSON; a bad body gets a service error (`Nats-Service-Error`
//! headers) and changes nothing.

use serde::{Deserialize, Serialize};

/// Name of the NATS service every coordinator registers.
pub const SERVICE: &str = "jetlock";
pub const LOCKS: &str = "jetlock.admin.locks";
pub const MEMBERS: &str = "jetlock.admin.members";
pub const SETTINGS: &str = "jetlock.admin.settings";

/// Body of a `jetlock.admin.locks` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocksQuery {
    /// Only locks whose name starts with this segment prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl LocksQuery {
    /// Reads a `jetlock.admin.locks` body (empty, or a [`LocksQuery`]) into
    /// the bucket-key prefix to list (`None`: every lock). The error is the
    /// text of the service error the caller gets.
    pub fn parse(body: &[u8]) -> Result<Option<String>, String> {
        let query: LocksQuery = if body.is_empty() {
            LocksQuery::default()
        } else {
            serde_json::from_slice(body).map_err(|e| e.to_string())?
        };
        match query.prefix.as_deref() {
            Some(p) => jetlock::name::LockName::new(p.trim_end_matches(':'))
                .map(|n| Some(n.key().to_owned()))
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocksView {
    /// The coordinator that answered.
    pub coordinator: String,
    /// The locks bucket it serves (absent from coordinators before it was
    /// added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    pub locks: Vec<LockInfo>,
}

/// One lock, as the answering coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    pub key: String,
    /// Absent when nobody holds it (it has waiters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderView>,
    /// Waiting sessions, first in line first.
    pub waiters: Vec<String>,
    /// The coordinator serving this lock.
    pub served_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderView {
    pub session: String,
    pub owner: String,
    pub token: u64,
    pub holds: u32,
    pub lease_ms: u64,
    /// Lease left, from when the coordinator saw the last write.
    pub lease_left_ms: u64,
    /// Since the grant, by the granting clock.
    pub held_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersView {
    pub coordinator: String,
    /// The answering coordinator's wall clock, Unix ms.
    pub now_ms: u64,
    pub coordinators: Vec<CoordinatorView>,
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorView {
    pub id: String,
    /// Since its last heartbeat (0 for the answering one).
    pub last_seen_ms: u64,
    /// Locks it serves among those known.
    pub locks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub session: String,
    pub last_seen_ms: u64,
    pub timeout_ms: u64,
    pub locks_held: u64,
    pub waiting: u64,
    /// The coordinator answering its heartbeats.
    pub served_by: String,
    /// Who the client says it is, from its heartbeats (absent for clients
    /// that do not say, and from coordinators before protocol 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<jetlock::protocol::ClientInfo>,
}

/// Where a live setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingSource {
    /// Compiled into the coordinator.
    Default,
    /// The coordinator's TOML file (`--config`).
    File,
    /// A `JETLOCK_*` environment variable of the coordinator.
    Env,
    /// A command-line flag of the coordinator.
    Flag,
    /// The config bucket (`jetlock config set`), laid over the others.
    Bucket,
}

impl SettingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SettingSource::Default => "default",
            SettingSource::File => "file",
            SettingSource::Env => "env",
            SettingSource::Flag => "flag",
            SettingSource::Bucket => "bucket",
        }
    }
}

/// Answer of `jetlock.admin.settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsView {
    /// The coordinator that answered.
    pub coordinator: String,
    /// Every live setting, then one `policy.<prefix>` per policy.
    pub settings: Vec<SettingView>,
}

/// One live setting as a coordinator applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingView {
    pub key: String,
    pub value: serde_json::Value,
    pub source: SettingSource,
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetlock::name::LockName;
    use proptest::prelude::*;

    proptest! {
        /// A `jetlock.admin.locks` body comes off the network: no bytes
        /// make the parser panic, and an accepted prefix is a canonical
        /// bucket key.
        #[test]
        fn a_locks_query_never_panics_and_gives_a_canonical_key(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<String>().prop_map(|p| serde_json::to_vec(&serde_json::json!({ "prefix": p }))
                    .expect("a string serializes")),
            ]
        ) {
            if let Ok(Some(prefix)) = LocksQuery::parse(&body) {
                prop_assert!(LockName::from_key(&prefix).is_ok(), "prefix {prefix:?}");
            }
        }
    }
}
