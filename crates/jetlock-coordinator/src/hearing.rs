//! Whether the coordinator could hear the cluster: the proof a death needs.
//!
//! A coordinator declares a session dead from silence, and silence proves
//! nothing when the coordinator itself is cut off. Its own beat coming back
//! through its server is not enough: a server that lost its routes still
//! echoes, while the sessions on the other side go unheard and another
//! coordinator keeps confirming them. So the runtime publishes a proof beat
//! to a replicated JetStream stream every [`PROOF_INTERVAL`]; the stream
//! acknowledges it only once a quorum of servers stored it, which needs the
//! routes. A beat sent at `s` and acknowledged by `s` + `ack` shows the
//! coordinator was connected to the quorum within that span; one
//! acknowledged later shows little (a paused server stores and acknowledges
//! on waking what was sent while it slept), so it counts as not stored.
//!
//! Such beats whose send times are at most `gap` apart make one span of
//! hearing. A death stands only when one span covers everything from when
//! a heartbeat would have saved the session to past its deadline. A gap (no
//! quorum, our server paused, our own loop stalled) breaks the span:
//! sessions are then counted as heard at the gap's end, as after a stall.
//! Hearing may have been lost for at most `gap` + `ack` within a span
//! without a break showing; that must be shorter than any silence that can
//! kill: a session's heartbeats come every quarter of its timeout, so a
//! loss of hearing that hides a death by silence lasts at least three
//! quarters of its timeout. So the bounds depend on the session's timeout
//! ([`BOUNDS`]): 150 + 60 ms for the shortest (300 ms, a loss of 225 ms
//! kills), and looser for longer ones, whose proof may come later under
//! load (a busy server stores a beat in 100 ms and more) without a break.
//! Each class of timeout has its own span ([`Hearings`]).
//!
//! Confirmations need the same proof (`EngineConfig::confirm_with_proof`,
//! on by default). A coordinator cut off with some clients' server hears
//! their heartbeats while the rest of the cluster does not; were it to
//! answer them alive, they would keep believing in locks that the other
//! side hands on. So an `alive` answer waits in [`HeldAcks`] until a proof
//! beat sent after the heartbeat arrived is acknowledged in time (for the
//! session's class): the beat went over the same connection and then over
//! the routes to the quorum, after the heartbeat, so the routes were up
//! when the heartbeat passed (routes are TCP: in order). And the span of
//! hearing that beat belongs to must have begun [`SETTLING`] before the
//! heartbeat was read, so hearing was not lost from before the
//! heartbeat was sent (one sent during a partition and read just after the
//! heal sat in our socket, and was never carried to the other side) to the
//! answer. An answer no such beat releases is dropped, never sent, and the
//! client's deadline runs out.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How often a proof beat is sent.
pub const PROOF_INTERVAL: Duration = Duration::from_millis(50);

/// What a span of hearing may hide, for sessions of at least `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The shortest session timeout these bounds serve.
    pub timeout: Duration,
    /// The longest time between two acknowledged beats' sends in one span.
    pub gap: Duration,
    /// A beat acknowledged later than this after its send proves nothing.
    pub ack: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The classes of session timeout, shortest first; a session is judged by
/// the last class whose `timeout` it reaches. Each keeps `gap` + `ack`
/// below three quarters of its `timeout` (a test checks it).
pub const BOUNDS: [Bounds; 3] = [
    Bounds {
        timeout: ms(300),
        gap: ms(150),
        ack: ms(60),
    },
    Bounds {
        timeout: ms(900),
        gap: ms(300),
        ack: ms(300),
    },
    Bounds {
        timeout: ms(3000),
        gap: ms(1000),
        ack: ms(1000),
    },
];

/// How long a span of hearing must have lasted before a heartbeat read in
/// it may be confirmed: one read sooner may have sat unread here since
/// before the span began, when it may not have crossed the routes. The
/// same for every class: it bounds how late this coordinator reads what
/// its server delivered, which does not depend on the session.
pub const SETTLING: Duration = BOUNDS[0].gap;

/// The longest any class waits for a proof beat's acknowledgement.
pub const MAX_ACK_DELAY: Duration = BOUNDS[BOUNDS.len() - 1].ack;

/// The class that judges a session whose timeout is `timeout`.
pub fn class_of(timeout: Duration) -> usize {
    BOUNDS
        .iter()
        .rposition(|b| b.timeout <= timeout)
        .unwrap_or(0)
}

/// The acknowledged proof beats so far, as one span, under one class's
/// bounds.
#[derive(Debug, Clone)]
pub struct Hearing {
    bounds: Bounds,
    /// Start of the current span of hearing.
    since: Option<Instant>,
    /// Send time of the newest acknowledged beat.
    through: Option<Instant>,
}

impl Default for Hearing {
    /// The shortest timeouts' span.
    fn default() -> Self {
        Hearing::new(BOUNDS[0])
    }
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
    pub fn new(bounds: Bounds) -> Self {
        Hearing {
            bounds,
            since: None,
            through: None,
        }
    }

    /// A proof beat sent at `sent` was acknowledged by the quorum at
    /// `acked`.
    pub fn acked(&mut self, sent: Instant, acked: Instant) {
        if acked.saturating_duration_since(sent) > self.bounds.ack {
            return;
        }
        let joined = self
            .through
            .is_some_and(|t| sent <= t || sent.duration_since(t) <= self.bounds.gap);
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

/// One span of hearing per class of session timeout ([`BOUNDS`]).
#[derive(Debug, Clone)]
pub struct Hearings {
    classes: Vec<Hearing>,
}

impl Default for Hearings {
    fn default() -> Self {
        Hearings {
            classes: BOUNDS.iter().copied().map(Hearing::new).collect(),
        }
    }
}

impl Hearings {
    pub fn acked(&mut self, sent: Instant, acked: Instant) {
        for h in &mut self.classes {
            h.acked(sent, acked);
        }
    }

    pub fn broke(&mut self) {
        for h in &mut self.classes {
            h.broke();
        }
    }

    /// The span that judges sessions of class `class` (see [`class_of`]).
    pub fn of(&self, class: usize) -> &Hearing {
        &self.classes[class.min(self.classes.len() - 1)]
    }
}

/// `alive` heartbeat answers waiting for their proof (a heartbeat's answer
/// is late by at most one [`PROOF_INTERVAL`] and a round trip).
#[derive(Debug, Default)]
pub struct HeldAcks<T> {
    /// (arrived, class of the session's timeout, answer), in arrival order.
    held: VecDeque<(Instant, usize, T)>,
    /// Answers dropped unsent so far (no proof in time, or too many held):
    /// their clients' deadlines run on.
    pub withheld: u64,
}

/// Most answers held at once; beyond it the oldest is dropped (its client
/// heartbeats again). 40,000 sessions heartbeating every 225 ms for 250 ms.
pub const MAX_HELD_ACKS: usize = 40_000;
/// An answer held this long is dropped: no proof came (the slowest class
/// waits [`MAX_ACK_DELAY`] for a beat sent up to a beat's own wait after the
/// heartbeat), and a client whose heartbeat is this old has sent newer ones.
pub const HELD_ACK_LIFETIME: Duration = Duration::from_millis(2500);

impl<T> HeldAcks<T> {
    /// Holds the answer to a heartbeat of a session of `class` that arrived
    /// at `arrived`.
    pub fn hold(&mut self, arrived: Instant, class: usize, answer: T) {
        if self.held.len() >= MAX_HELD_ACKS {
            self.held.pop_front();
            self.withheld += 1;
        }
        self.held.push_back((arrived, class, answer));
    }

    /// A proof beat sent at `sent` was acknowledged at `acked`. For each
    /// answer to a heartbeat that arrived before it was sent, if the beat
    /// was in time for the answer's class, the answer is decided: it goes
    /// if it arrived [`SETTLING`] or more after that class's span began,
    /// and is dropped otherwise. A beat late for a class decides
    /// nothing of it: the next one in time does, and a span broken
    /// meanwhile drops them.
    pub fn proved(&mut self, sent: Instant, acked: Instant, hearings: &Hearings) -> Vec<T> {
        let delay = acked.saturating_duration_since(sent);
        let mut released = Vec::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for (arrived, class, answer) in self.held.drain(..) {
            let bounds = BOUNDS[class.min(BOUNDS.len() - 1)];
            if arrived > sent || delay > bounds.ack {
                kept.push_back((arrived, class, answer));
            } else if hearings
                .of(class)
                .span_start()
                .is_some_and(|s| s + SETTLING <= arrived)
            {
                released.push(answer);
            } else {
                self.withheld += 1;
            }
        }
        self.held = kept;
        released
    }

    /// Drops answers no proof released in time.
    pub fn expire(&mut self, now: Instant) {
        while self.held.front().is_some_and(|(arrived, _, _)| {
            now.saturating_duration_since(*arrived) > HELD_ACK_LIFETIME
        }) {
            self.held.pop_front();
            self.withheld += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beats acknowledged 1 ms after their send, every proof interval
    /// from `from` through `to`.
    fn heard(hs: &mut Hearings, from: Instant, to: Instant) {
        let mut t = from;
        while t <= to {
            hs.acked(t, t + MS);
            t += PROOF_INTERVAL;
        }
    }

    /// One beat, as the engine takes it: into the spans, then the answers.
    fn beat<T>(h: &mut HeldAcks<T>, hs: &mut Hearings, sent: Instant, acked: Instant) -> Vec<T> {
        hs.acked(sent, acked);
        h.proved(sent, acked, hs)
    }

    #[test]
    fn an_answer_goes_only_with_a_beat_sent_after_its_heartbeat_and_acked_in_time() {
        let t0 = Instant::now();
        let mut hs = Hearings::default();
        heard(&mut hs, t0 - 200 * MS, t0);
        let mut h = HeldAcks::default();
        h.hold(t0 + 10 * MS, 0, "a");
        h.hold(t0 + 30 * MS, 0, "b");
        // Sent before "a" arrived.
        assert!(beat(&mut h, &mut hs, t0 + 5 * MS, t0 + 6 * MS).is_empty());
        assert_eq!(beat(&mut h, &mut hs, t0 + 20 * MS, t0 + 21 * MS), vec!["a"]);
        // The first beat after "b" is acknowledged too late for the
        // shortest timeouts: it proves nothing of them, and the next one in
        // the same span decides.
        assert!(beat(&mut h, &mut hs, t0 + 40 * MS, t0 + 200 * MS).is_empty());
        assert_eq!(beat(&mut h, &mut hs, t0 + 90 * MS, t0 + 91 * MS), vec!["b"]);
        // The same lateness proves a longer timeout's heartbeat.
        h.hold(t0 + 100 * MS, 1, "slow");
        assert_eq!(
            beat(&mut h, &mut hs, t0 + 110 * MS, t0 + 250 * MS),
            vec!["slow"]
        );
        assert_eq!(h.withheld, 0);
        // Hearing broke after "c" arrived: the new span began after it, so
        // "c" is dropped, not confirmed.
        h.hold(t0 + 300 * MS, 0, "c");
        hs.broke();
        assert!(beat(&mut h, &mut hs, t0 + 600 * MS, t0 + 601 * MS).is_empty());
        // Read too soon after a new span began (a heal): dropped too.
        h.hold(t0 + 650 * MS, 0, "e");
        assert!(beat(&mut h, &mut hs, t0 + 700 * MS, t0 + 701 * MS).is_empty());
        // Never decided (no beat): dropped after its lifetime.
        h.hold(t0 + 800 * MS, 0, "d");
        h.expire(t0 + 800 * MS + HELD_ACK_LIFETIME + MS);
        assert!(beat(&mut h, &mut hs, t0 + 4000 * MS, t0 + 4001 * MS).is_empty());
        assert_eq!(h.withheld, 3);
    }

    #[test]
    fn every_class_notices_a_loss_of_hearing_that_could_hide_a_death() {
        for b in BOUNDS {
            // Heartbeats come every quarter of the timeout: a loss that
            // hides a death lasts three quarters of it.
            assert!(b.gap + b.ack < b.timeout * 3 / 4, "{b:?}");
            assert!(b.gap >= 2 * PROOF_INTERVAL, "{b:?}");
        }
        assert!(BOUNDS.windows(2).all(|w| w[0].timeout < w[1].timeout));
        assert_eq!(class_of(100 * MS), 0);
        assert_eq!(class_of(899 * MS), 0);
        assert_eq!(class_of(900 * MS), 1);
        assert_eq!(class_of(Duration::from_secs(40)), 2);
    }

    #[test]
    fn a_longer_timeouts_span_outlasts_beats_too_late_for_the_shortest() {
        let t0 = Instant::now();
        let mut hs = Hearings::default();
        // Every beat stored 100 ms after its send (a busy server).
        let mut t = t0;
        while t <= t0 + 1000 * MS {
            hs.acked(t, t + 100 * MS);
            t += PROOF_INTERVAL;
        }
        assert_eq!(hs.of(0).verdict(t0, t0 + 300 * MS), Verdict::Wait);
        assert_eq!(hs.of(1).verdict(t0, t0 + 900 * MS), Verdict::Dead);
        assert_eq!(hs.of(1).span_start(), Some(t0));
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
