//! A simulated client on the JSON protocol: one worker per process that
//! acquires (through the request stream, bodies from `jetlock::protocol`),
//! holds, renews, re-enters and releases, and heartbeats with the real
//! `Heartbeat` bodies, as `SessionLink` (crates/jetlock/src/client/session.rs) does:
//! every quarter of its timeout, at once after a reconnect or a probe, each
//! answer of every coordinator matched to its heartbeat's send time. Whether
//! the session still stands is the library's own [`SessionBelief`]; a hold
//! is believed from its grant answer until it is lost (session over,
//! `lost`/`revoke_notice` notice, renewal refused, lease over on its own
//! clock) or its last release starts.

use crate::coord::{server_id, CoordMsg};
use crate::world::{trace, Clock, Ev, Proc, World, MS, SEC, SERVERS};
use jetlock::client::belief::{Answered, SessionBelief};
use jetlock::protocol::{self, Answer, ConnId, Heartbeat, HeartbeatAck};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How long an answer may take beyond the wait (`session::ANSWER_GRACE`).
pub const ANSWER_GRACE: u64 = 5 * SEC;
pub const RETRY: u64 = 250 * MS;
/// The wait of an acquire once faults stopped: it must be granted.
pub const FINAL_WAIT_MS: u64 = 20_000;

/// Least time between two heartbeats (`session::MIN_BEAT_GAP`).
const MIN_BEAT_GAP: u64 = 5 * MS;
/// Heartbeats whose answers are still matched to their send time.
const BEATS_REMEMBERED: usize = 16;

pub enum Timer {
    Reconnect,
    /// The periodic heartbeat.
    Beat,
    /// A heartbeat at once (reconnected, probed).
    BeatNow,
    Deadline,
    /// The connection is back after a drop.
    Reconnected,
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

pub enum Pending {
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
        key: usize,
        token: u64,
        /// Sent unstored: sent again stored if no answer comes.
        unstored: bool,
    },
    Cancel,
}

pub struct Hold {
    pub key: usize,
    pub token: u64,
    pub holds: u32,
    /// Local time the lease counts from (the send of the last write).
    pub lease_from: u64,
    pub ttl_ms: u64,
    pub renewing: bool,
    /// Granted after a long wait: renewed once before the lease is timed.
    pub confirming: bool,
}

pub struct Client {
    pub gen: u32,
    pub session: String,
    pub conn: ConnId,
    pub server: usize,
    pub clock: Clock,
    pub timeout_ms: u64,
    pub belief: SessionBelief,
    pub next_hb: u64,
    /// Send times of the recent heartbeats, by number, and whether each
    /// named a connection made after the last drop.
    pub sent: VecDeque<(u64, Instant, bool)>,
    /// The connection that dropped, until a heartbeat names a new one.
    pub dropped_conn: Option<ConnId>,
    pub last_beat: Option<u64>,
    /// The connection is down until then (true time).
    pub offline_until: u64,
    pub next_id: u64,
    /// The worker's request in flight (acquire or release).
    pub op: Option<String>,
    pub hold: Option<Hold>,
    pub pending: BTreeMap<String, Pending>,
    pub abandoned: BTreeSet<String>,
    pub unacked: BTreeMap<String, (String, Vec<u8>)>,
    pub final_keys: Option<VecDeque<usize>>,
    pub failure: Option<String>,
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
            belief: SessionBelief::new(Duration::from_millis(timeout_ms)),
            next_hb: 0,
            sent: VecDeque::new(),
            dropped_conn: None,
            last_beat: None,
            offline_until: 0,
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
    pub fn local(&self, k: usize) -> u64 {
        self.clients[k].clock.local(self.now)
    }

    /// Schedules timer `t` of the current session at local time `local`.
    pub fn timer(&mut self, k: usize, local: u64, t: Timer) {
        let at = self.clients[k].clock.at(local);
        let gen = self.clients[k].gen;
        self.schedule(at, Ev::ClientTimer(k, gen, t));
    }

    pub fn after_ms(&mut self, k: usize, ms: u64, t: Timer) {
        let local = self.local(k) + ms * MS;
        self.timer(k, local, t);
    }

    pub fn client_timer(&mut self, k: usize, gen: u32, t: Timer) {
        if gen != self.clients[k].gen {
            return;
        }
        match t {
            Timer::Reconnect => self.connect(k),
            Timer::Beat => {
                let next = self.local(k) + self.clients[k].timeout_ms * MS / 4;
                self.timer(k, next, Timer::Beat);
                self.heartbeat(k);
            }
            Timer::BeatNow => self.heartbeat(k),
            Timer::Deadline => {
                let now = self.instant(&self.clients[k].clock);
                let c = &mut self.clients[k];
                if !c.belief.is_ended() && c.belief.over_at(now) {
                    c.belief.end();
                    trace!(self, "{}: unconfirmed, session ends", c.session);
                    self.leaving(k);
                    self.end_session(k);
                }
            }
            Timer::Reconnected => {
                self.clients[k].server = self.rng.usize(0..SERVERS);
                self.new_conn(k);
                trace!(self, "client {k} reconnected as {:?}", self.clients[k].conn);
                self.heartbeat(k);
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

    /// Whether the session is over by the client's clock now.
    pub fn session_over(&self, k: usize) -> bool {
        let now = self.instant(&self.clients[k].clock);
        self.clients[k].belief.over_at(now)
    }

    /// A new session on a new connection (the application connects again).
    fn connect(&mut self, k: usize) {
        let c = &mut self.clients[k];
        let old = (c.conn.cid != 0).then(|| c.conn.clone());
        c.gen += 1;
        c.session = session_name(k, c.gen);
        c.belief = SessionBelief::new(Duration::from_millis(c.timeout_ms));
        c.hold = None;
        c.op = None;
        c.pending.clear();
        c.abandoned.clear();
        c.unacked.clear();
        c.sent.clear();
        c.dropped_conn = None;
        c.last_beat = None;
        let old_server = c.server;
        if let Some(old) = old {
            // The old client is gone: its server saw it close.
            self.advise(Proc::Client(k), old, "Client Closed");
        }
        self.clients[k].server = self.rng.usize(0..SERVERS);
        let _ = old_server;
        self.new_conn(k);
        trace!(self, "client {k} connects as {}", self.clients[k].session);
        self.client_timer(k, self.clients[k].gen, Timer::Beat);
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

    /// Fault: the client's connection drops (missed pings, a server
    /// restart) and async-nats reconnects, to any server, a little later.
    /// The client closed the old socket: its server reports "Client
    /// Closed".
    pub fn reconnect(&mut self, k: usize) {
        if self.clients[k].conn.cid == 0 || self.clients[k].offline_until > self.now {
            return;
        }
        self.counts.reconnects += 1;
        let old = self.clients[k].conn.clone();
        trace!(self, "client {k} reconnects (was {old:?})");
        let now = self.instant(&self.clients[k].clock);
        self.clients[k].belief.dropped(now);
        self.clients[k].dropped_conn = Some(old.clone());
        self.schedule_deadline(k);
        self.advise(Proc::Client(k), old, "Client Closed");
        let down = self.rng.u64(MS..200 * MS);
        self.clients[k].offline_until = self.now + down;
        let gen = self.clients[k].gen;
        self.schedule(self.now + down, Ev::ClientTimer(k, gen, Timer::Reconnected));
    }

    fn schedule_deadline(&mut self, k: usize) {
        if let Some(at) = self.clients[k].belief.deadline() {
            let local = (at - self.base).as_micros() as u64;
            self.timer(k, local, Timer::Deadline);
        }
    }

    fn heartbeat(&mut self, k: usize) {
        if self.clients[k].belief.is_ended() {
            return;
        }
        let local = self.local(k);
        if let Some(last) = self.clients[k].last_beat {
            if local < last + MIN_BEAT_GAP {
                self.timer(k, last + MIN_BEAT_GAP, Timer::BeatNow);
                return;
            }
        }
        let now = self.instant(&self.clients[k].clock);
        let c = &mut self.clients[k];
        c.last_beat = Some(local);
        c.belief.sent(now);
        c.next_hb += 1;
        let hb = c.next_hb;
        let new_conn = c.dropped_conn.as_ref().is_some_and(|old| *old != c.conn);
        c.sent.push_back((hb, now, new_conn));
        if c.sent.len() > BEATS_REMEMBERED {
            c.sent.pop_front();
        }
        let body = Heartbeat {
            timeout_ms: Some(c.timeout_ms),
            conn: Some(c.conn.clone()),
            leaving: false,
            client: None,
        };
        let (gen, session) = (c.gen, c.session.clone());
        self.send_to_coordinators(k, || CoordMsg::Heartbeat {
            client: k,
            gen,
            hb,
            session: session.clone(),
            body: body.clone(),
        });
        self.schedule_deadline(k);
    }

    /// Core NATS from client `k` to every coordinator that is up: each
    /// copy (or none, or two) as the network delivers it.
    pub fn send_to_coordinators(&mut self, k: usize, msg: impl Fn() -> CoordMsg) {
        for to in 0..self.coords.len() {
            if !self.coords[to].up {
                continue;
            }
            let inc = self.coords[to].inc;
            for at in self.core(Proc::Client(k), Proc::Coord(to)) {
                self.schedule(at, Ev::ToCoord(to, inc, msg()));
            }
        }
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
    pub fn end_session(&mut self, k: usize) {
        self.counts.session_ends += 1;
        self.clients[k].belief.end();
        self.lose(k, "session over");
        let ms = self.rng.u64(50..500);
        self.after_ms(k, ms, Timer::Reconnect);
    }

    pub fn lose(&mut self, k: usize, why: &str) {
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
                // Every coordinator's answer counts, from its heartbeat's
                // send time.
                let c = &mut self.clients[k];
                let Some(&(_, sent, new_conn)) = c.sent.iter().find(|(n, ..)| *n == hb) else {
                    return;
                };
                let (alive, timeout, grace) = (ack.alive, ack.timeout_ms, ack.grace_ms);
                let by = ack.by.as_deref().map(|by| (by, ack.coordinators));
                match c
                    .belief
                    .answered_by(sent, alive, timeout, grace, new_conn, by)
                {
                    Answered::Dead => {
                        trace!(self, "{}: declared dead", self.clients[k].session);
                        self.end_session(k);
                    }
                    Answered::Alive => {
                        self.schedule_deadline(k);
                        // As the client does: beat again until every
                        // coordinator confirmed the new connection.
                        if new_conn && self.clients[k].belief.reconnect_unconfirmed() {
                            self.heartbeat(k);
                        }
                    }
                    Answered::Over => {}
                }
            }
            ClientMsg::Answer(Answer::Probe { .. }) => self.heartbeat(k),
            ClientMsg::Answer(answer) => self.client_answer(k, answer),
        }
    }
}
