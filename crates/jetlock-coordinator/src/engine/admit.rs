//! Admission: a request read from the stream is parsed, checked
//! (session, duplicates, policies, quotas) and filed on its key.

use super::*;

impl Engine {
    /// Why an acquire breaks the limits of its lock's policy, if it does.
    pub(super) fn policy_refusal(&self, session: &str, request: &Request) -> Option<WireError> {
        let Request::Acquire {
            name,
            owner,
            ttl_ms,
            preempt,
            ..
        } = request
        else {
            return None;
        };
        let policy = self.cfg.policy(name);
        if *preempt && policy.and_then(|p| p.preempt) == Some(false) {
            return Some(WireError::new(
                ErrorCode::NotPermitted,
                format!("the policy for {name} forbids preemption"),
            ));
        }
        if let Some(max) = policy.and_then(|p| p.max_ttl_ms) {
            if *ttl_ms > max {
                return Some(WireError::new(
                    ErrorCode::InvalidTtl,
                    format!("ttl_ms {ttl_ms} is above the policy's max_ttl_ms {max} for {name}"),
                ));
            }
        }
        let max_waiters = policy
            .and_then(|p| p.max_waiters)
            .unwrap_or(self.cfg.max_waiters);
        let ks = self.keys.get(name.key())?;
        let reentry = matches!(&ks.current, Holding::Held { record, .. }
            if record.session == session && record.owner == *owner);
        (max_waiters > 0 && !reentry && ks.busy.queue.len() >= max_waiters as usize).then(|| {
            WireError::new(
                ErrorCode::QueueFull,
                format!(
                    "{name} has {} waiters, the most allowed",
                    ks.busy.queue.len()
                ),
            )
        })
    }

    /// A request read from the stream with its `Nats-Msg-Id`: one whose
    /// message id is not bound to its subject's session is refused
    /// (`bad_message_id`) and changes nothing; the rest go to [`request`].
    ///
    /// [`request`]: Engine::request
    pub fn request_with_msg_id(
        &mut self,
        seq: u64,
        subject: &str,
        msg_id: Option<&str>,
        body: &[u8],
        age: Duration,
        now: Instant,
    ) {
        if let Ok((_, session)) = protocol::parse_request_subject(subject) {
            if let Err(e) = protocol::check_message_id(session, msg_id) {
                self.stats.requests += 1;
                let answer = Answer::error(protocol::probe_id(body), None, e);
                if self.answers_for(subject, session) {
                    self.answer(session, answer);
                    self.out.push(Action::Delete { seq });
                } else {
                    self.hold_refusal(subject, None, session, answer, seq);
                }
                return;
            }
        }
        self.request(seq, subject, body, age, now);
    }

    /// A request read from the stream: message `seq` on `subject`, stored
    /// `age` ago.
    pub fn request(&mut self, seq: u64, subject: &str, body: &[u8], age: Duration, now: Instant) {
        self.stats.requests += 1;
        let (op, session) = match protocol::parse_request_subject(subject) {
            Ok((op, session)) => (op, session.to_owned()),
            Err(_) => {
                // Nobody to answer: drop it and count it, once among the
                // coordinators.
                if self.answers_for(subject, subject) {
                    self.stats.dropped += 1;
                    self.out.push(Action::Delete { seq });
                }
                return;
            }
        };
        let parsed =
            protocol::parse_request(op, &session, body, &self.cfg.limits).and_then(|r| match self
                .misplaced(subject, r.name().key())
            {
                Some(e) => Err(e),
                None => Ok(r),
            });
        let request = match parsed {
            Ok(r) => r,
            Err(e) => {
                let answer = Answer::error(protocol::probe_id(body), None, e);
                if self.answers_for(subject, &session) {
                    self.answer(&session, answer);
                    self.out.push(Action::Delete { seq });
                } else {
                    self.hold_refusal(subject, None, &session, answer, seq);
                }
                return;
            }
        };
        let acting = self.owns(request.name().key());
        self.admit(seq, session, request, acting, age, now);
    }

    /// An unstored release (`jetlock.now.release.<session>`, core NATS).
    /// Only the lock's owner takes it, once it has caught up, and only as a
    /// release of the hold it sees: the others keep no mirror of it
    /// (nothing would replay it), and a client that gets no answer releases
    /// another way. It runs like a stored release with no stream sequence
    /// (0): no message to delete, and no `Jetlock-Applied` field names it,
    /// so a write of it whose ack is lost is recognised by the hold's token
    /// having ended (`observe.rs`).
    pub fn unstored_release(&mut self, subject: &str, body: &[u8], now: Instant) {
        self.stats.requests += 1;
        let session = match protocol::parse_unstored_release_subject(subject) {
            Ok(session) => session.to_owned(),
            Err(_) => {
                if self.answers_for(subject, subject) {
                    self.stats.dropped += 1;
                }
                return;
            }
        };
        let limits = &self.cfg.limits;
        let request = match protocol::parse_request(protocol::Op::Release, &session, body, limits) {
            Ok(r) => r,
            Err(e) => {
                if self.answers_for(subject, &session) {
                    let re = protocol::probe_id(body);
                    self.answer(&session, Answer::error(re, None, e));
                }
                return;
            }
        };
        // One sent to another partition than its lock's is dropped like
        // any other this coordinator does not carry out.
        if !self.owns(request.name().key())
            || self.misplaced(subject, request.name().key()).is_some()
        {
            return;
        }
        // Only a release of the hold as this coordinator sees it: anything
        // else (another session's lock, a stale token, a hold not seen yet)
        // is dropped at the cost of this lookup, however many a user sends:
        // nothing is queued and nothing read. Its client then releases
        // another way, which answers it.
        let Request::Release { token, .. } = &request else {
            return;
        };
        let held = self.keys.get(request.name().key()).is_some_and(|ks| {
            matches!(&ks.current, Holding::Held { revision, record }
                if record.session == session && record.token_at(*revision) == *token)
        });
        if !held {
            return;
        }
        tracing::debug!(lock = request.name().as_str(), %session, "unstored release");
        self.admit(0, session, request, true, Duration::ZERO, now);
    }

    /// Files a checked request (`seq` 0: unstored) on its key.
    fn admit(
        &mut self,
        seq: u64,
        session: String,
        request: Request,
        acting: bool,
        age: Duration,
        now: Instant,
    ) {
        let key = request.name().key().to_owned();
        tracing::Span::current().record("lock", request.name().as_str());
        match self.sessions.request(&session, now) {
            Touch::Dead => {
                let e = WireError::new(
                    ErrorCode::SessionExpired,
                    format!("session {session} was declared dead; start a new session"),
                );
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
            Touch::Refused => {
                let e = self.session_refusal(&session);
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
            Touch::Joined => {
                if !self.ready {
                    self.unheard.insert(session.clone(), ());
                }
                self.session_joined(&session);
            }
            Touch::Alive => {}
        }
        let rid = (session.clone(), request.id().to_owned());
        // The waiter and its entry here share the session and the id.
        let tracked = (self.strings.get(&session), Shared::from(request.id()));
        if self.requests.contains_key(&tracked) {
            // A second copy of an unstored release (the client never sends
            // one again under its id): the first one is answered.
            if seq == 0 {
                return;
            }
            let e = WireError::new(
                ErrorCode::Duplicate,
                format!(
                    "request id {:?} was already used by this session",
                    request.id()
                ),
            );
            self.refuse(acting, &session, &request, seq, e);
            return;
        }
        if self.answered_early.remove(&rid).is_some() {
            // Another coordinator answered it before the stream brought it
            // here: nothing left to do or to mirror.
            self.requests.insert(
                tracked,
                Tracked {
                    key: self.strings.get(&key),
                    at: now,
                    done: true,
                },
            );
            return;
        }
        if let Some(e) = self.policy_refusal(&session, &request) {
            self.refuse(acting, &session, &request, seq, e);
            return;
        }
        if acting {
            if let Some(e) = self.quota_refusal(&session, &request, now) {
                self.refuse(acting, &session, &request, seq, e);
                return;
            }
        }
        let shared_key = self.strings.get(&key);
        self.requests.insert(
            tracked.clone(),
            Tracked {
                key: shared_key.clone(),
                at: now,
                done: false,
            },
        );
        let ks = self.keys.get_or_insert(request.name());
        match request {
            Request::Acquire {
                id,
                owner,
                ttl_ms,
                wait_ms,
                preempt,
                ..
            } => {
                let holder_matches = matches!(&ks.current, Holding::Held { record, .. }
                    if record.session == session && record.owner == owner);
                if holder_matches {
                    ks.busy.ops.push_back(HolderOp {
                        seq,
                        session,
                        id,
                        kind: HolderOpKind::Reenter { owner, ttl_ms },
                        arrived: now,
                        verified: false,
                    });
                } else {
                    let left = Duration::from_millis(wait_ms).saturating_sub(age);
                    let deadline = now + left;
                    ks.busy.queue.push_back(Waiter {
                        seq,
                        session: tracked.0,
                        id: tracked.1,
                        owner: self.strings.get(&owner),
                        ttl_ms,
                        deadline,
                        try_lock: wait_ms == 0,
                        preempt,
                        arrived: now,
                    });
                    self.timers.push(Reverse((deadline, shared_key)));
                    if acting
                        && wait_ms > 0
                        && (ks.busy.queue.len() > 1
                            || ks.busy.inflight.is_some()
                            || matches!(ks.current, Holding::Held { .. }))
                    {
                        let w = ks.busy.queue.back().expect("just pushed");
                        let answer = Answer::Queued {
                            v: VERSION,
                            re: w.id.to_string(),
                            key: ks.name().to_string(),
                            position: ks.busy.queue.len() as u32,
                        };
                        let to = w.session.to_string();
                        self.answer(&to, answer);
                    }
                }
            }
            Request::Release { id, token, .. } => ks.busy.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Release { token },
                arrived: now,
                verified: false,
            }),
            Request::Renew {
                id, token, ttl_ms, ..
            } => ks.busy.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Renew { token, ttl_ms },
                arrived: now,
                verified: false,
            }),
            Request::Revoke {
                id,
                grace_ms,
                reason,
                ..
            } => ks.busy.ops.push_back(HolderOp {
                seq,
                session,
                id,
                kind: HolderOpKind::Revoke { grace_ms, reason },
                arrived: now,
                verified: false,
            }),
            Request::Cancel { id, target, name } => {
                let found = ks
                    .busy
                    .queue
                    .iter()
                    .position(|w| w.session == session && w.id == target);
                match found {
                    Some(i) => {
                        let w = ks.busy.queue.remove(i).expect("position is in range");
                        if acting {
                            self.fail(
                                &w.session,
                                &w.id,
                                &name,
                                WireError::new(ErrorCode::Cancelled, "cancelled by request"),
                            );
                            self.answer(
                                &session,
                                Answer::Cancelled {
                                    v: VERSION,
                                    re: id.clone(),
                                    key: name.to_string(),
                                },
                            );
                        }
                        self.done(&w.session, &w.id, w.seq, acting);
                        self.done(&session, &id, seq, acting);
                    }
                    None => {
                        if acting {
                            self.fail(
                                &session,
                                &id,
                                &name,
                                WireError::new(
                                    ErrorCode::NotWaiting,
                                    format!("request {target:?} is not waiting for {name}"),
                                ),
                            );
                        }
                        self.done(&session, &id, seq, acting);
                    }
                }
            }
        }
        self.step(&key, now);
    }

    /// Some coordinator sent the final answer to request `re` of `session`
    /// (every coordinator reads `jetlock.to.>`). A mirror forgets the
    /// request, so a coordinator that takes the key over later does not run
    /// it a second time.
    pub fn answered(&mut self, session: &str, re: &str, now: Instant) {
        let rid = (Shared::from(session), Shared::from(re));
        let Some(t) = self.requests.get_mut(&rid) else {
            if self.answered_early.len() < MAX_ANSWERED_EARLY {
                self.answered_early
                    .insert((session.to_owned(), re.to_owned()), now);
            }
            return;
        };
        if t.done {
            return;
        }
        t.done = true;
        let key = t.key.clone();
        // `get_mut`: a key with nothing going on gets no activity made for
        // it here (most finished requests' keys, in a mirror).
        if let Some(busy) = self.keys.get_mut(&key).and_then(|ks| ks.busy.get_mut()) {
            busy.ops
                .retain(|op| !(op.session == session && op.id == re));
            busy.queue.retain(|w| !(w.session == session && w.id == re));
        }
    }

    /// The refusal of a request of a new session whose prefix is full.
    pub(super) fn session_refusal(&mut self, session: &str) -> WireError {
        self.stats.sessions_refused += 1;
        let prefix = membership::session_prefix(session);
        WireError::new(
            ErrorCode::TooManySessions,
            format!(
                "sessions under prefix {prefix:?} are at the {} that max_sessions_per_prefix allows; \
                 end one first",
                self.cfg.max_sessions_per_prefix
            ),
        )
    }
}
