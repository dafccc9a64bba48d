//! How long a client may believe in its locks: the client's half of the
//! session contract (docs/ARCHITECTURE.md, "The session contract").
//!
//! A coordinator declares a session dead no sooner than the session's
//! timeout after the last heartbeat it received, or the reconnect grace
//! after the server reported the session's connection closed with no
//! heartbeat on a new connection since. The client cannot see either
//! moment, only bounds on them from its own clock:
//!
//! - every heartbeat it sent is received no sooner than it was sent, so a
//!   death by silence comes no sooner than the timeout after the newest
//!   heartbeat a coordinator answered `alive` (or, before any answer,
//!   after the first heartbeat sent: a coordinator may know the session from
//!   it and never answer);
//! - its connection closes no sooner than it sees the drop, so a death by
//!   a closed connection comes no sooner than the grace after that, unless
//!   every coordinator answered `alive` a heartbeat that names the new
//!   connection (each coordinator ends the grace on its own: one that
//!   missed the heartbeat still ends the session).
//!
//! The client gives every hold up a tenth before the earlier bound (the
//! clock-rate allowance). This type holds only that arithmetic, with no
//! I/O and no clock of its own, so the same code runs in the client and in
//! the deterministic simulation.

use std::time::Duration;
use tokio::time::Instant;

/// The smallest reconnect grace a coordinator applies; assumed until a
/// coordinator says which one it applies.
pub const MIN_RECONNECT_GRACE: Duration = Duration::from_millis(20);

/// The client's view of its session, fed by what it sends and hears.
#[derive(Debug, Clone)]
pub struct SessionBelief {
    /// The timeout this client asks for: it never believes longer.
    asked: Duration,
    /// The smallest timeout any coordinator said it applies.
    timeout: Duration,
    /// The smallest reconnect grace any coordinator said it applies.
    grace: Duration,
    /// The oldest heartbeat sent that may have reached a coordinator
    /// (neither answered nor refused with no responders), while nothing
    /// was confirmed.
    first_sent: Option<Instant>,
    /// When the newest heartbeat answered `alive` was sent.
    confirmed: Option<Instant>,
    /// When the connection dropped, until every coordinator confirmed a
    /// heartbeat that names the new connection.
    dropped: Option<Instant>,
    /// The coordinators that confirmed the new connection since the drop,
    /// and how many there are (the most any of them said).
    heard_new: Vec<String>,
    coordinators: u32,
    ended: bool,
    /// The deadline in force when the session ended or last gave its holds
    /// up, until a heartbeat starts a new one.
    final_deadline: Option<Instant>,
}

/// What an answer to a heartbeat means for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Confirmed: the deadline may have moved later.
    Alive,
    /// A coordinator declared the session dead: every hold is lost now.
    Dead,
    /// The session had already ended; the answer changes nothing.
    Over,
}

impl SessionBelief {
    /// A session that asks for `timeout`.
    pub fn new(timeout: Duration) -> Self {
        SessionBelief {
            asked: timeout,
            timeout,
            grace: MIN_RECONNECT_GRACE,
            first_sent: None,
            confirmed: None,
            dropped: None,
            heard_new: Vec::new(),
            coordinators: 0,
            ended: false,
            final_deadline: None,
        }
    }

    /// A heartbeat was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        if !self.ended {
            self.final_deadline = None;
        }
        self.first_sent.get_or_insert(at);
    }

    /// The heartbeat sent at `at` reached no coordinator (the server
    /// answered *no responders*): it starts no deadline. `next` is the send
    /// time of the oldest later heartbeat still unanswered, if any.
    pub fn refused(&mut self, at: Instant, next: Option<Instant>) {
        if self.first_sent == Some(at) {
            self.first_sent = next;
        }
    }

    /// A coordinator answered the heartbeat sent at `sent`: `alive`, the
    /// timeout it applies and, from coordinators that have one, the
    /// reconnect grace it applies. `new_conn`: the heartbeat named a
    /// connection made after the last drop, so the coordinator knows the
    /// client reconnected (one naming the old connection, sent before the
    /// client learned its new id, proves nothing about the close).
    pub fn answered(
        &mut self,
        sent: Instant,
        alive: bool,
        timeout_ms: u64,
        grace_ms: Option<u64>,
        new_conn: bool,
    ) -> Answered {
        self.answered_by(sent, alive, timeout_ms, grace_ms, new_conn, None)
    }

    /// [`SessionBelief::answered`], by the coordinator `by` (id, and how
    /// many coordinators it counts). The drop is over once every
    /// coordinator confirmed the new connection; an answer that names no
    /// coordinator (one before protocol 1.2) ends it alone.
    pub fn answered_by(
        &mut self,
        sent: Instant,
        alive: bool,
        timeout_ms: u64,
        grace_ms: Option<u64>,
        new_conn: bool,
        by: Option<(&str, u32)>,
    ) -> Answered {
        if self.ended {
            return Answered::Over;
        }
        if !alive {
            // Any one coordinator that declared us dead hands on the locks
            // it acts for, whatever the others answered.
            self.end();
            return Answered::Dead;
        }
        self.timeout = self
            .timeout
            .min(Duration::from_millis(timeout_ms))
            .min(self.asked);
        if let Some(g) = grace_ms {
            // Learned once; a smaller one from another coordinator wins.
            let g = Duration::from_millis(g);
            self.grace = if self.confirmed.is_none() {
                g
            } else {
                self.grace.min(g)
            };
        }
        self.confirmed = Some(self.confirmed.map_or(sent, |c| c.max(sent)));
        if new_conn && self.dropped.is_some() {
            match by {
                Some((id, coordinators)) => {
                    self.coordinators = self.coordinators.max(coordinators);
                    if !self.heard_new.iter().any(|h| h == id) {
                        self.heard_new.push(id.to_owned());
                    }
                    if self.heard_new.len() >= self.coordinators as usize {
                        self.dropped = None;
                    }
                }
                None => self.dropped = None,
            }
        }
        Answered::Alive
    }

    /// The connection dropped at `at` (the client saw it go).
    pub fn dropped(&mut self, at: Instant) {
        if self.dropped.is_none() {
            self.dropped = Some(at);
            self.heard_new.clear();
            self.coordinators = 0;
        }
    }

    /// A drop is not yet confirmed over by every coordinator: heartbeat
    /// again soon, so one that missed the heartbeat hears the next.
    pub fn reconnect_unconfirmed(&self) -> bool {
        !self.ended && self.dropped.is_some()
    }

    /// The session ends here (declared dead, or closed).
    pub fn end(&mut self) {
        if !self.ended {
            self.final_deadline = self.deadline();
        }
        self.ended = true;
    }

    /// The deadline passed: every hold is given up. Returns whether the
    /// session ends too: it does once a coordinator confirmed it (one that
    /// was cut off with it could confirm it again after the heal, while the
    /// others declared it dead). A session no coordinator ever confirmed
    /// (none runs, or the server hangs) goes on with its clock restarted
    /// from its next heartbeat.
    pub fn give_up(&mut self) -> bool {
        self.final_deadline = self.final_deadline.or(self.deadline());
        if self.confirmed.is_some() {
            self.end();
        } else {
            self.first_sent = None;
            self.dropped = None;
        }
        self.ended
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The timeout the client counts with: the smallest it has been told.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When every hold must be given up unless a newer heartbeat is
    /// confirmed first. `None` while nothing was sent (no coordinator can
    /// know the session) and once the session ended.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let base = self.confirmed.or(self.first_sent)?;
        let by_silence = base + allowance(self.timeout);
        let by_drop = self.dropped.map(|d| d + allowance(self.grace));
        Some(by_drop.map_or(by_silence, |d| d.min(by_silence)))
    }

    /// [`SessionBelief::deadline`], or where there is none because the
    /// session just ended or gave its holds up, the one in force then: a
    /// process stopped past it (SIGSTOP) gives its holds up when it wakes,
    /// but by its own clock it had at that deadline (`LockGuard::deadline`).
    pub fn last_deadline(&self) -> Option<Instant> {
        self.deadline().or(self.final_deadline)
    }

    /// The session is over by now: ended, or past its deadline.
    pub fn over_at(&self, now: Instant) -> bool {
        self.ended || self.deadline().is_some_and(|d| now >= d)
    }
}

/// Nine tenths of `d`: what the client's clock may count of a span that
/// the coordinator's clock counts as `d`, at the assumed rate bound.
fn allowance(d: Duration) -> Duration {
    d - d / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_deadline_before_anything_is_sent_then_one_from_the_first_heartbeat() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        assert_eq!(b.deadline(), None);
        b.sent(t0);
        b.sent(t0 + 250 * MS);
        // Unanswered: counted from the first heartbeat, not the newest.
        assert_eq!(b.deadline(), Some(t0 + 900 * MS));
    }

    #[test]
    fn the_deadline_in_force_when_the_session_ended_is_kept() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.answered(t0, true, 1000, Some(100), true);
        b.end();
        assert_eq!(b.deadline(), None);
        assert_eq!(b.last_deadline(), Some(t0 + 900 * MS));
        // Declared dead: the same.
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.answered(t0, true, 1000, Some(100), true);
        assert_eq!(b.answered(t0, false, 1000, Some(100), true), Answered::Dead);
        assert_eq!(b.last_deadline(), Some(t0 + 900 * MS));
        // Never confirmed, holds given up: the same until the next
        // heartbeat starts a new deadline.
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        assert!(!b.give_up());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.last_deadline(), Some(t0 + 900 * MS));
        b.sent(t0 + 1000 * MS);
        assert_eq!(b.last_deadline(), Some(t0 + 1900 * MS));
    }

    #[test]
    fn a_heartbeat_that_reached_nobody_starts_no_deadline() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.sent(t0 + 250 * MS);
        b.refused(t0, Some(t0 + 250 * MS));
        assert_eq!(b.deadline(), Some(t0 + 1150 * MS));
        b.refused(t0 + 250 * MS, None);
        assert_eq!(b.deadline(), None);
        b.sent(t0 + 500 * MS);
        assert_eq!(b.deadline(), Some(t0 + 1400 * MS));
    }

    #[test]
    fn the_smallest_timeout_told_wins_and_never_above_the_asked() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        assert_eq!(
            b.answered(t0, true, 5000, Some(100), false),
            Answered::Alive
        );
        assert_eq!(b.timeout(), 1000 * MS);
        b.answered(t0, true, 500, Some(100), false);
        b.answered(t0, true, 800, Some(100), false);
        assert_eq!(b.timeout(), 500 * MS);
        assert_eq!(b.deadline(), Some(t0 + 450 * MS));
    }

    #[test]
    fn a_confirmation_counts_from_when_its_heartbeat_was_sent() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.sent(t0 + 250 * MS);
        // The later heartbeat's answer arrives first, then the older one:
        // the deadline never moves back.
        b.answered(t0 + 250 * MS, true, 1000, None, false);
        b.answered(t0, true, 1000, None, false);
        assert_eq!(b.deadline(), Some(t0 + 1150 * MS));
    }

    #[test]
    fn any_dead_answer_ends_the_session_whatever_others_said() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.answered(t0, true, 1000, None, false);
        assert_eq!(b.answered(t0, false, 1000, None, false), Answered::Dead);
        assert!(b.over_at(t0));
        assert_eq!(b.deadline(), None);
        assert_eq!(b.answered(t0, true, 1000, None, false), Answered::Over);
        assert!(b.is_ended());
    }

    #[test]
    fn a_dropped_connection_shortens_the_deadline_to_the_grace_until_reconfirmed() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.answered(t0, true, 1000, Some(100), false);
        b.dropped(t0 + 300 * MS);
        assert_eq!(b.deadline(), Some(t0 + 390 * MS));
        // A heartbeat that named the old connection confirms nothing about
        // the close, even one sent after it.
        b.sent(t0 + 305 * MS);
        b.answered(t0 + 305 * MS, true, 1000, Some(100), false);
        assert_eq!(b.deadline(), Some(t0 + 390 * MS));
        // One on the new connection does.
        b.sent(t0 + 310 * MS);
        b.answered(t0 + 310 * MS, true, 1000, Some(100), true);
        assert_eq!(b.deadline(), Some(t0 + 1210 * MS));
    }

    #[test]
    fn before_any_grace_is_told_the_smallest_one_is_assumed() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.dropped(t0);
        assert_eq!(b.deadline(), Some(t0 + allowance(MIN_RECONNECT_GRACE)));
    }

    #[test]
    fn giving_up_ends_only_a_session_that_was_confirmed() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        assert!(!b.give_up());
        assert_eq!(b.deadline(), None);
        b.sent(t0 + 900 * MS);
        b.answered(t0 + 900 * MS, true, 1000, None, false);
        assert!(b.give_up());
        assert!(b.is_ended());
    }

    #[test]
    fn past_the_deadline_the_session_is_over() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        assert!(!b.over_at(t0 + 899 * MS));
        assert!(b.over_at(t0 + 900 * MS));
    }

    #[test]
    fn a_drop_is_over_only_once_every_coordinator_heard_the_new_connection() {
        let t0 = Instant::now();
        let mut b = SessionBelief::new(1000 * MS);
        b.sent(t0);
        b.answered_by(t0, true, 1000, Some(500), false, Some(("c0", 2)));
        b.dropped(t0 + 100 * MS);
        let by_drop = Some(t0 + 550 * MS);
        assert_eq!(b.deadline(), by_drop);
        // c1 missed the new connection's heartbeat: its grace still runs.
        b.sent(t0 + 150 * MS);
        b.answered_by(t0 + 150 * MS, true, 1000, Some(500), true, Some(("c0", 2)));
        assert!(b.reconnect_unconfirmed());
        assert_eq!(b.deadline(), by_drop);
        // A heartbeat naming the old connection proves nothing.
        b.answered_by(t0 + 150 * MS, true, 1000, Some(500), false, Some(("c1", 2)));
        assert_eq!(b.deadline(), by_drop);
        b.sent(t0 + 200 * MS);
        b.answered_by(t0 + 200 * MS, true, 1000, Some(500), true, Some(("c1", 2)));
        assert!(!b.reconnect_unconfirmed());
        assert_eq!(b.deadline(), Some(t0 + 1100 * MS));
        // A coordinator before protocol 1.2 names none: its answer alone
        // ends the drop, as it did then.
        b.dropped(t0 + 300 * MS);
        b.answered(t0 + 350 * MS, true, 1000, Some(500), true);
        assert!(!b.reconnect_unconfirmed());
    }
}
