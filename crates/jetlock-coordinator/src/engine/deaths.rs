//! Deaths by silence, agreed with the other coordinators.
//!
//! A coordinator that finds a session overdue (with proof it could hear it
//! all along, `hearing.rs`) has only its own view: a heartbeat lost on its
//! way to this coordinator alone (core NATS drops a message to one
//! subscriber when its route or connection breaks with the message in
//! flight, or when it is a slow consumer) may have been confirmed by
//! another, and the client counts its deadline from that heartbeat. So
//! before the death stands, the others are asked when they last heard the
//! session ([`Action::AskHeard`]); the death stands only once every other
//! live coordinator answered that it counts the session overdue too (or
//! does not know it alive). One that still counts it alive revives it from
//! when it heard it, and the question is asked again when it is overdue
//! again. One that does not answer in [`ROUND_TIMEOUT`] holds the death
//! back until it answers a later question or leaves the ring. A
//! coordinator leaving can no longer be asked: every session then counts
//! as heard when its departure is learned (`Engine::ring_changed`).
//!
//! Why a heartbeat heard after an answer cannot matter: the client believes
//! only up to nine tenths of its timeout after the newest heartbeat
//! answered `alive`, and every coordinator's answer in the deciding round
//! says it heard nothing for a whole timeout. A heartbeat heard after that
//! answer was confirmed after the client's deadline had passed, and a
//! client whose deadline passed has ended its session for good.

use super::*;
use crate::membership::Overdue;

/// A question to the other coordinators about sessions found overdue.
pub(super) struct Round {
    asked: Instant,
    /// The coordinators still to answer (the others in the ring when
    /// asked, less those that left it since).
    waiting: Vec<String>,
    sessions: Vec<String>,
    /// The latest time anyone answering heard each session, on our clock.
    heard: Vec<Option<Instant>>,
}

/// A question not answered by every other coordinator by then is dropped;
/// its sessions are asked about again when next judged.
pub(super) const ROUND_TIMEOUT: Duration = Duration::from_millis(250);

/// Sessions per question: bounds the message (a mass death asks in parts).
const SESSIONS_PER_ROUND: usize = 1000;

impl Engine {
    /// Overdue sessions this coordinator would declare dead: dead at once
    /// when it is the only coordinator, else once the others agree.
    pub(super) fn confirm_deaths(&mut self, dead: Vec<Overdue>, now: Instant) {
        let me = self.ring.me().to_owned();
        let others: Vec<String> = self
            .ring
            .members()
            .into_iter()
            .filter(|m| *m != me)
            .collect();
        if others.is_empty() {
            for o in dead {
                self.kill_session(&o.session, o.cause, now);
            }
            return;
        }
        let sessions: Vec<String> = dead
            .into_iter()
            .map(|o| o.session)
            .filter(|s| !self.dying.contains_key(s))
            .collect();
        for part in sessions.chunks(SESSIONS_PER_ROUND) {
            self.rounds_asked += 1;
            let round = self.rounds_asked;
            for s in part {
                self.dying.insert(s.clone(), round);
            }
            self.rounds.insert(
                round,
                Round {
                    asked: now,
                    waiting: others.clone(),
                    sessions: part.to_vec(),
                    heard: vec![None; part.len()],
                },
            );
            self.out.push(Action::AskHeard {
                round,
                sessions: part.to_vec(),
            });
        }
    }

    /// Another coordinator's question: how long ago this one last heard
    /// each session (ms); `None` for one it counts overdue too, does not
    /// count alive, or knows only from requests (it never answered that
    /// one `alive`, so nothing the client believes rests on it: a
    /// coordinator that restarted and replayed a gone client's requests
    /// must not hold its death back for the longest timeout).
    pub fn heard_query(&self, sessions: &[String], now: Instant) -> Vec<Option<u64>> {
        sessions
            .iter()
            .map(|s| {
                if self.sessions.overdue_one(s, now).is_some() {
                    return None;
                }
                self.sessions
                    .last_heard(s, now)
                    .map(|d| d.as_millis() as u64)
            })
            .collect()
    }

    /// Coordinator `by` answered question `round`.
    pub fn heard_reply(&mut self, by: &str, round: u64, ages_ms: &[Option<u64>], now: Instant) {
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        let Some(i) = r.waiting.iter().position(|w| w == by) else {
            return;
        };
        if ages_ms.len() != r.sessions.len() {
            return;
        }
        r.waiting.swap_remove(i);
        for (heard, age) in r.heard.iter_mut().zip(ages_ms) {
            if let Some(age) = age {
                // Stamped on arrival and shortened by the clock-rate
                // allowance: never earlier than they heard it.
                let age = Duration::from_millis(*age) * 9 / 10;
                let at = now.checked_sub(age).unwrap_or(now);
                *heard = Some(heard.map_or(at, |h| h.max(at)));
            }
        }
        self.settle_round(round, now);
    }

    /// Decides a round once every coordinator it waits for answered or
    /// left the ring: a session someone still counts alive is revived from
    /// when it heard it, the rest die (if still overdue here).
    fn settle_round(&mut self, round: u64, now: Instant) {
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        let ring = self.ring.members();
        r.waiting.retain(|w| ring.contains(w));
        if !r.waiting.is_empty() {
            return;
        }
        let r = self.rounds.remove(&round).expect("present");
        for (session, heard) in r.sessions.into_iter().zip(r.heard) {
            if self.dying.get(&session) == Some(&round) {
                self.dying.remove(&session);
            }
            // Heard here meanwhile, or dead already: nothing to decide.
            let Some(o) = self.sessions.overdue_one(&session, now) else {
                continue;
            };
            match heard {
                Some(at) => self.sessions.revive(&session, at),
                None => self.kill_session(&session, o.cause, now),
            }
        }
    }

    /// Settles the rounds whose missing answers came from coordinators that
    /// left, and drops those unanswered for too long.
    pub(super) fn expire_rounds(&mut self, now: Instant) {
        let rounds: Vec<u64> = self.rounds.keys().copied().collect();
        for round in rounds {
            self.settle_round(round, now);
        }
        let stale: Vec<u64> = self
            .rounds
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.asked) > ROUND_TIMEOUT)
            .map(|(round, _)| *round)
            .collect();
        for round in stale {
            if let Some(r) = self.rounds.remove(&round) {
                for s in r.sessions {
                    if self.dying.get(&s) == Some(&round) {
                        self.dying.remove(&s);
                    }
                }
            }
        }
    }
}
