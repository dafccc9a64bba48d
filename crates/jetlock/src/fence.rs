//! Fencing tokens and the helper a protected resource uses to check them.
//!
//! A lock is a lease: a holder that pauses (GC, SIGSTOP, a slow disk) past
//! its lease can wake up still believing it holds the lock. The fencing token
//! closes that hole. Every grant carries the KV revision of the write that
//! granted it; revisions of one key strictly increase across releases,
//! expiries, restarts and failovers (they are the stream's sequence). A
//! resource that remembers the highest token it has accepted and refuses any
//! lower one can never be written by a stale holder.
//!
//! [`Fence`] is that check for in-process resources (the demo ledger, tests).
//! A database does the same with a column:
//! `UPDATE accounts SET balance = $1, fence = $2 WHERE id = $3 AND fence <= $2`.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The fencing token of a grant: the KV revision of the granting write.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The raw revision.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A write was refused because a newer holder has already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {presented}: this resource already accepted token {highest}")]
pub struct StaleToken {
    /// The token the writer presented.
    pub presented: FencingToken,
    /// The highest token the resource has accepted.
    pub highest: FencingToken,
}

/// Remembers, per resource, the highest fencing token accepted, and refuses
/// lower ones. Cheap to share (`Arc<Fence>`); checks on different resources
/// do not contend.
#[derive(Debug, Default)]
pub struct Fence {
    highest: DashMap<String, FencingToken>,
}

impl Fence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits a write to `resource` by the holder of `token`: accepted when
    /// `token` is at least the highest seen (one holder writes many times
    /// with one token), refused with [`StaleToken`] when lower. The check
    /// and the update are one atomic step per resource.
    pub fn admit(&self, resource: &str, token: FencingToken) -> Result<(), StaleToken> {
        self.admit_with(resource, token, || ())
    }

    /// Like [`Fence::admit`], but runs `write` under the same per-resource
    /// exclusion, so the check and the write cannot be separated by a newer
    /// holder's admission.
    pub fn admit_with<T>(
        &self,
        resource: &str,
        token: FencingToken,
        write: impl FnOnce() -> T,
    ) -> Result<T, StaleToken> {
        let mut entry = self
            .highest
            .entry(resource.to_owned())
            .or_insert(FencingToken(0));
        if token < *entry {
            return Err(StaleToken {
                presented: token,
                highest: *entry,
            });
        }
        *entry = token;
        Ok(write())
    }

    /// The highest token accepted for `resource`, if any.
    pub fn highest(&self, resource: &str) -> Option<FencingToken> {
        self.highest.get(resource).map(|t| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_tokens_are_refused_equal_and_higher_accepted() {
        let fence = Fence::new();
        fence.admit("acct:1", FencingToken(5)).unwrap();
        fence.admit("acct:1", FencingToken(5)).unwrap();
        assert_eq!(
            fence.admit("acct:1", FencingToken(4)),
            Err(StaleToken {
                presented: FencingToken(4),
                highest: FencingToken(5)
            })
        );
        fence.admit("acct:1", FencingToken(9)).unwrap();
        assert_eq!(fence.highest("acct:1"), Some(FencingToken(9)));
        // Resources are independent.
        fence.admit("acct:2", FencingToken(1)).unwrap();
    }

    #[test]
    fn admit_with_runs_the_write_only_when_admitted() {
        let fence = Fence::new();
        let mut writes = 0;
        fence
            .admit_with("r", FencingToken(3), || writes += 1)
            .unwrap();
        assert!(fence
            .admit_with("r", FencingToken(2), || writes += 1)
            .is_err());
        assert_eq!(writes, 1);
    }
}
