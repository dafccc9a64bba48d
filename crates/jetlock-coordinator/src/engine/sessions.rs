//! Sessions and coordinators: heartbeats, proof of hearing, deaths,
//! the ring, and the clock.

use super::*;

impl Engine {
    /// A session heartbeat, and its answer.
    pub fn heartbeat(
        &mut self,
        session: &str,
        hb: Heartbeat,
        now: Instant,
    ) -> Option<HeartbeatAck> {
        let touch = self
            .sessions
            .heartbeat(session, hb.timeout_ms, hb.conn, now);
        if touch == Touch::Joined {
            self.session_joined(session);
        }
        if let Some(client) = hb.client {
            self.sessions.describe(session, client);
        }
        if hb.leaving && touch != Touch::Dead {
            self.kill_session(session, "left", now);
        } else if self.unheard.remove(session).is_some() {
            // Heard at last: its waits may be granted.
            let waits: Vec<String> = self
                .keys
                .iter()
                .filter(|(_, ks)| ks.busy.queue.iter().any(|w| w.session == session))
                .map(|(k, _)| k.to_owned())
                .collect();
            for key in waits {
                self.step(&key, now);
            }
        }
        // Every coordinator answers (the client reads every answer): a
        // client whose answering coordinator died is still confirmed by
        // the others, so it keeps its locks (see `LostReason::Unconfirmed`).
        let mut ack = self.heartbeat_ack(session);
        ack.alive &= touch != Touch::Dead && touch != Touch::Refused && !hb.leaving;
        if touch == Touch::Refused {
            self.stats.sessions_refused += 1;
            ack.refused = Some(ErrorCode::TooManySessions);
        }
        Some(ack)
    }

    /// A session heartbeat whose answer goes to `reply` (an
    /// [`Action::HeartbeatAck`]): `alive: false` at once, `alive` once this
    /// coordinator proves it heard the quorum after the heartbeat arrived
    /// (see `hearing.rs`).
    pub fn heartbeat_to(&mut self, session: &str, hb: Heartbeat, reply: String, now: Instant) {
        let Some(ack) = self.heartbeat(session, hb, now) else {
            return;
        };
        if ack.alive && self.cfg.confirm_with_proof {
            let class = hearing::class_of(self.sessions.timeout_of(session));
            self.held_acks.hold(now, class, (session.to_owned(), reply));
        } else {
            self.out.push(Action::HeartbeatAck { reply, ack });
        }
    }

    /// `alive` answers dropped unsent for want of a timely proof beat so
    /// far (see `hearing::HeldAcks`).
    pub fn confirmations_withheld(&self) -> u64 {
        self.held_acks.withheld
    }

    /// The answer to a heartbeat of `session`, as things stand now.
    pub(super) fn heartbeat_ack(&self, session: &str) -> HeartbeatAck {
        HeartbeatAck {
            v: VERSION,
            alive: !self.sessions.is_dead(session),
            timeout_ms: self.sessions.timeout_of(session).as_millis() as u64,
            coordinators: self.ring.len() as u32,
            grace_ms: Some(self.sessions.reconnect_grace().as_millis() as u64),
            by: Some(self.ring.me().to_owned()),
            refused: None,
            unstored_release: true,
        }
    }

    /// A proof beat sent at `sent` was stored by a quorum, acknowledged at
    /// `acked` (see `hearing.rs`): held heartbeat answers go, and overdue
    /// sessions may now be judged.
    pub fn proof_acked(&mut self, sent: Instant, acked: Instant, now: Instant) {
        self.hearing.acked(sent, acked);
        for (session, reply) in self.held_acks.proved(sent, acked, &self.hearing) {
            let ack = self.heartbeat_ack(&session);
            self.out.push(Action::HeartbeatAck { reply, ack });
        }
        self.judge_sessions(now);
    }

    /// Overdue sessions die when this coordinator provably heard the
    /// cluster from when a heartbeat would have saved them to past their
    /// deadline; if it could not hear for part of that, they count as heard
    /// from when it could again. A death decided while it cannot prove it
    /// hears the quorum is never acted on.
    pub(super) fn judge_sessions(&mut self, now: Instant) {
        let mut want_proof = false;
        let mut dead = Vec::new();
        for o in self.sessions.overdue(now) {
            let class = hearing::class_of(self.sessions.timeout_of(&o.session));
            match self.hearing.of(class).verdict(o.since, o.due) {
                Verdict::Dead => dead.push(o),
                Verdict::Revive(at) => self.sessions.revive(&o.session, at),
                Verdict::Wait => want_proof = true,
            }
        }
        if !dead.is_empty() {
            self.confirm_deaths(dead, now);
        }
        if want_proof && !self.out.contains(&Action::Prove) {
            self.out.push(Action::Prove);
        }
    }

    /// A heartbeat of another coordinator.
    pub fn coordinator_beat(&mut self, beat: CoordinatorBeat, now: Instant) {
        let before = self.ring.members();
        let changed = if beat.leaving {
            self.ring.leave(&beat.id)
        } else {
            self.ring.beat(&beat.id, beat.conn, now)
        };
        if changed {
            let cause = if beat.leaving { "left" } else { "joined" };
            self.ring_changed(before, cause, now);
        }
    }

    /// The server reports a closed client connection.
    pub fn disconnected(&mut self, conn: &ConnId, reason: &str, now: Instant) {
        let before = self.ring.members();
        if self.ring.disconnected(conn).is_some() {
            self.ring_changed(before, "connection closed", now);
        }
        // A connection the client closed is its process exiting or its
        // client reconnecting (async-nats closes the old socket itself): the
        // session has the reconnect grace to heartbeat on a new connection,
        // and is asked to at once. After other reasons (read error, slow
        // consumer, server shutdown) the session lives on by its heartbeats
        // (see `Sessions::suspect`).
        if reason == "Client Closed" {
            if let Some(session) = self.sessions.closed(conn, now) {
                self.answer(&session, Answer::Probe { v: VERSION });
            }
        } else if let Some(session) = self.sessions.by_conn(conn) {
            self.sessions.suspect(&session);
        }
    }

    /// The clock: timeouts, expiries, pruning.
    pub fn tick(&mut self, now: Instant) {
        if let Some(last) = self.last_tick {
            if now.duration_since(last) > Duration::from_millis(500) {
                self.sessions.stalled(now);
                self.hearing.broke();
            }
        }
        self.last_tick = Some(now);
        self.held_acks.expire(now);
        self.expire_rounds(now);
        let before = self.ring.members();
        if !self.ring.expire(now).is_empty() {
            self.ring_changed(before, "heartbeats missed", now);
        }
        self.judge_sessions(now);
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            self.step(&key, now);
        }
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        let window = self.cfg.dedup_window;
        self.requests
            .retain(|_, t| !t.done || now.duration_since(t.at) < window);
        self.answered_early
            .retain(|_, at| now.duration_since(*at) < ANSWERED_EARLY_LIFETIME);
        let ring = &self.ring;
        let ready = self.ready;
        let acting = |key: &str| ready && ring.owns_key(key);
        self.keys.retain(|ks| {
            // Most keys have no operations: skip hashing them to the ring
            // (a hash per coordinator per key).
            if let Some(busy) = ks.busy.get_mut() {
                if !busy.ops.is_empty() && !acting(&ks.key) {
                    busy.ops
                        .retain(|op| now.duration_since(op.arrived) < MIRROR_OP_LIFETIME);
                }
                busy.lapsed
                    .retain(|w| now.duration_since(w.arrived) < MIRROR_OP_LIFETIME);
                // Both only matter for the current hold (and a grant only
                // within its window): forgetting them lets `settle` free
                // the activity of a key that is only held.
                if busy
                    .recent_grant
                    .as_ref()
                    .is_some_and(|g| now.duration_since(g.at) >= REGRANT_WINDOW)
                {
                    busy.recent_grant = None;
                }
                if busy.contended != ks.current.token() {
                    busy.contended = 0;
                }
            }
            ks.busy.settle();
            !ks.idle()
        });
        self.holders.sweep();
        self.strings.sweep();
    }

    pub(super) fn session_joined(&mut self, session: &str) {
        if self.ready && self.ring.owns(session) {
            self.event(Event::about(EventKind::SessionUp, session));
        }
    }

    pub(super) fn kill_session(&mut self, session: &str, cause: &str, now: Instant) {
        self.unheard.remove(session);
        if self.sessions.kill(session, now) {
            self.kill_session_effects(session, cause, now);
        }
    }

    /// A session died: its waiters leave, its locks go on.
    pub(super) fn kill_session_effects(&mut self, session: &str, cause: &str, now: Instant) {
        self.stats.session_deaths += 1;
        if self.ready && self.ring.owns(session) {
            self.event(Event {
                cause: Some(cause.to_owned()),
                ..Event::about(EventKind::SessionDown, session)
            });
        }
        let touched: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, ks)| {
                matches!(&ks.current, Holding::Held { record, .. } if record.session == session)
                    || ks.busy.queue.iter().any(|w| w.session == session)
            })
            .map(|(k, _)| k.to_owned())
            .collect();
        for key in touched {
            self.step(&key, now);
        }
    }

    /// The live coordinators changed from `before`: report who left, take
    /// over the keys now ours.
    pub(super) fn ring_changed(&mut self, before: Vec<String>, cause: &str, now: Instant) {
        self.mark_gained_partitions();
        let members = self.ring.members();
        // A coordinator that left may have confirmed a heartbeat that never
        // reached this one (`deaths.rs`), and can no longer be asked: the
        // client counts its deadline from that heartbeat, sent before the
        // departure was known here. So every session counts as heard now.
        if before.iter().any(|id| !members.contains(id)) {
            self.sessions.heard_until(now);
        }
        let mut taken: HashMap<String, u64> = HashMap::default();
        if self.ready {
            for gone in before.iter().filter(|id| !members.contains(id)) {
                // One report per departure: by the coordinator owning its id.
                if self.ring.owns(gone) {
                    self.event(Event {
                        cause: Some(cause.to_owned()),
                        coordinators: Some(members.clone()),
                        ..Event::about(EventKind::CoordinatorDown, gone)
                    });
                }
            }
            let partitions = self.ring.partitions();
            for key in self.keys.keys().filter(|k| self.ring.owns_key(k)) {
                match key_owner_among(&before, key, partitions) {
                    Some(prev) if prev != self.ring.me() => {
                        *taken.entry(prev.to_owned()).or_default() += 1
                    }
                    _ => {}
                }
            }
        }
        for (from, keys) in taken {
            let why = if members.contains(&from) {
                format!("rebalanced from {from}")
            } else {
                format!("{from} {cause}")
            };
            let me = self.ring.me().to_owned();
            self.event(Event {
                cause: Some(why),
                keys: Some(keys),
                coordinators: Some(members.clone()),
                ..Event::about(EventKind::Takeover, &me)
            });
        }
        let keys: Vec<String> = self.keys.keys().map(str::to_owned).collect();
        self.take_over(keys, now);
    }

    /// Acts on those of `keys` this coordinator owns now, as their new
    /// owner.
    pub(super) fn take_over(&mut self, keys: Vec<String>, now: Instant) {
        for key in keys {
            if !self.owns(&key) {
                continue;
            }
            // Repeat a recent grant whose answer the previous owner may not
            // have sent (clients ignore a repeated answer).
            let repeat = self.keys.get(&key).and_then(|ks| {
                let g = ks.busy.recent_grant.as_ref()?;
                let current_token = match &ks.current {
                    Holding::Held { revision, record } => record.token_at(*revision),
                    Holding::Vacant { .. } => return None,
                };
                (g.token == current_token && now.duration_since(g.at) < REGRANT_WINDOW).then(|| {
                    (
                        g.session.clone(),
                        Answer::Granted {
                            v: VERSION,
                            re: g.re.clone(),
                            key: ks.name().to_string(),
                            token: g.token,
                            ttl_ms: g.ttl_ms,
                            holds: 1,
                            waiters: ks.busy.queue.len() as u32,
                        },
                    )
                })
            });
            if let Some((session, answer)) = repeat {
                self.answer(&session, answer);
            }
            self.step(&key, now);
        }
    }
}
