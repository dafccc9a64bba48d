//! Whether the coordinator could hear the cluster: the proof a death needs.
//!
//! A coordinator declares a session dead from silence, and silence proves
//! nothing when the coordinator itself is cut off. Its own beat coming back
//! through its server is not enough: a server that lost its routes still
//! echoes, while the sessions on the other side go unheard and another
//! coordinator keeps confirming them. So the runtime publishes a proof beat
//! to a replicated JetStream stream every [`PROOF_INTERVAL`]; the stream
//! acknowledges it only once a quorum of servers stored it, which needs the
//! routes. A beat sent at `s` and acknowledged by `s` + [`MAX_ACK_DELAY`]
//! shows the coordinator was connected to the quorum within that span; one
//! acknowledged later shows little (a paused server stores and acknowledges
//! on waking what was sent while it slept), so it counts as not stored.
//!
//! Such beats whose send times are at most [`MAX_GAP`] apart make one span
//! of hearing. A death stands only when one span covers everything from
//! when a heartbeat would have saved the session to past its deadline. A
//! gap (no quorum, our server paused, our own loop stalled) breaks the
//! span: sessions are then counted as heard at the gap's end, as after a
//! stall. Hearing may have been lost for at most [`MAX_GAP`] +
//! [`MAX_ACK_DELAY`] within a span without a break showing; that must be
//! shorter than any silence that can kill: a session's heartbeats come
//! every quarter of its timeout, so a loss of hearing that hides a death by
//! silence lasts at least three quarters of the shortest timeout (225 ms of
//! 300 ms).
//!
//! Confirmations need the same proof, when `EngineConfig::confirm_with_proof`
//! is on (off by default: under load proof beats come late and
//! confirmations stop; docs/ARCHITECTURE.md). A coordinator cut off with some
//! clients' server hears their heartbeats while the rest of the cluster
//! does not; were it to answer them alive, they would keep believing in
//! locks that the other side hands on. So an `alive` answer waits in
//! [`HeldAcks`] until a proof beat sent after the heartbeat arrived is
//! acknowledged in time: the beat went over the same connection and then
//! over the routes to the quorum, after the heartbeat, so the routes were
//! up when the heartbeat passed (routes are TCP: in order). And the span of
//! hearing that beat belongs to must have begun [`MAX_GAP`] before the
//! heartbeat was read, so hearing was not lost from before the heartbeat
//! was sent (one sent during a partition and read just after the heal sat
//! in our socket, and was never carried to the other side) to the answer.
//! An answer no such beat releases is dropped, never sent, and the client's
//! deadline runs out.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How often a proof beat is sent.
pub const PROOF_INTERVAL: Duration = Duration::from_millis(50);
/// The longest time between two acknowledged beats' sends within one span.
pub const MAX_GAP: Duration = Duration::from_millis(150);
/// A beat acknowledged later than this after its send proves nothing.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(60);

/// The acknowledged proof beats so far, as one span.
#[derive(Debug, Default, Clone)]
pub struct Hearing {
    /// Start of the current span of hearing.
    since: Option<Instant>,
    /// Send time of the newest acknowledged beat.
    through: Option<Instant>,
}

/// What to do with an overdue session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Heard all along: it is dead.
    Dead,
    /// Hearing broke after it was last heard: count it heard from then.
    Revive(Instant),
    /// No acknowledged beat sent after its deadline yet.
    Wait,
}

impl Hearing {
    /// A proof beat sent at `sent` was acknowledged by the quorum at
    /// `acked`.
    pub fn acked(&mut self, sent: Instant, acked: Instant) {
        if acked.saturating_duration_since(sent) > MAX_ACK_DELAY {
            return;
        }
        let joined = self
            .through
            .is_some_and(|t| sent <= t || sent.duration_since(t) <= MAX_GAP);
        if !joined {
            self.since = Some(sent);
        }
        self.through = Some(self.through.map_or(sent, |t| t.max(sent)));
    }

    /// Hearing broke whatever was acknowledged (our own loop stalled, so
    /// heartbeats may sit unread): a new span starts with the next beat.
    pub fn broke(&mut self) {
        self.through = None;
        self.since = None;
    }

    /// When the current span of hearing began.
    pub fn span_start(&self) -> Option<Instant> {
        self.since
    }

    /// Whether a session that needed hearing from `since` to `due` is dead.
    pub fn verdict(&self, since: Instant, due: Instant) -> Verdict {
        match (self.since, self.through) {
            (Some(start), Some(_)) if start > since => Verdict::Revive(start),
            (Some(_), Some(through)) if through >= due => Verdict::Dead,
            _ => Verdict::Wait,
        }
    }
}

/// `alive` heartbeat answers waiting for their proof (a heartbeat's answer
/// is late by at most one [`PROOF_INTERVAL`] and a round trip).
#[derive(Debug, Default)]
pub struct HeldAcks<T> {
    held: VecDeque<(Instant, T)>,
}

/// Most answers held at once; beyond it the oldest is dropped (its client
/// heartbeats again). 40,000 sessions heartbeating every 225 ms for 250 ms.
pub const MAX_HELD_ACKS: usize = 40_000;
/// An answer held this long is dropped: no proof came, and a client whose
/// heartbeat is this old has sent newer ones.
pub const HELD_ACK_LIFETIME: Duration = Duration::from_secs(1);

impl<T> HeldAcks<T> {
    /// Holds the answer to a heartbeat that arrived at `arrived`.
    pub fn hold(&mut self, arrived: Instant, answer: T) {
        if self.held.len() >= MAX_HELD_ACKS {
            self.held.pop_front();
        }
        self.held.push_back((arrived, answer));
    }

    /// A proof beat sent at `sent` was acknowledged at `acked`, and the
    /// span of hearing it is part of began at `span`. If it was in time,
    /// the answers to heartbeats that arrived before it was sent are
    /// decided: those that arrived [`MAX_GAP`] or more after the span began
    /// go, the others are dropped. A late beat decides nothing: the next
    /// one in time does, and a span broken meanwhile drops them.
    pub fn proved(&mut self, sent: Instant, acked: Instant, span: Option<Instant>) -> Vec<T> {
        if acked.saturating_duration_since(sent) > MAX_ACK_DELAY {
            return Vec::new();
        }
        let n = self.held.partition_point(|(arrived, _)| *arrived <= sent);
        self.held
            .drain(..n)
            .filter(|(arrived, _)| span.is_some_and(|s| s + MAX_GAP <= *arrived))
            .map(|(_, a)| a)
            .collect()
    }

    /// Drops answers no proof released in time.
    pub fn expire(&mut self, now: Instant) {
        while self
            .held
            .front()
            .is_some_and(|(arrived, _)| now.saturating_duration_since(*arrived) > HELD_ACK_LIFETIME)
        {
            self.held.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_goes_only_with_a_beat_sent_after_its_heartbeat_and_acked_in_time() {
        let t0 = Instant::now();
        let span = Some(t0 - MAX_GAP);
        let mut h = HeldAcks::default();
        h.hold(t0 + 10 * MS, "a");
        h.hold(t0 + 30 * MS, "b");
        // Sent before "a" arrived.
        assert!(h.proved(t0 + 5 * MS, t0 + 6 * MS, span).is_empty());
        assert_eq!(h.proved(t0 + 20 * MS, t0 + 21 * MS, span), vec!["a"]);
        // The first beat after "b" is acknowledged too late: it proves
        // nothing, and the next one in the same span decides.
        assert!(h.proved(t0 + 40 * MS, t0 + 200 * MS, span).is_empty());
        assert_eq!(h.proved(t0 + 90 * MS, t0 + 91 * MS, span), vec!["b"]);
        // Hearing broke after "c" arrived: the new span began after it, so
        // "c" is dropped, not confirmed.
        h.hold(t0 + 300 * MS, "c");
        assert!(h
            .proved(t0 + 600 * MS, t0 + 601 * MS, Some(t0 + 600 * MS))
            .is_empty());
        // Read too soon after a new span began (a heal): dropped too.
        h.hold(t0 + 500 * MS, "e");
        assert!(h
            .proved(t0 + 510 * MS, t0 + 511 * MS, Some(t0 + 450 * MS))
            .is_empty());
        // Never decided (no beat): dropped after its lifetime.
        h.hold(t0 + 400 * MS, "d");
        h.expire(t0 + 400 * MS + HELD_ACK_LIFETIME + MS);
        assert!(h.proved(t0 + 2000 * MS, t0 + 2001 * MS, span).is_empty());
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_death_needs_a_span_from_before_the_silence_to_past_the_deadline() {
        let t0 = Instant::now();
        let mut h = Hearing::default();
        assert_eq!(h.verdict(t0 + 50 * MS, t0 + 350 * MS), Verdict::Wait);
        for i in 0..4 {
            h.acked(t0 + i * 100 * MS, t0 + i * 100 * MS);
        }
        // Heard through 300 ms: not yet past the deadline.
        assert_eq!(h.verdict(t0 + 50 * MS, t0 + 350 * MS), Verdict::Wait);
        h.acked(t0 + 400 * MS, t0 + 400 * MS);
        assert_eq!(h.verdict(t0 + 50 * MS, t0 + 350 * MS), Verdict::Dead);
    }

    #[test]
    fn a_gap_revives_sessions_last_heard_before_it() {
        let t0 = Instant::now();
        let mut h = Hearing::default();
        h.acked(t0, t0);
        h.acked(t0 + 100 * MS, t0 + 100 * MS);
        // Nothing acknowledged for 400 ms: routes lost, server paused...
        h.acked(t0 + 500 * MS, t0 + 500 * MS);
        h.acked(t0 + 600 * MS, t0 + 600 * MS);
        assert_eq!(
            h.verdict(t0 + 50 * MS, t0 + 350 * MS),
            Verdict::Revive(t0 + 500 * MS)
        );
        // A session last heard inside the new span is judged by it.
        assert_eq!(h.verdict(t0 + 510 * MS, t0 + 590 * MS), Verdict::Dead);
    }

    #[test]
    fn acknowledgements_out_of_order_do_not_break_the_span() {
        let t0 = Instant::now();
        let mut h = Hearing::default();
        h.acked(t0, t0);
        h.acked(t0 + 140 * MS, t0 + 140 * MS);
        h.acked(t0 + 70 * MS, t0 + 70 * MS);
        assert_eq!(h.verdict(t0, t0 + 120 * MS), Verdict::Dead);
    }

    #[test]
    fn a_beat_acknowledged_late_proves_nothing() {
        let t0 = Instant::now();
        let mut h = Hearing::default();
        h.acked(t0, t0);
        // Sent while our server slept, stored when it woke.
        h.acked(t0 + 100 * MS, t0 + 600 * MS);
        h.acked(t0 + 200 * MS, t0 + 600 * MS);
        h.acked(t0 + 650 * MS, t0 + 660 * MS);
        assert_eq!(h.verdict(t0, t0 + 50 * MS), Verdict::Revive(t0 + 650 * MS));
    }

    #[test]
    fn a_stall_breaks_the_span() {
        let t0 = Instant::now();
        let mut h = Hearing::default();
        h.acked(t0, t0);
        h.broke();
        h.acked(t0 + 100 * MS, t0 + 100 * MS);
        assert_eq!(h.verdict(t0, t0 + 50 * MS), Verdict::Revive(t0 + 100 * MS));
    }
}
