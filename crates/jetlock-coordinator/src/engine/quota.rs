//! Per-session quotas: how many locks a session may hold and how many
//! acquires it may have waiting, checked when an acquire arrives.
//!
//! Counting a session's locks exactly means walking every key, too much
//! for every request. So each session has a count taken by such a walk and
//! the acquires admitted since: their sum can only overstate what it holds
//! and waits for (a release or a grant lowers the truth, not the sum). Only
//! when the sum reaches a limit is the session counted again, at most once
//! per [`RECOUNT_INTERVAL`], so a session pressing against its limit costs
//! one walk a second, and one that released locks may be refused for up to
//! that long.
//!
//! Only the key's owner checks: a mirror admits every acquire and drops it
//! when it sees the owner's refusal (`Engine::answered`), so no coordinator
//! forgets a waiter that the owner kept.

use super::Holding;
use super::{Engine, Request};
use jetlock::protocol::{ErrorCode, WireError};
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two exact counts of one session.
const RECOUNT_INTERVAL: Duration = Duration::from_secs(1);
/// Sessions remembered beyond the live ones before the forgotten are
/// swept out of the counts.
const SLACK: usize = 1024;

/// What one session holds and waits for, as far as the quotas know.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionLoad {
    /// Locks held at the last count.
    held: u32,
    /// Acquires waiting at the last count.
    waits: u32,
    /// Acquires admitted since the last count.
    admitted: u32,
    counted_at: Option<Instant>,
}

impl Engine {
    /// Why an acquire of `session` breaks its quotas, if it does; counts
    /// it as admitted otherwise. Reentries and other requests pass.
    pub(super) fn quota_refusal(
        &mut self,
        session: &str,
        request: &Request,
        now: Instant,
    ) -> Option<WireError> {
        let Request::Acquire {
            name,
            owner,
            wait_ms,
            ..
        } = request
        else {
            return None;
        };
        let (max_locks, max_waits) = (
            self.cfg.max_locks_per_session,
            self.cfg.max_waits_per_session,
        );
        if max_locks == 0 && max_waits == 0 {
            return None;
        }
        let reentry = self.keys.get(name.key()).is_some_and(|ks| {
            matches!(&ks.current, Holding::Held { record, .. }
                if record.session == session && record.owner == *owner)
        });
        if reentry {
            return None;
        }
        let waits = *wait_ms > 0;
        let over = |l: &SessionLoad| {
            (max_locks > 0 && l.held + l.admitted >= max_locks)
                || (waits && max_waits > 0 && l.waits + l.admitted >= max_waits)
        };
        let load = self.loads.get(session).cloned().unwrap_or_default();
        let stale = load
            .counted_at
            .is_none_or(|at| now.duration_since(at) >= RECOUNT_INTERVAL);
        let load = if over(&load) && stale {
            self.count(session, now)
        } else {
            load
        };
        if over(&load) {
            let e = if max_locks > 0 && load.held + load.admitted >= max_locks {
                WireError::new(
                    ErrorCode::TooManyLocks,
                    format!(
                        "session {session} holds or is being granted {} locks, the most \
                         max_locks_per_session ({max_locks}) allows",
                        load.held + load.admitted
                    ),
                )
            } else {
                WireError::new(
                    ErrorCode::TooManyWaits,
                    format!(
                        "session {session} has {} acquires waiting, the most \
                         max_waits_per_session ({max_waits}) allows",
                        load.waits + load.admitted
                    ),
                )
            };
            self.loads.insert(session.to_owned(), load);
            return Some(e);
        }
        let mut load = load;
        load.admitted += 1;
        self.loads.insert(session.to_owned(), load);
        if self.loads.len() > self.sessions.alive_count() * 2 + SLACK {
            let sessions = &self.sessions;
            self.loads.retain(|s, _| !sessions.is_dead(s));
        }
        None
    }

    /// Counts what `session` holds and waits for by walking every key.
    fn count(&mut self, session: &str, now: Instant) -> SessionLoad {
        let mut load = SessionLoad {
            counted_at: Some(now),
            ..SessionLoad::default()
        };
        for ks in self.keys.values() {
            if matches!(&ks.current, Holding::Held { record, .. } if record.session == session) {
                load.held += 1;
            }
            load.waits += ks
                .busy
                .queue
                .iter()
                .filter(|w| w.session == session)
                .count() as u32;
        }
        load
    }
}
