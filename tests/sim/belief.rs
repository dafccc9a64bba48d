//! The client's session belief: when a session's holds must be given up.
//!
//! These are the rules of `SessionLink` (src/client/session.rs), where they
//! are woven into an async task over a NATS connection: the newest
//! heartbeat answered `alive` confirms the session from when it was *sent*;
//! the session is in jeopardy a tenth of the applied timeout before that
//! confirmation runs out, and ends there (holds lost, no more heartbeats);
//! an answer `alive: false` ends it at once; only the first answer to each
//! heartbeat is read (`nats.request`). This adapter stays thin and is
//! replaced by the library's own pure type once `src/client/belief.rs`
//! exists (branch safety-sessions), so the simulated beliefs are the code's.

use jetlock::protocol::{ConnId, Heartbeat, HeartbeatAck};
use std::time::Duration;
use tokio::time::Instant;

pub struct SessionBelief {
    timeout: Duration,
    confirmed: Option<Instant>,
    applied_timeout: Duration,
    ended: bool,
}

impl SessionBelief {
    pub fn new(timeout: Duration) -> Self {
        SessionBelief {
            timeout,
            confirmed: None,
            applied_timeout: timeout,
            ended: false,
        }
    }

    /// How often the session beats.
    pub fn interval(&self) -> Duration {
        self.timeout / 4
    }

    /// The body of the next heartbeat (none once the session ended).
    pub fn heartbeat(&self, conn: &ConnId) -> Option<Heartbeat> {
        (!self.ended).then(|| Heartbeat {
            timeout_ms: Some(self.timeout.as_millis() as u64),
            conn: Some(conn.clone()),
            leaving: false,
        })
    }

    /// The first answer to the heartbeat sent at `sent`. True when it ends
    /// the session (declared dead).
    pub fn answered(&mut self, ack: &HeartbeatAck, sent: Instant) -> bool {
        if self.ended {
            return false;
        }
        if ack.alive {
            self.confirmed = Some(self.confirmed.map_or(sent, |c| c.max(sent)));
            self.applied_timeout = Duration::from_millis(ack.timeout_ms).min(self.timeout);
            false
        } else {
            self.ended = true;
            true
        }
    }

    /// When the holds must be given up unless a newer answer comes.
    pub fn jeopardy_at(&self) -> Option<Instant> {
        let confirmed = self.confirmed?;
        let t = self.applied_timeout;
        Some(confirmed + t - t / 10)
    }

    /// The clock reached `now`. True when the session ends here
    /// (unconfirmed).
    pub fn check(&mut self, now: Instant) -> bool {
        if self.ended || self.jeopardy_at().is_none_or(|at| now < at) {
            return false;
        }
        self.ended = true;
        true
    }

    pub fn ended(&self) -> bool {
        self.ended
    }
}
