//! The simulated client's worker: requests through the request stream
//! (bodies from `jetlock::protocol`), and what it does with their answers.
//! It takes a key, holds it a while (renewing every third of the lease,
//! sometimes re-entering), and releases it; once faults stop it takes every
//! key once and must be granted each.

use crate::client::{ClientMsg, Hold, Pending, Timer, ANSWER_GRACE, FINAL_WAIT_MS, RETRY};
use crate::coord::{CoordMsg, DEDUP_WINDOW};
use crate::world::{trace, Ev, Proc, World, MS};
use jetlock::name::LockName;
use jetlock::protocol::{
    self, AcquireBody, Answer, CancelBody, ErrorCode, Op, ReleaseBody, RenewBody, VERSION,
};
use jetlock::store::Current;

/// How long an unstored release waits for its answer
/// (`client/via_coordinator.rs`).
const UNSTORED_GRACE: u64 = 500 * MS;

impl World {
    // ---- requests -------------------------------------------------------

    /// Client `k`'s next request id.
    fn next_id(&mut self, k: usize) -> String {
        let c = &mut self.clients[k];
        c.next_id += 1;
        format!("r{}", c.next_id)
    }

    fn request(&mut self, k: usize, op: Op, body: impl FnOnce(String) -> Vec<u8>) -> String {
        let id = self.next_id(k);
        let partitions = self.cfg.partitions;
        let c = &mut self.clients[k];
        let body = body(id.clone());
        // As the client does: to the partition of the lock the body names.
        let subject = if partitions > 1 {
            let name = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| LockName::new(v.get("key")?.as_str()?).ok());
            let name = name.expect("the worker's requests name a lock");
            let p = jetlock::shards::partition_of(name.key(), partitions);
            protocol::partitioned_request_subject(p, op, &c.session)
        } else {
            protocol::request_subject(op, &c.session)
        };
        c.unacked.insert(id.clone(), (subject, body));
        self.publish(k, id.clone());
        id
    }

    /// One try to store a request; tried again until the stream acks it
    /// (same message id, so it is stored once).
    pub fn publish(&mut self, k: usize, id: String) {
        let c = &self.clients[k];
        let (subject, body) = c.unacked.get(&id).cloned().expect("an unacked request");
        let msg_id = protocol::message_id(&c.session, &id);
        let gen = c.gen;
        if self.js_reachable(Proc::Client(k)) {
            let at = self.now + self.delay();
            let (client, id) = (k, id.clone());
            self.schedule(
                at,
                Ev::Store {
                    client,
                    gen,
                    id,
                    subject,
                    body,
                    msg_id,
                },
            );
        }
        self.after_ms(k, RETRY / MS, Timer::Retry(id));
    }

    pub fn store(
        &mut self,
        k: usize,
        gen: u32,
        id: String,
        subject: &str,
        body: &[u8],
        msg_id: &str,
    ) {
        if let Some(seq) = self
            .stream
            .publish(subject, body, msg_id, self.now, DEDUP_WINDOW)
        {
            self.stored(seq);
        }
        if self.chance(self.cfg.faults.publish_ack_loss) {
            self.counts.publish_acks_lost += 1;
            return;
        }
        let at = self.now + self.delay();
        self.schedule(at, Ev::ToClient(k, gen, ClientMsg::Stored { id }));
    }

    fn acquire(&mut self, k: usize, key: usize, wait_ms: u64, reenter: bool) {
        let ttl_ms = [1_000, 2_000, 5_000][self.rng.usize(0..3)];
        let name = self.key_names[key].as_str().to_owned();
        let owner = self.clients[k].session.clone();
        let id = self.request(k, Op::Acquire, |id| {
            serde_json::to_vec(&AcquireBody {
                v: VERSION,
                id,
                key: name,
                owner: Some(owner),
                ttl_ms: Some(ttl_ms),
                wait_ms,
                preempt: Some(false),
            })
            .expect("requests serialize")
        });
        let sent = self.local(k);
        let c = &mut self.clients[k];
        c.op = Some(id.clone());
        let must = !self.faulty && !reenter;
        c.pending.insert(
            id.clone(),
            Pending::Acquire {
                key,
                reenter,
                sent,
                must,
            },
        );
        self.after_ms(k, wait_ms + ANSWER_GRACE / MS, Timer::AnswerTimeout(id));
    }

    /// Releases a hold; `worker`: the worker waits for the answer. Some
    /// last releases go unstored (`Faults::unstored`).
    fn release(&mut self, k: usize, key: usize, token: u64, last: bool, worker: bool) {
        let unstored = self.cfg.faults.unstored;
        if last && unstored > 0.0 && self.chance(unstored) {
            self.release_unstored(k, key, token, worker);
        } else {
            self.release_stored(k, key, token, last, worker);
        }
    }

    fn release_stored(&mut self, k: usize, key: usize, token: u64, last: bool, worker: bool) {
        let name = self.key_names[key].as_str().to_owned();
        let id = self.request(k, Op::Release, |id| {
            serde_json::to_vec(&ReleaseBody {
                v: VERSION,
                id,
                key: name,
                token,
            })
            .expect("requests serialize")
        });
        if worker {
            self.clients[k].op = Some(id.clone());
        }
        self.clients[k].pending.insert(
            id.clone(),
            Pending::Release {
                last,
                key,
                token,
                unstored: false,
            },
        );
        self.after_ms(k, ANSWER_GRACE / MS, Timer::AnswerTimeout(id));
    }

    /// A last release on core NATS to every coordinator, as the Rust
    /// client's fast path sends one (`client/via_coordinator.rs`); without
    /// an answer in 500 ms it is sent again stored, under a new id.
    fn release_unstored(&mut self, k: usize, key: usize, token: u64, worker: bool) {
        let id = self.next_id(k);
        let session = &self.clients[k].session;
        let subject = match self.cfg.partitions {
            p if p > 1 => {
                let part = jetlock::shards::partition_of(self.key_names[key].key(), p);
                protocol::partitioned_unstored_release_subject(part, session)
            }
            _ => protocol::unstored_release_subject(session),
        };
        let body = serde_json::to_vec(&ReleaseBody {
            v: VERSION,
            id: id.clone(),
            key: self.key_names[key].as_str().to_owned(),
            token,
        })
        .expect("requests serialize");
        trace!(self, "{} sends {id} unstored", self.clients[k].session);
        self.counts.unstored += 1;
        self.send_to_coordinators(k, || CoordMsg::UnstoredRelease {
            subject: subject.clone(),
            body: body.clone(),
        });
        if worker {
            self.clients[k].op = Some(id.clone());
        }
        self.clients[k].pending.insert(
            id.clone(),
            Pending::Release {
                last: true,
                key,
                token,
                unstored: true,
            },
        );
        self.after_ms(k, UNSTORED_GRACE / MS, Timer::AnswerTimeout(id));
    }

    pub fn renew(&mut self, k: usize, token: u64) {
        let Some(h) = self.clients[k].hold.as_mut() else {
            return;
        };
        if h.token != token || h.renewing {
            return;
        }
        h.renewing = true;
        let (key, ttl_ms) = (h.key, h.ttl_ms);
        let name = self.key_names[key].as_str().to_owned();
        let sent = self.local(k);
        let id = self.request(k, Op::Renew, |id| {
            serde_json::to_vec(&RenewBody {
                v: VERSION,
                id,
                key: name,
                token,
                ttl_ms: Some(ttl_ms),
            })
            .expect("requests serialize")
        });
        self.clients[k]
            .pending
            .insert(id.clone(), Pending::Renew { sent });
        self.after_ms(k, ANSWER_GRACE / MS, Timer::AnswerTimeout(id));
    }

    fn cancel(&mut self, k: usize, key: usize, target: String) {
        let name = self.key_names[key].as_str().to_owned();
        let id = self.request(k, Op::Cancel, |id| {
            serde_json::to_vec(&CancelBody {
                v: VERSION,
                id,
                key: name,
                target,
            })
            .expect("requests serialize")
        });
        self.clients[k].pending.insert(id, Pending::Cancel);
    }

    // ---- the worker -----------------------------------------------------

    pub fn begin_final(&mut self, k: usize) {
        self.clients[k].final_keys = Some((0..self.key_names.len()).collect());
    }

    pub fn work(&mut self, k: usize) {
        let c = &self.clients[k];
        if c.op.is_some() || self.session_over(k) {
            return;
        }
        let finals = c.final_keys.as_ref().map(|f| f.front().copied());
        match (&c.hold, finals) {
            (None, Some(None)) => {}
            (None, Some(Some(key))) => self.acquire(k, key, FINAL_WAIT_MS, false),
            (None, None) => {
                let key = self.rng.usize(0..self.key_names.len());
                let wait = [0, 300, 2_000][self.rng.usize(0..3)];
                self.acquire(k, key, wait, false);
            }
            (Some(h), finals) => {
                let (key, token, holds) = (h.key, h.token, h.holds);
                if finals.is_none() && holds < 3 && self.rng.f64() < 0.25 {
                    self.acquire(k, key, 0, true);
                } else if holds > 1 {
                    // Counted at once: the request is stored (sent again
                    // until the stream acks it) and runs, answered or not.
                    if let Some(h) = self.clients[k].hold.as_mut() {
                        h.holds -= 1;
                    }
                    self.release(k, key, token, false, true);
                } else {
                    // The release starts: no longer believed from here.
                    let who = (k, self.clients[k].gen);
                    trace!(
                        self,
                        "{} releases {key} token {token}",
                        self.clients[k].session
                    );
                    self.clients[k].hold = None;
                    let name = self.key_names[key].key().to_owned();
                    self.checker.unbelieve(who, &name);
                    self.release(k, key, token, true, true);
                }
            }
        }
    }

    pub fn answer_timeout(&mut self, k: usize, id: String) {
        let Some(p) = self.clients[k].pending.remove(&id) else {
            return;
        };
        let worker = self.clients[k].op.as_ref() == Some(&id);
        if worker {
            self.clients[k].op = None;
        }
        match p {
            Pending::Acquire { key, must, .. } => {
                self.clients[k].abandoned.insert(id.clone());
                self.cancel(k, key, id);
                if must && self.clients[k].failure.is_none() {
                    self.clients[k].failure = Some(format!("acquire of key {key} never answered"));
                }
            }
            Pending::Renew { .. } => {
                let Some(h) = self.clients[k].hold.as_mut() else {
                    return;
                };
                h.renewing = false;
                if h.confirming {
                    let (key, token) = (h.key, h.token);
                    self.lose(k, "renewal after a long wait unanswered");
                    self.release(k, key, token, true, false);
                    return;
                }
                let local = self.local(k);
                self.timer(
                    k,
                    local,
                    Timer::Renew(self.clients[k].hold.as_ref().expect("held").token),
                );
                return;
            }
            Pending::Release {
                key,
                token,
                unstored: true,
                ..
            } => {
                // Nobody answered: stored this time (a `not_holder` answer
                // then means the unstored one was carried out).
                self.counts.unstored_unanswered += 1;
                self.release_stored(k, key, token, true, worker);
                return;
            }
            Pending::Release { .. } | Pending::Cancel => {}
        }
        self.after_ms(k, 10, Timer::Work);
    }

    pub fn client_answer(&mut self, k: usize, answer: Answer) {
        trace!(self, "{} gets {answer:?}", self.clients[k].session);
        let held = |w: &World, key: &str, token: u64| {
            w.clients[k]
                .hold
                .as_ref()
                .is_some_and(|h| h.token == token && w.key_names[h.key].as_str() == key)
        };
        match &answer {
            Answer::RevokeNotice { key, token, .. } | Answer::Lost { key, token, .. } => {
                if held(self, key, *token) {
                    self.lose(k, "revoked or lost notice");
                }
                return;
            }
            Answer::Contended { .. } | Answer::Queued { .. } => return,
            _ => {}
        }
        let Some(re) = answer.re().map(str::to_owned) else {
            return;
        };
        let Some(p) = self.clients[k].pending.remove(&re) else {
            if self.clients[k].abandoned.remove(&re) {
                if let Answer::Granted { key, token, .. } = &answer {
                    let key = self.key_names.iter().position(|n| n.as_str() == key);
                    let key = key.expect("one of ours");
                    // As `SessionLink::dispatch`: a late grant of a hold
                    // this client has is kept, not released.
                    let ours = self.clients[k]
                        .hold
                        .as_ref()
                        .is_some_and(|h| h.key == key && h.token == *token);
                    if !ours {
                        self.release(k, key, *token, true, false);
                    }
                }
            }
            return;
        };
        if self.clients[k].op.as_ref() == Some(&re) {
            self.clients[k].op = None;
        }
        if matches!(
            &answer,
            Answer::Error {
                code: ErrorCode::SessionExpired,
                ..
            }
        ) {
            if !self.clients[k].belief.is_ended() {
                self.end_session(k);
            }
            return;
        }
        match p {
            Pending::Acquire {
                key,
                reenter,
                sent,
                must,
            } => self.acquired(k, key, reenter, sent, must, answer),
            Pending::Renew { sent } => match answer {
                Answer::Renewed { token, .. } => {
                    let Some(h) = self.clients[k].hold.as_mut() else {
                        return;
                    };
                    if h.token != token {
                        return;
                    }
                    h.renewing = false;
                    let confirmed = std::mem::take(&mut h.confirming);
                    h.lease_from = sent;
                    let (ttl, key) = (h.ttl_ms * MS, h.key);
                    if confirmed {
                        self.believe(k, key, token);
                    }
                    self.timer(k, sent + ttl / 3, Timer::Renew(token));
                    self.timer(k, sent + ttl, Timer::Lease(token, sent));
                }
                Answer::Error {
                    code: ErrorCode::NotHolder | ErrorCode::StaleToken,
                    ..
                } => self.lose(k, "renewal refused"),
                _ => {
                    if let Some(h) = self.clients[k].hold.as_mut() {
                        h.renewing = false;
                    }
                }
            },
            Pending::Release {
                last, key, token, ..
            } => {
                // Released with no hold left: the key has moved past the
                // token (a release answered but not carried out would
                // leave the lock held until its lease ends).
                if let Answer::Released { holds: 0, .. } = answer {
                    let name = self.key_names[key].key().to_owned();
                    if let Current::Held { revision, record } = self.bucket.current(&name) {
                        if record.token_at(revision) == token {
                            let v = format!(
                                "t={}us: {} was answered released of {name} token {token}, which still holds it",
                                self.now, self.clients[k].session
                            );
                            self.checker.violations.push(v);
                        }
                    }
                }
                if !last && !matches!(answer, Answer::Released { .. }) {
                    self.lose(k, "partial release refused");
                }
                self.after_ms(k, 10, Timer::Work);
            }
            Pending::Cancel => {}
        }
    }

    fn believe(&mut self, k: usize, key: usize, token: u64) {
        let who = (k, self.clients[k].gen);
        let name = self.key_names[key].key().to_owned();
        trace!(
            self,
            "{} believes {name} token {token}",
            self.clients[k].session
        );
        self.checker.believe(self.now, who, &name, token);
    }

    fn acquired(
        &mut self,
        k: usize,
        key: usize,
        reenter: bool,
        sent: u64,
        must: bool,
        answer: Answer,
    ) {
        let hold_ms = if self.faulty {
            self.rng.u64(5..1500)
        } else {
            20
        };
        match answer {
            Answer::Granted { token, ttl_ms, .. } if reenter => {
                let _ = ttl_ms;
                if let Some(h) = self.clients[k].hold.as_mut().filter(|h| h.token == token) {
                    h.holds += 1;
                }
                self.after_ms(k, hold_ms, Timer::Work);
            }
            Answer::Granted { token, ttl_ms, .. } => {
                if self.session_over(k) || self.clients[k].hold.is_some() {
                    self.release(k, key, token, true, false);
                    return;
                }
                self.counts.grants += 1;
                let local = self.local(k);
                let ttl = ttl_ms * MS;
                // After a long wait the lease is restarted by a renewal
                // before the guard is handed over (`queue::granted`).
                let confirming = local - sent > ttl / 3;
                if !confirming {
                    self.believe(k, key, token);
                }
                self.clients[k].hold = Some(Hold {
                    key,
                    token,
                    holds: 1,
                    lease_from: sent,
                    ttl_ms,
                    renewing: false,
                    confirming,
                });
                if confirming {
                    self.renew(k, token);
                } else {
                    self.timer(k, sent + ttl / 3, Timer::Renew(token));
                    self.timer(k, sent + ttl, Timer::Lease(token, sent));
                }
                if let Some(f) = self.clients[k].final_keys.as_mut() {
                    if !self.faulty {
                        f.retain(|&x| x != key);
                    }
                }
                self.after_ms(k, hold_ms, Timer::Work);
            }
            other => {
                if must && self.clients[k].failure.is_none() {
                    if let Answer::Error {
                        code: ErrorCode::Timeout,
                        ..
                    } = other
                    {
                        self.clients[k].failure =
                            Some(format!("waited {FINAL_WAIT_MS} ms for key {key} in vain"));
                    }
                }
                let ms = self.rng.u64(0..300);
                self.after_ms(k, ms, Timer::Work);
            }
        }
    }
}
