//! The per-key decisions: who is granted next (`grantee`), holder
//! operations, revocations, and the writes they take.

use super::*;

impl Engine {
    /// Decides what to do next for `key`. Runs after every change.
    pub(super) fn step(&mut self, key: &str, now: Instant) {
        let acting = self.owns(key);
        let Some(mut ks) = self.keys.remove(key) else {
            return;
        };
        self.step_key(&mut ks, acting, now);
        ks.busy.settle();
        self.keys.insert(ks);
    }

    pub(super) fn step_key(&mut self, ks: &mut KeyState, acting: bool, now: Instant) {
        // Still catching up: the bucket may not have shown the key yet, so a
        // request read meanwhile may sit in the wrong place (a reentry among
        // the waiters) until it does. Nothing leaves before `set_ready`,
        // which steps every key: a waiter forgotten here as answered by
        // another coordinator would be taken for applied by the next
        // replay.
        if !self.ready {
            return;
        }
        let vacant = matches!(ks.current, Holding::Vacant { .. });
        // 0. On a free key, operations of a hold that no longer exists are
        // settled or refused before any waiter's fate (they may need a read
        // first). A coordinator taking a key over finds such operations
        // when the done note of the one that finished them was lost; run
        // after the waiters, they made a try-lock of the free key look busy.
        if acting && vacant && ks.busy.inflight.is_none() {
            self.vacant_ops(ks);
        }
        debug_assert!(!(acting && vacant && ks.busy.inflight.is_none()) || ks.busy.ops.is_empty());
        // 1. Waiters whose wait is over or whose session died leave the
        // queue. A try-lock at the head of a free, idle key is granted
        // instead.
        let grantable = ks.busy.inflight.is_none() && ks.busy.ops.is_empty() && vacant;
        // While the key is read again after a write that lost or got no
        // answer (a key forgotten while idle costs one such write), nobody
        // knows whether it is free: the head waiter's fate waits for the
        // read, or a try-lock of a free lock would be refused as busy. A
        // mirror does not know either while operations sit on a free key
        // (the acting coordinator may have finished them, its note not yet
        // here): it keeps the head waiter, for the note or a takeover to
        // decide, rather than let it go unanswered should it take over.
        let reading = matches!(
            ks.busy.inflight.as_deref(),
            Some(Inflight::Read | Inflight::Unsure { .. })
        ) || (!acting && vacant && !ks.busy.ops.is_empty());
        let mut kept = VecDeque::with_capacity(ks.busy.queue.len());
        // Kept waiters that would be granted before the next one (see
        // `grantee`).
        let mut ahead = 0;
        for w in std::mem::take(&mut ks.busy.queue) {
            if self.sessions.is_dead(&w.session) {
                self.done(&w.session, &w.id, w.seq, acting);
            } else if w.deadline <= now && !(ahead == 0 && (grantable || reading)) {
                if acting {
                    let e = if w.try_lock {
                        let holder = match &ks.current {
                            Holding::Held { revision, record } => Some(HolderInfo {
                                session: record.session.clone(),
                                owner: record.owner.clone(),
                                token: record.token_at(*revision),
                                holds: record.holds,
                            }),
                            Holding::Vacant { .. } => None,
                        };
                        Answer::Error {
                            v: VERSION,
                            re: Some(w.id.to_string()),
                            key: Some(ks.name().to_string()),
                            code: ErrorCode::Busy,
                            message: format!("{} is held", ks.name()),
                            holder,
                        }
                    } else {
                        Answer::error(
                            Some(w.id.to_string()),
                            Some(ks.name().to_string()),
                            WireError::new(
                                ErrorCode::Timeout,
                                format!("waited {} ms", now.duration_since(w.arrived).as_millis()),
                            ),
                        )
                    };
                    self.answer(&w.session, e);
                }
                self.done(&w.session, &w.id, w.seq, acting);
                if !acting {
                    ks.busy.lapsed.push(w);
                }
            } else {
                if !self.unheard.contains_key(&*w.session) {
                    ahead += 1;
                }
                kept.push_back(w);
            }
        }
        ks.busy.queue = kept;
        if !acting || ks.busy.inflight.is_some() {
            return;
        }
        match ks.current.clone() {
            Holding::Vacant { revision } => {
                // Its operations were settled in step 0 (a read still out
                // returned above).
                if let Some(w) = self.grantee(ks) {
                    self.start_grant(ks, w, revision, None, now);
                }
            }
            Holding::Held { revision, record } => {
                let token = record.token_at(revision);
                let mut ending = None;
                while let Some(op) = ks.busy.ops.pop_front() {
                    match self.holder_op(ks, op, &record, token, now) {
                        OpOutcome::Done => {}
                        OpOutcome::Write(op, new_record, ttl) => {
                            let sent = self.next_write(revision);
                            // The hold's earlier handoff stays named, so a
                            // restart that reads only this message knows it.
                            let applied = Applied {
                                hold: op.seq,
                                ended: ks.applied().ended,
                                grant: ks.applied().grant,
                            };
                            ks.busy.inflight = Some(Box::new(Inflight::Update {
                                sent,
                                op,
                                record: new_record.clone(),
                            }));
                            self.out.push(Action::Write(Write {
                                name: ks.name(),
                                expected: revision,
                                kind: WriteKind::Put {
                                    record: new_record,
                                    ttl,
                                },
                                id: self.write_id(sent.write),
                                applied,
                            }));
                            return;
                        }
                        OpOutcome::End(e) => {
                            ending = Some(e);
                            break;
                        }
                        OpOutcome::Verify(op) => {
                            ks.busy.ops.push_front(op);
                            self.verify(ks);
                            return;
                        }
                        OpOutcome::Requeue(w) => {
                            let at = ks.busy.queue.partition_point(|q| q.seq < w.seq);
                            ks.busy.queue.insert(at, w);
                        }
                    }
                }
                if ending.is_none() {
                    if self.sessions.is_dead(&record.session) {
                        ending = Some(Ending::SessionExpired);
                    } else if ks
                        .busy
                        .revoke
                        .as_ref()
                        .is_some_and(|r| r.token == token && r.deadline <= now)
                    {
                        let r = ks.busy.revoke.as_ref().expect("checked above");
                        ending = Some(Ending::Revoked {
                            session: record.session.clone(),
                            token,
                            by: r.by.clone(),
                            reason: r.reason.clone(),
                        });
                    }
                }
                if let Some(ending) = ending {
                    match self.grantee(ks) {
                        Some(w) => self.start_grant(ks, w, revision, Some(ending), now),
                        None => {
                            ks.busy.note = Some(Box::new(Note {
                                expected: revision,
                                grantee: None,
                                waited_ms: None,
                                ending: Some(EndNote::of(&ending)),
                            }));
                            let sent = self.next_write(revision);
                            let applied = Applied {
                                hold: 0,
                                ended: ended_by(Some(&ending)),
                                grant: 0,
                            };
                            ks.busy.inflight = Some(Box::new(Inflight::End { sent, ending }));
                            self.out.push(Action::Write(Write {
                                name: ks.name(),
                                expected: revision,
                                kind: WriteKind::Release,
                                id: self.write_id(sent.write),
                                applied,
                            }));
                        }
                    }
                    return;
                }
                // Still held.
                if !ks.busy.queue.is_empty() && ks.busy.contended != token {
                    ks.busy.contended = token;
                    self.answer(
                        &record.session,
                        Answer::Contended {
                            v: VERSION,
                            key: ks.name().to_string(),
                            token,
                            waiters: ks.busy.queue.len() as u32,
                        },
                    );
                }
                if let Some(by) = ks
                    .busy
                    .queue
                    .iter()
                    .find(|w| !self.unheard.contains_key(&*w.session))
                    .filter(|w| w.preempt && ks.busy.revoke.is_none())
                    .map(|w| w.session.to_string())
                {
                    let grace = self.cfg.preempt_grace;
                    let revocation = Revocation {
                        token,
                        deadline: now + grace,
                        by,
                        reason: "preempted by a priority request".into(),
                    };
                    self.start_revocation(ks, &record, revocation, grace);
                }
                if let Some(r) = &ks.busy.revoke {
                    self.timers
                        .push(Reverse((r.deadline, self.strings.get(ks.key()))));
                }
            }
        }
    }

    /// Reads the key from the stream leader before the operations now
    /// pending on it may be refused (see `OpOutcome::Verify`).
    /// Operations on a hold that no longer exists, on a free key the
    /// coordinator acts for: settled when a write already applied them,
    /// refused `not_holder` once a read confirmed the key free; or the
    /// read is started, and they wait for it.
    fn vacant_ops(&mut self, ks: &mut KeyState) {
        while let Some(op) = ks.busy.ops.pop_front() {
            if settles(&op, ks.applied()) {
                self.settled(&ks.name(), &op);
                continue;
            }
            if !op.verified {
                ks.busy.ops.push_front(op);
                self.verify(ks);
                return;
            }
            let e = WireError::new(ErrorCode::NotHolder, format!("{} is not held", ks.name()));
            self.renew_failed(&ks.name(), &op, 0, &e);
            self.fail(&op.session, &op.id, &ks.name(), e);
            self.done(&op.session, &op.id, op.seq, true);
        }
    }

    pub(super) fn verify(&mut self, ks: &mut KeyState) {
        ks.busy.ops.iter_mut().for_each(|op| op.verified = true);
        ks.busy.inflight = Some(Box::new(Inflight::Read));
        self.out.push(Action::Read { name: ks.name() });
    }

    pub(super) fn start_grant(
        &mut self,
        ks: &mut KeyState,
        w: Waiter,
        expected: u64,
        ending: Option<Ending>,
        now: Instant,
    ) {
        ks.busy.note = Some(Box::new(Note {
            expected,
            grantee: Some((w.session.to_string(), w.owner.to_string())),
            waited_ms: Some(now.duration_since(w.arrived).as_millis() as u64),
            ending: ending.as_ref().map(EndNote::of),
        }));
        let record = LockRecord {
            owner: w.owner.to_string(),
            session: w.session.to_string(),
            acquired_ms: unix_ms(),
            lease_ms: w.ttl_ms,
            holds: 1,
            token: 0,
        };
        let sent = self.next_write(expected);
        self.out.push(Action::Write(Write {
            name: ks.name(),
            expected,
            kind: WriteKind::Put {
                record: record.clone(),
                ttl: Duration::from_millis(w.ttl_ms),
            },
            id: self.write_id(sent.write),
            applied: Applied {
                hold: w.seq,
                ended: ended_by(ending.as_ref()),
                grant: w.seq,
            },
        }));
        ks.busy.inflight = Some(Box::new(Inflight::Grant {
            sent,
            waiter: w,
            record,
            ending,
        }));
    }

    pub(super) fn start_revocation(
        &mut self,
        ks: &mut KeyState,
        record: &Record,
        r: Revocation,
        grace: Duration,
    ) {
        let grace_ms = grace.as_millis() as u64;
        self.answer(
            &record.session,
            Answer::RevokeNotice {
                v: VERSION,
                key: ks.name().to_string(),
                token: r.token,
                grace_ms,
                reason: r.reason.clone(),
            },
        );
        self.event(Event {
            session: Some(record.session.clone()),
            owner: Some(record.owner.clone()),
            token: Some(r.token),
            grace_ms: Some(grace_ms),
            reason: Some(r.reason.clone()),
            by: Some(r.by.clone()),
            ..Event::lock(EventKind::Revoking, ks.name().as_str(), ks.key())
        });
        ks.busy.revoke = Some(Box::new(r));
    }

    pub(super) fn holder_op(
        &mut self,
        ks: &mut KeyState,
        op: HolderOp,
        record: &Record,
        token: u64,
        now: Instant,
    ) -> OpOutcome {
        let refuse = |code, message: String| WireError::new(code, message);
        let check = |session: &str, claimed: u64| -> Result<(), WireError> {
            if session != record.session {
                return Err(refuse(
                    ErrorCode::NotHolder,
                    format!("{} is held by another session", ks.name()),
                ));
            }
            if claimed != token {
                return Err(refuse(
                    ErrorCode::StaleToken,
                    format!("token {claimed} is not the current token {token}"),
                ));
            }
            Ok(())
        };
        if settles(&op, ks.applied()) {
            self.settled(&ks.name(), &op);
            return OpOutcome::Done;
        }
        // Applied already (a write that landed without its ack, a request
        // replayed after a restart, a takeover after the previous owner
        // wrote but did not answer): answer it again, do not re-run it. No
        // write names an unstored release (sequence 0): one that landed
        // ended its hold, which settles it (`observe.rs`).
        if op.seq != 0 && op.seq <= ks.applied().hold {
            let on_this_hold = match &op.kind {
                HolderOpKind::Release { token: t } | HolderOpKind::Renew { token: t, .. } => {
                    check(&op.session, *t).is_ok()
                }
                HolderOpKind::Reenter { owner, .. } => {
                    op.session == record.session
                        && *owner == record.owner
                        && op.seq >= ks.applied().grant
                }
                HolderOpKind::Revoke { .. } | HolderOpKind::Settled => false,
            };
            if on_this_hold {
                self.answer_applied(ks, &op, record, token);
                return OpOutcome::Done;
            }
        }
        let verdict = match &op.kind {
            HolderOpKind::Release { token: t } => check(&op.session, *t).map(|()| {
                if record.holds > 1 {
                    let mut r = record.to_record();
                    r.holds -= 1;
                    r.token = token;
                    Some((r, Duration::from_millis(record.lease_ms)))
                } else {
                    None
                }
            }),
            HolderOpKind::Renew { token: t, ttl_ms } => check(&op.session, *t).map(|()| {
                let mut r = record.to_record();
                r.token = token;
                r.lease_ms = *ttl_ms;
                Some((r, Duration::from_millis(*ttl_ms)))
            }),
            HolderOpKind::Reenter { owner, ttl_ms } => {
                // Older than the hold's grant: an acquire of an earlier hold
                // of the session, answered then (a replay): not a reentry.
                if op.session != record.session
                    || *owner != record.owner
                    || op.seq < ks.applied().grant
                {
                    // The hold changed hands since: wait like anybody else.
                    return OpOutcome::Requeue(Waiter {
                        seq: op.seq,
                        session: self.strings.get(&op.session),
                        id: Shared::from(op.id.as_str()),
                        owner: self.strings.get(owner),
                        ttl_ms: *ttl_ms,
                        deadline: now,
                        try_lock: true,
                        preempt: false,
                        arrived: op.arrived,
                    });
                }
                let mut r = record.to_record();
                r.holds = r.holds.saturating_add(1);
                r.token = token;
                r.lease_ms = r.lease_ms.max(*ttl_ms);
                Ok(Some((r.clone(), Duration::from_millis(r.lease_ms))))
            }
            HolderOpKind::Settled => {
                self.settled(&ks.name(), &op);
                return OpOutcome::Done;
            }
            HolderOpKind::Revoke { grace_ms, reason } => {
                let (grace_ms, reason) = (*grace_ms, reason.clone());
                let grace = Duration::from_millis(grace_ms);
                let revocation = Revocation {
                    token,
                    deadline: now + grace,
                    by: op.session.clone(),
                    reason: reason.clone(),
                };
                self.start_revocation(ks, record, revocation, grace);
                self.answer(
                    &op.session,
                    Answer::Revoking {
                        v: VERSION,
                        re: op.id.clone(),
                        key: ks.name().to_string(),
                        token,
                        grace_ms,
                    },
                );
                self.done(&op.session, &op.id, op.seq, true);
                if grace_ms == 0 {
                    return OpOutcome::End(Ending::Revoked {
                        session: record.session.clone(),
                        token,
                        by: op.session.clone(),
                        reason,
                    });
                }
                self.timers.push(Reverse((
                    now + Duration::from_millis(grace_ms),
                    self.strings.get(ks.key()),
                )));
                return OpOutcome::Done;
            }
        };
        match verdict {
            Err(_) if !op.verified => OpOutcome::Verify(op),
            Err(e) => {
                self.renew_failed(&ks.name(), &op, token, &e);
                self.fail(&op.session, &op.id, &ks.name(), e);
                self.done(&op.session, &op.id, op.seq, true);
                OpOutcome::Done
            }
            Ok(Some((record, ttl))) => OpOutcome::Write(op, record, ttl),
            Ok(None) => OpOutcome::End(Ending::Released(op)),
        }
    }

    /// The next waiter to grant: the first in line whose session was heard.
    /// A session this coordinator learned only from requests it replayed
    /// while catching up may have ended while no coordinator ran (its
    /// `leaving` beat unheard): granting its waits would hold the lock for
    /// a lease each, for nobody. A live one beats within a quarter of its
    /// timeout and keeps its place in line meanwhile.
    pub(super) fn grantee(&self, ks: &mut KeyState) -> Option<Waiter> {
        let i = ks
            .busy
            .queue
            .iter()
            .position(|w| !self.unheard.contains_key(&*w.session))?;
        ks.busy.queue.remove(i)
    }
}

/// Whether `op` is a release of a hold that has ended: one seen ending, or
/// the very release that ended it (replayed after it was applied).
pub(super) fn settles(op: &HolderOp, applied: Applied) -> bool {
    match op.kind {
        HolderOpKind::Settled => true,
        HolderOpKind::Release { .. } => op.seq != 0 && op.seq == applied.ended,
        _ => false,
    }
}
