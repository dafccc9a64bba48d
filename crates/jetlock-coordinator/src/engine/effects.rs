//! What goes out: answers, events, and the end of a request's life.

use super::*;

impl Engine {
    pub(super) fn answer(&mut self, session: &str, answer: Answer) {
        if matches!(answer, Answer::Error { .. }) {
            self.stats.errors += 1;
        }
        self.out.push(Action::Answer {
            session: session.to_owned(),
            answer,
        });
    }

    pub(super) fn event(&mut self, event: Event) {
        self.out.push(Action::Event(Box::new(event)));
    }

    /// Reports a refused renewal (`token`: the current holder's, 0 if none).
    pub(super) fn renew_failed(
        &mut self,
        name: &LockName,
        op: &HolderOp,
        token: u64,
        e: &WireError,
    ) {
        if let HolderOpKind::Renew { token: claimed, .. } = op.kind {
            self.event(Event {
                session: Some(op.session.clone()),
                token: Some(claimed),
                cause: Some(e.code.as_str().to_owned()),
                reason: (token != 0).then(|| format!("current token {token}")),
                ..Event::lock(EventKind::RenewFailed, name.as_str(), name.key())
            });
        }
    }

    pub(super) fn fail(&mut self, session: &str, re: &str, key: &LockName, e: WireError) {
        self.answer(
            session,
            Answer::error(Some(re.to_owned()), Some(key.to_string()), e),
        );
    }

    /// Refuses a request that changes nothing (answered by the key's owner).
    pub(super) fn refuse(
        &mut self,
        acting: bool,
        session: &str,
        request: &Request,
        seq: u64,
        e: WireError,
    ) {
        if acting {
            self.fail(session, request.id(), request.name(), e);
            if seq != 0 {
                self.out.push(Action::Delete { seq });
            }
        } else if seq != 0 {
            let name = request.name();
            let answer = Answer::error(Some(request.id().to_owned()), Some(name.to_string()), e);
            self.hold_refusal("", Some(name.key()), session, answer, seq);
        }
    }

    /// A request finished: forget its stream message (none for an unstored
    /// release, `seq` 0).
    pub(super) fn done(&mut self, session: &str, id: &str, seq: u64, acting: bool) {
        if let Some(t) = self
            .requests
            .get_mut(&(Shared::from(session), Shared::from(id)))
        {
            t.done = true;
        }
        if acting && seq != 0 {
            self.out.push(Action::Delete { seq });
        }
    }

    /// Answers a release whose hold ended before it ran.
    pub(super) fn settled(&mut self, name: &LockName, op: &HolderOp) {
        self.answer(
            &op.session,
            Answer::Released {
                v: VERSION,
                re: op.id.clone(),
                key: name.to_string(),
                holds: 0,
            },
        );
        self.done(&op.session, &op.id, op.seq, true);
    }

    /// A hold ended by our write: answer and report it.
    pub(super) fn ended(&mut self, key: &str, ending: Ending, acting: bool) {
        match ending {
            Ending::Released(op) => {
                self.answer(
                    &op.session,
                    Answer::Released {
                        v: VERSION,
                        re: op.id.clone(),
                        key: key.to_owned(),
                        holds: 0,
                    },
                );
                self.done(&op.session, &op.id, op.seq, acting);
            }
            Ending::SessionExpired => {}
            Ending::Revoked { session, token, .. } => {
                self.answer(
                    &session,
                    Answer::Lost {
                        v: VERSION,
                        key: key.to_owned(),
                        token,
                        cause: LostCause::Revoked,
                    },
                );
            }
        }
    }
}
