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
    highest: DashMap<String, Marks>,
}

/// What a resource has accepted: the highest token of all, and the highest
/// a writer presented (readers check against that one only).
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    any: FencingToken,
    writer: FencingToken,
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
        let mut entry = self.highest.entry(resource.to_owned()).or_default();
        if token < entry.any {
            return Err(StaleToken {
                presented: token,
                highest: entry.any,
            });
        }
        *entry = Marks {
            any: token,
            writer: token,
        };
        Ok(write())
    }

    /// Admits a read of `resource` under a read/write lock by the holder
    /// of the read token `token`: refused when a writer with a higher
    /// token was admitted (the reader outlived that writer's grant).
    /// Reads raise nothing, so readers holding at once are all admitted in
    /// any order; writers go through [`Fence::admit`], which refuses a
    /// writer below any token seen, a reader's included.
    pub fn admit_read(&self, resource: &str, token: FencingToken) -> Result<(), StaleToken> {
        let mut entry = self.highest.entry(resource.to_owned()).or_default();
        if token < entry.writer {
            return Err(StaleToken {
                presented: token,
                highest: entry.writer,
            });
        }
        // Later writers must be above this reader too.
        entry.any = entry.any.max(token);
        Ok(())
    }

    /// The highest token accepted for `resource`, if any.
    pub fn highest(&self, resource: &str) -> Option<FencingToken> {
        self.highest.get(resource).map(|m| m.any)
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

    #[test]
    fn readers_pass_in_any_order_and_only_behind_the_last_writer() {
        let fence = Fence::new();
        fence.admit_read("r", FencingToken(7)).unwrap();
        // A reader granted earlier than one already admitted still reads.
        fence.admit_read("r", FencingToken(5)).unwrap();
        // A writer below a reader's token outlived its grant.
        assert!(fence.admit("r", FencingToken(6)).is_err());
        fence.admit("r", FencingToken(10)).unwrap();
        // A reader that outlived the writer's grant is refused.
        assert_eq!(
            fence.admit_read("r", FencingToken(8)),
            Err(StaleToken {
                presented: FencingToken(8),
                highest: FencingToken(10)
            })
        );
        fence.admit_read("r", FencingToken(12)).unwrap();
        assert_eq!(fence.highest("r"), Some(FencingToken(12)));
    }
}
