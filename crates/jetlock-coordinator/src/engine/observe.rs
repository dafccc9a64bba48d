//! What the bucket says: watched changes, reads, and the results of
//! our own writes, applied to a key's state.

use super::*;

impl Engine {
    /// The bucket changed (or a read found this): `key` is now `current`,
    /// written by someone other than a coordinator.
    pub fn observed(&mut self, name: &LockName, current: Current, now: Instant) {
        self.observed_change(name, current, false, Stamp::default(), now);
    }

    /// A change of the bucket, with what its message says about its writer;
    /// `expired` when the server wrote it because the lease ran out (a
    /// `MaxAge` marker).
    pub fn observed_change(
        &mut self,
        name: &LockName,
        current: Current,
        expired: bool,
        stamp: Stamp,
        now: Instant,
    ) {
        // Our own write whose result we did not learn: it landed.
        self.recognise(name, &current, &stamp, now);
        let current = self.holders.holding(&current);
        let key = name.key().to_owned();
        let acting = self.owns(&key);
        let ks = self.keys.get_or_insert(name);
        if current.revision() <= ks.current.revision() {
            // Seen already, but a write that conflicted with it may have
            // put its waiter back in the queue since: the one this hold
            // was granted to (a start race of two coordinators).
            self.claim_granted(&key, acting, now);
            if let Some(ks) = self.keys.get_mut(&key) {
                adopt_reentries(ks);
            }
            return;
        }
        let previous = std::mem::replace(&mut ks.current, current.clone());
        ks.set_applied(next_applied(
            &previous,
            &current,
            ks.applied(),
            stamp.applied,
        ));
        let events = transition_events(ks, &previous, expired, now);
        if acting {
            events.into_iter().for_each(|e| self.event(e));
        }
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        // The previous hold ended. A release of it still pending here was
        // carried out (by a coordinator that died before answering, or
        // overtaken by an expiry): either way it is released, and running
        // it against the new holder would wrongly answer `not_holder`.
        if let Holding::Held { revision, record } = &previous {
            let ended = record.token_at(*revision);
            let still = match &current {
                Holding::Held { revision, record } => record.token_at(*revision) == ended,
                Holding::Vacant { .. } => false,
            };
            if !still {
                for op in ks.busy.ops.iter_mut() {
                    if op.session == record.session
                        && matches!(op.kind, HolderOpKind::Release { token } if token == ended)
                    {
                        op.kind = HolderOpKind::Settled;
                    }
                }
            }
        }
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        if let Holding::Held { revision, record } = &current {
            let token = record.token_at(*revision);
            if ks.busy.revoke.as_ref().is_some_and(|r| r.token != token) {
                ks.busy.revoke = None;
            }
        }
        self.claim_granted(&key, acting, now);
        if let Some(ks) = self.keys.get_mut(&key) {
            adopt_reentries(ks);
        }
        self.step(&key, now);
    }

    /// The queued acquire whose grant the hold is (`Applied::grant`) now
    /// holds the lock: another coordinator (or our own write whose answer
    /// was lost) granted it. It is answered (again) and leaves the queue.
    /// Any other acquire of the same session still waits: an older hold
    /// of that session seen while catching up is not its grant, nor is the
    /// current hold a stale replayed acquire's. A hold whose writer named
    /// nothing (a client's own CAS) is claimed by session and owner.
    pub(super) fn claim_granted(&mut self, key: &str, acting: bool, now: Instant) {
        let Some(ks) = self.keys.get_mut(key) else {
            return;
        };
        let Holding::Held { revision, record } = &ks.current else {
            return;
        };
        let token = record.token_at(*revision);
        let grant = ks.applied().grant;
        let Some(i) = ks.busy.queue.iter().position(|w| {
            w.session == record.session
                && w.owner == record.owner
                && (grant == w.seq || ks.applied().is_none())
        }) else {
            return;
        };
        let (lease_ms, holds) = (record.lease_ms, record.holds);
        let w = ks.busy.queue.remove(i).expect("position is in range");
        ks.busy.recent_grant = Some(Box::new(RecentGrant {
            session: w.session.to_string(),
            re: w.id.to_string(),
            token,
            ttl_ms: lease_ms,
            at: now,
        }));
        if acting {
            let answer = Answer::Granted {
                v: VERSION,
                re: w.id.to_string(),
                key: ks.name().to_string(),
                token,
                ttl_ms: lease_ms,
                holds,
                waiters: ks.busy.queue.len() as u32,
            };
            self.answer(&w.session, answer);
        }
        self.done(&w.session, &w.id, w.seq, acting);
    }

    /// The result of a [`Action::Read`]: the key's last message, or
    /// `None` when the read failed.
    pub fn read_done(&mut self, name: &LockName, read: Option<(Current, Stamp)>, now: Instant) {
        if let Some((current, stamp)) = &read {
            self.recognise(name, current, stamp, now);
        }
        if let Some(ks) = self.keys.get_mut(name.key()) {
            match ks.busy.inflight.take().map(|b| *b) {
                Some(Inflight::Read) => {}
                // The key's last message is not our write: it did not land,
                // or something newer followed it (whose stamp tells what
                // was applied). When the read failed too, the next write
                // expects the revision we know: a landed write makes it
                // conflict, and the read after that shows its stamp.
                Some(Inflight::Unsure { was, .. }) => put_back(ks, *was),
                other => ks.busy.inflight = other.map(Box::new),
            }
        }
        match read {
            Some((current, stamp)) => {
                self.observed_change(name, current, false, stamp, now);
                // The watch may have shown the key already, so the read
                // changes nothing: plan again anyway.
                self.step(name.key(), now);
            }
            None => {
                // The read failed too: try again shortly. Refusals still
                // wait for a read that succeeds.
                if let Some(ks) = self.keys.get_mut(name.key()) {
                    ks.busy.ops.iter_mut().for_each(|op| op.verified = false);
                }
                self.timers.push(Reverse((
                    now + Duration::from_millis(100),
                    self.strings.get(name.key()),
                )));
            }
        }
    }

    /// The result of an [`Action::Write`] for `name`.
    pub fn written(&mut self, name: &LockName, result: WriteResult, now: Instant) {
        let key = name.key().to_owned();
        let acting = self.owns(&key);
        let Some(ks) = self.keys.get_mut(&key) else {
            return;
        };
        let Some(inflight) = ks.busy.inflight.take().map(|b| *b) else {
            return;
        };
        let revision = match (result, inflight.sent()) {
            (WriteResult::Written { revision }, _) => revision,
            (WriteResult::Failed, Some(sent)) => {
                // It may have landed: keep the work until a read (or the
                // watch) shows whether the key's last message is this write.
                ks.busy.inflight = Some(Box::new(Inflight::Unsure {
                    sent,
                    was: Box::new(inflight),
                }));
                self.out.push(Action::Read { name: name.clone() });
                return;
            }
            (WriteResult::Conflict | WriteResult::Failed, _) => {
                if result == WriteResult::Conflict {
                    self.stats.conflicts += 1;
                }
                // Put the work back where it was and learn the key anew.
                put_back(ks, inflight);
                ks.busy.inflight = Some(Box::new(Inflight::Read));
                self.out.push(Action::Read { name: name.clone() });
                return;
            }
        };
        let key_str = ks.name().to_string();
        let mut events = Vec::new();
        match inflight {
            Inflight::Grant {
                waiter,
                record,
                ending,
                ..
            } => {
                let waiters = ks.busy.queue.len() as u32;
                let held = Holding::Held {
                    revision,
                    record: self.holders.record(&record),
                };
                let applied = Applied {
                    hold: waiter.seq,
                    ended: ended_by(ending.as_ref()),
                    grant: waiter.seq,
                };
                events = set_current(ks, held, applied, now);
                adopt_reentries(ks);
                ks.busy.revoke = None;
                ks.busy.recent_grant = Some(Box::new(RecentGrant {
                    session: waiter.session.to_string(),
                    re: waiter.id.to_string(),
                    token: revision,
                    ttl_ms: waiter.ttl_ms,
                    at: now,
                }));
                self.stats.grants += 1;
                let handoff = ending.is_some();
                if handoff {
                    self.stats.handoffs += 1;
                }
                self.answer(
                    &waiter.session,
                    Answer::Granted {
                        v: VERSION,
                        re: waiter.id.to_string(),
                        key: key_str.clone(),
                        token: revision,
                        ttl_ms: waiter.ttl_ms,
                        holds: 1,
                        waiters,
                    },
                );
                self.done(&waiter.session, &waiter.id, waiter.seq, acting);
                if let Some(ending) = ending {
                    self.ended(&key_str, ending, acting);
                }
            }
            Inflight::Update { op, record, .. } => {
                let token = record.token_at(revision);
                let holds = record.holds;
                let ttl_ms = record.lease_ms;
                let applied = Applied {
                    hold: op.seq,
                    ended: 0,
                    grant: ks.applied().grant,
                };
                let record = self.holders.record(&record);
                events = set_current(ks, Holding::Held { revision, record }, applied, now);
                let answer = match &op.kind {
                    HolderOpKind::Release { .. } => Answer::Released {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        holds,
                    },
                    HolderOpKind::Renew { .. } => Answer::Renewed {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        token,
                        ttl_ms,
                    },
                    HolderOpKind::Reenter { .. } => Answer::Granted {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key_str.clone(),
                        token,
                        ttl_ms,
                        holds,
                        waiters: ks.busy.queue.len() as u32,
                    },
                    HolderOpKind::Revoke { .. } | HolderOpKind::Settled => {
                        unreachable!("revocations and settled releases do not write")
                    }
                };
                self.answer(&op.session, answer);
                self.done(&op.session, &op.id, op.seq, acting);
            }
            Inflight::End { ending, .. } => {
                let applied = Applied {
                    hold: 0,
                    ended: ended_by(Some(&ending)),
                    grant: 0,
                };
                events = set_current(ks, Holding::Vacant { revision }, applied, now);
                ks.busy.revoke = None;
                self.ended(&key_str, ending, acting);
            }
            Inflight::Read | Inflight::Unsure { .. } => {}
        }
        if acting {
            events.into_iter().for_each(|e| self.event(e));
        }
        self.step(&key, now);
    }
}

/// Stores what our own write made of the key, unless the bucket already
/// showed it (or something newer); returns the events of the change.
pub(super) fn set_current(
    ks: &mut KeyState,
    new: Holding,
    applied: Applied,
    now: Instant,
) -> Vec<Event> {
    if new.revision() <= ks.current.revision() {
        return Vec::new();
    }
    let previous = std::mem::replace(&mut ks.current, new);
    ks.set_applied(next_applied(&previous, &ks.current, ks.applied(), applied));
    transition_events(ks, &previous, false, now)
}

/// Puts the work of a write that did not land back where it was.
pub(super) fn put_back(ks: &mut KeyState, inflight: Inflight) {
    match inflight {
        Inflight::Grant { waiter, ending, .. } => {
            ks.busy.queue.push_front(waiter);
            if let Some(Ending::Released(op)) = ending {
                ks.busy.ops.push_front(op);
            }
        }
        Inflight::Update { op, .. } => ks.busy.ops.push_front(op),
        Inflight::End {
            ending: Ending::Released(op),
            ..
        } => ks.busy.ops.push_front(op),
        Inflight::Unsure { was, .. } => put_back(ks, *was),
        Inflight::End { .. } | Inflight::Read => {}
    }
}

/// The release request a write that ends a hold applies (0: none).
pub(super) fn ended_by(ending: Option<&Ending>) -> u64 {
    match ending {
        Some(Ending::Released(op)) => op.seq,
        _ => 0,
    }
}

/// The lock events of a change from `previous` to `ks.current`: the end of
/// the previous hold, the start of a new one. Our note of the write says
/// why, when the change is the one we wrote.
pub(super) fn transition_events(
    ks: &mut KeyState,
    previous: &Holding,
    expired: bool,
    now: Instant,
) -> Vec<Event> {
    ks.changed_at = Some(now);
    let ours = |n: &Note| {
        n.expected == previous.revision()
            && match (&ks.current, &n.grantee) {
                (Holding::Held { record, .. }, Some((session, owner))) => {
                    record.session == *session && record.owner == *owner
                }
                (Holding::Vacant { .. }, None) => true,
                _ => false,
            }
    };
    let note = ks.busy.note.take().map(|n| *n).filter(ours);
    let token_of = |c: &Holding| match c {
        Holding::Held { revision, record } => Some(record.token_at(*revision)),
        Holding::Vacant { .. } => None,
    };
    let (before, after) = (token_of(previous), token_of(&ks.current));
    let lock = ks.name();
    let (name, key) = (lock.as_str(), lock.key());
    let mut events = Vec::new();
    if let (Holding::Held { record, .. }, true) = (previous, before != after) {
        let ending = note.as_ref().and_then(|n| n.ending.clone());
        let (kind, cause, by, reason) = match ending {
            Some(EndNote::Released) => (EventKind::Released, "released", None, None),
            Some(EndNote::SessionExpired) => (EventKind::Expired, "session", None, None),
            Some(EndNote::Revoked { by, reason }) => {
                (EventKind::Revoked, "revoked", Some(by), Some(reason))
            }
            None if expired => (EventKind::Expired, "lease", None, None),
            None => (EventKind::Released, "released", None, None),
        };
        events.push(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: before,
            cause: Some(cause.to_owned()),
            by,
            reason,
            acquired_ms: Some(record.acquired_ms),
            ..Event::lock(kind, name, key)
        });
    }
    if let (Holding::Held { record, .. }, true) = (&ks.current, before != after) {
        events.push(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: after,
            ttl_ms: Some(record.lease_ms),
            waited_ms: note.as_ref().and_then(|n| n.waited_ms),
            handoff: Some(before.is_some()),
            ..Event::lock(EventKind::Granted, name, key)
        });
    }
    events
}
