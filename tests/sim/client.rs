//! A simulated client on the JSON protocol: one worker per process that
//! acquires (through the request stream, bodies from `jetlock::protocol`),
//! holds, renews, re-enters and releases, and heartbeats with the real
//! `Heartbeat` bodies. Whether its session still stands comes from
//! [`SessionBelief`]; a hold is believed from its grant answer until it is
//! lost (session over, `lost`/`revoke_notice` notice, renewal refused,
//! lease over on its own clock) or its last release starts.

use crate::belief::SessionBelief;
use crate::coord::{server_id, CoordMsg, DEDUP_WINDOW};
use crate::world::{trace, Clock, Ev, Proc, World, MS, SEC, SERVERS};
use jetlock::protocol::{
    self, AcquireBody, Answer, CancelBody, ConnId, ErrorCode, HeartbeatAck, Op, ReleaseBody,
    RenewBody, VERSION,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tokio::time::Instant;

/// How long an answer may take beyond the wait (`session::ANSWER_GRACE`).
const ANSWER_GRACE: u64 = 5 * SEC;
const RETRY: u64 = 250 * MS;
/// The wait of an acquire once faults stopped: it must be granted.
const FINAL_WAIT_MS: u64 = 20_000;

pub enum Timer {
    Reconnect,
    Beat,
    HbExpire(u64),
    Jeopardy,
    Work,
    Renew(u64),
    Lease(u64, u64),
    AnswerTimeout(String),
    Retry(String),
}

pub enum ClientMsg {
    Ack { hb: u64, ack: HeartbeatAck },
    Answer(Answer),
    Stored { id: String },
}

enum Pending {
    Acquire {
        key: usize,
        reenter: bool,
        sent: u64,
        /// Sent once faults stopped: it must be granted.
        must: bool,
    },
    Renew {
        sent: u64,
    },
    Release {
        last: bool,
    },
    Cancel,
}

struct Hold {
    key: usize,
    token: u64,
    holds: u32,
    /// Local time the lease counts from (the send of the last write).
    lease_from: u64,
    ttl_ms: u64,
    renewing: bool,
    /// Granted after a long wait: renewed once before the lease is timed.
    confirming: bool,
}

pub struct Client {
    pub gen: u32,
    pub session: String,
    pub conn: ConnId,
    pub server: usize,
    pub clock: Clock,
    timeout_ms: u64,
    belief: SessionBelief,
    next_hb: u64,
    hb_pending: BTreeMap<u64, Instant>,
    next_id: u64,
    /// The worker's request in flight (acquire or release).
    op: Option<String>,
    hold: Option<Hold>,
    pending: BTreeMap<String, Pending>,
    abandoned: BTreeSet<String>,
    unacked: BTreeMap<String, (String, Vec<u8>)>,
    final_keys: Option<VecDeque<usize>>,
    failure: Option<String>,
}

pub fn session_name(k: usize, gen: u32) -> String {
    format!("s{k}g{gen}")
}

pub fn parse_session(s: &str) -> Option<(usize, u32)> {
    let (k, g) = s.strip_prefix('s')?.split_once('g')?;
    Some((k.parse().ok()?, g.parse().ok()?))
}

impl Client {
    pub fn new(k: usize, clock: Clock, timeout_ms: u64) -> Client {
        Client {
            gen: 0,
            session: session_name(k, 0),
            conn: ConnId {
                server_id: String::new(),
                cid: 0,
            },
            server: k % SERVERS,
            clock,
            timeout_ms,
            belief: SessionBelief::new(std::time::Duration::from_millis(timeout_ms)),
            next_hb: 0,
            hb_pending: BTreeMap::new(),
            next_id: 0,
            op: None,
            hold: None,
            pending: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            unacked: BTreeMap::new(),
            final_keys: None,
            failure: None,
        }
    }

    /// What keeps this client from having finished its final round.
    pub fn unfinished(&self) -> Option<String> {
        if let Some(f) = &self.failure {
            return Some(f.clone());
        }
        match &self.final_keys {
            Some(keys) if keys.is_empty() && self.op.is_none() && self.hold.is_none() => None,
            Some(keys) => Some(format!("{} keys not yet taken", keys.len())),
            None => Some("never started its final round".into()),
        }
    }
}

impl World {
    fn local(&self, k: usize) -> u64 {
        self.clients[k].clock.local(self.now)
    }

    /// Schedules timer `t` of the current session at local time `local`.
    fn timer(&mut self, k: usize, local: u64, t: Timer) {
        let at = self.clients[k].clock.at(local);
        let gen = self.clients[k].gen;
        self.schedule(at, Ev::ClientTimer(k, gen, t));
    }

    fn after_ms(&mut self, k: usize, ms: u64, t: Timer) {
        let local = self.local(k) + ms * MS;
        self.timer(k, local, t);
    }

    pub fn client_timer(&mut self, k: usize, gen: u32, t: Timer) {
        if gen != self.clients[k].gen {
            return;
        }
        match t {
            Timer::Reconnect => self.connect(k),
            Timer::Beat => self.heartbeat(k),
            Timer::HbExpire(hb) => {
                self.clients[k].hb_pending.remove(&hb);
            }
            Timer::Jeopardy => {
                let now = self.instant(&self.clients[k].clock);
                if self.clients[k].belief.check(now) {
                    trace!(
                        self,
                        "{}: unconfirmed, session ends",
                        self.clients[k].session
                    );
                    self.leaving(k);
                    self.end_session(k);
                }
            }
            Timer::Work => self.work(k),
            Timer::Renew(token) => self.renew(k, token),
            Timer::Lease(token, from) => {
                let c = &self.clients[k];
                if c.hold
                    .as_ref()
                    .is_some_and(|h| h.token == token && h.lease_from == from && !h.confirming)
                {
                    self.lose(k, "lease over on its own clock");
                }
            }
            Timer::AnswerTimeout(id) => self.answer_timeout(k, id),
            Timer::Retry(id) => {
                if self.clients[k].unacked.contains_key(&id) {
                    self.publish(k, id);
                }
            }
        }
    }

    /// A new session on a new connection (the application connects again).
    fn connect(&mut self, k: usize) {
        let c = &mut self.clients[k];
        let old = (c.conn.cid != 0).then(|| c.conn.clone());
        c.gen += 1;
        c.session = session_name(k, c.gen);
        c.belief = SessionBelief::new(std::time::Duration::from_millis(c.timeout_ms));
        c.hold = None;
        c.op = None;
        c.pending.clear();
        c.abandoned.clear();
        c.unacked.clear();
        c.hb_pending.clear();
        let server = self.rng.usize(0..SERVERS);
        let old_server = self.clients[k].server;
        self.clients[k].server = server;
        self.new_conn(k);
        if let Some(old) = old {
            // The old client is gone: its server saw it close.
            let from = Proc::Client(k);
            let now_server = self.clients[k].server;
            self.clients[k].server = old_server;
            self.advise(from, old, "Client Closed");
            self.clients[k].server = now_server;
        }
        trace!(self, "client {k} connects as {}", self.clients[k].session);
        self.heartbeat(k);
        let ms = self.rng.u64(0..300);
        self.after_ms(k, ms, Timer::Work);
    }

    fn new_conn(&mut self, k: usize) {
        let c = &mut self.clients[k];
        c.conn = ConnId {
            server_id: server_id(c.server),
            cid: 1_000_000 + 1000 * k as u64 + c.conn.cid % 1000 + 1,
        };
    }

    /// Fault: the client's connection drops and async-nats reconnects (to
    /// any server); the old one is reported "Client Closed".
    pub fn reconnect(&mut self, k: usize) {
        if self.clients[k].conn.cid == 0 {
            return;
        }
        self.counts.reconnects += 1;
        let old = self.clients[k].conn.clone();
        trace!(self, "client {k} reconnects (was {old:?})");
        self.advise(Proc::Client(k), old, "Client Closed");
        self.clients[k].server = self.rng.usize(0..SERVERS);
        self.new_conn(k);
    }

    fn heartbeat(&mut self, k: usize) {
        let c = &mut self.clients[k];
        let Some(body) = c.belief.heartbeat(&c.conn) else {
            return;
        };
        c.next_hb += 1;
        let hb = c.next_hb;
        let (gen, session) = (c.gen, c.session.clone());
        let interval = c.belief.interval().as_micros() as u64;
        let timeout = c.timeout_ms;
        let sent = self.instant(&self.clients[k].clock);
        self.clients[k].hb_pending.insert(hb, sent);
        for to in 0..self.coords.len() {
            if !self.coords[to].up {
                continue;
            }
            let inc = self.coords[to].inc;
            for at in self.core(Proc::Client(k), Proc::Coord(to)) {
                let msg = CoordMsg::Heartbeat {
                    client: k,
                    gen,
                    hb,
                    session: session.clone(),
                    body: body.clone(),
                };
                self.schedule(at, Ev::ToCoord(to, inc, msg));
            }
        }
        self.after_ms(k, timeout, Timer::HbExpire(hb));
        let next = self.local(k) + interval;
        self.timer(k, next, Timer::Beat);
    }

    /// The `leaving` beat of a session that ends.
    fn leaving(&mut self, k: usize) {
        let session = self.clients[k].session.clone();
        let gen = self.clients[k].gen;
        for to in 0..self.coords.len() {
            let inc = self.coords[to].inc;
            for at in self.core(Proc::Client(k), Proc::Coord(to)) {
                let body = protocol::Heartbeat {
                    leaving: true,
                    ..Default::default()
                };
                let msg = CoordMsg::Heartbeat {
                    client: k,
                    gen,
                    hb: 0,
                    session: session.clone(),
                    body,
                };
                self.schedule(at, Ev::ToCoord(to, inc, msg));
            }
        }
    }

    /// The session is over: holds lost; the application connects again.
    fn end_session(&mut self, k: usize) {
        self.counts.session_ends += 1;
        self.lose(k, "session over");
        let ms = self.rng.u64(50..500);
        self.after_ms(k, ms, Timer::Reconnect);
    }

    fn lose(&mut self, k: usize, why: &str) {
        let c = &mut self.clients[k];
        let Some(h) = c.hold.take() else { return };
        let who = (k, c.gen);
        trace!(
            self,
            "{} loses {} token {}: {why}",
            self.clients[k].session,
            h.key,
            h.token
        );
        let key = self.key_names[h.key].key().to_owned();
        self.checker.unbelieve(who, &key);
        let ms = self.rng.u64(0..100);
        self.after_ms(k, ms, Timer::Work);
    }

    pub fn client_input(&mut self, k: usize, gen: u32, msg: ClientMsg) {
        if gen != self.clients[k].gen {
            return;
        }
        match msg {
            ClientMsg::Stored { id } => {
                self.clients[k].unacked.remove(&id);
            }
            ClientMsg::Ack { hb, ack } => {
                // `nats.request` reads the first answer only.
                let Some(sent) = self.clients[k].hb_pending.remove(&hb) else {
                    return;
                };
                if self.clients[k].belief.answered(&ack, sent) {
                    trace!(self, "{}: declared dead", self.clients[k].session);
                    self.end_session(k);
                } else if let Some(at) = self.clients[k].belief.jeopardy_at() {
                    let local = (at - self.base).as_micros() as u64;
                    self.timer(k, local, Timer::Jeopardy);
                }
            }
            ClientMsg::Answer(answer) => self.client_answer(k, answer),
        }
    }

    // ---- requests -------------------------------------------------------

    fn request(&mut self, k: usize, op: Op, body: impl FnOnce(String) -> Vec<u8>) -> String {
        let c = &mut self.clients[k];
        c.next_id += 1;
        let id = format!("r{}", c.next_id);
        let subject = protocol::request_subject(op, &c.session);
        c.unacked.insert(id.clone(), (subject, body(id.clone())));
        self.publish(k, id.clone());
        id
    }

    /// One try to store a request; tried again until the stream acks it
    /// (same message id, so it is stored once).
    fn publish(&mut self, k: usize, id: String) {
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
                preempt: false,
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

    /// Releases a hold; `worker`: the worker waits for the answer.
    fn release(&mut self, k: usize, key: usize, token: u64, last: bool, worker: bool) {
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
        self.clients[k]
            .pending
            .insert(id.clone(), Pending::Release { last });
        self.after_ms(k, ANSWER_GRACE / MS, Timer::AnswerTimeout(id));
    }

    fn renew(&mut self, k: usize, token: u64) {
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

    fn work(&mut self, k: usize) {
        let c = &self.clients[k];
        if c.op.is_some() || c.belief.ended() {
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

    fn answer_timeout(&mut self, k: usize, id: String) {
        let Some(p) = self.clients[k].pending.remove(&id) else {
            return;
        };
        if self.clients[k].op.as_ref() == Some(&id) {
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
            Pending::Release { .. } | Pending::Cancel => {}
        }
        self.after_ms(k, 10, Timer::Work);
    }

    fn client_answer(&mut self, k: usize, answer: Answer) {
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
                    self.release(k, key.expect("one of ours"), *token, true, false);
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
            if !self.clients[k].belief.ended() {
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
            Pending::Release { last } => {
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
                if self.clients[k].belief.ended() || self.clients[k].hold.is_some() {
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
