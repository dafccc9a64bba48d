//! A coordinator process around the real [`Engine`]: what the runtime
//! (`src/runtime.rs`) does with NATS, done with the simulated
//! network, bucket and stream. It feeds the engine in the runtime's shapes
//! (requests with their age, bucket changes, heartbeats answered by every
//! coordinator, beats, advisories, other coordinators' final answers, a
//! 20 ms tick) and carries its actions out.

use crate::world::{trace, Clock, Ev, Proc, World, MS, SEC, SERVERS};
use jetlock::name::LockName;
use jetlock::protocol::{ConnId, CoordinatorBeat, Heartbeat, VERSION};
use jetlock::store::Current;
use jetlock_coordinator::{Action, Engine, EngineConfig, Stamp, WriteResult};
use std::collections::VecDeque;
use std::time::Duration;

const TICK: u64 = 20 * MS;
const BEAT: u64 = 250 * MS;
/// How long a JetStream call waits before it fails.
pub const JS_TIMEOUT: u64 = SEC;
/// How often a proof beat is sent (`hearing::PROOF_INTERVAL`, private to
/// the coordinator).
const PROOF_INTERVAL: u64 = 50 * MS;
/// How long finished requests' ids are remembered by the stream.
pub const DEDUP_WINDOW: u64 = 120 * SEC;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    Requests,
    Changes,
}

pub enum FeedItem {
    Request(u64),
    /// A change of the bucket: the key's new state, whether the server
    /// expired it, its message's stamp.
    Change(LockName, Current, bool, Stamp),
}

#[derive(Default)]
pub struct Feed {
    pub(crate) items: VecDeque<(u64, FeedItem)>,
    pumping: bool,
    /// Items there at the start, not delivered yet (the catch-up).
    pub(crate) initial: usize,
}

pub enum CoordMsg {
    Beat(CoordinatorBeat),
    Heartbeat {
        client: usize,
        gen: u32,
        hb: u64,
        session: String,
        body: Heartbeat,
    },
    /// Another coordinator's done note: the requests it finished since
    /// its last tick, (session, request id).
    Done(Vec<(String, String)>),
    /// A release on `jetlock.now.release.<session>`.
    UnstoredRelease {
        subject: String,
        body: Vec<u8>,
    },
    Advisory {
        conn: ConnId,
        reason: String,
    },
    /// Another coordinator asks when this one last heard `sessions`.
    HeardQuery {
        from: usize,
        from_inc: u32,
        round: u64,
        sessions: Vec<String>,
    },
    /// An answer to this coordinator's question.
    HeardReply {
        by: String,
        round: u64,
        ages_ms: Vec<Option<u64>>,
    },
}

pub struct Coord {
    pub id: String,
    pub inc: u32,
    pub up: bool,
    pub engine: Option<Engine>,
    pub clock: Clock,
    pub server: usize,
    pub conn: ConnId,
    feeds: [Feed; 2],
    ready: bool,
    listen_until: u64,
    next_beat: u64,
    writes: u64,
    /// Local time of the next proof beat; one in flight at a time.
    next_proof: u64,
    /// Proof beats in flight, and when (true time) the last one was sent.
    pub proofs_in_flight: usize,
    pub last_proof: Option<u64>,
    /// Final answers sent since the last done note, as the runtime keeps
    /// them: the note goes out on the next tick, and a crash loses it.
    done: Vec<(String, String)>,
    /// The request partitions read (`None`: all), as the runtime's
    /// consumer filter.
    pub(crate) reading: Option<Vec<u32>>,
    /// By partition (the last entry: unpartitioned requests), the last
    /// request fed: a new consumer reads from the start, and what the one
    /// it replaced delivered is skipped, as in `runtime/partitions.rs`.
    pub(crate) fed: Vec<u64>,
    /// The engine's number for the partitions being caught up on.
    pub(crate) catching_up: Option<u64>,
    /// The engine's number for the partitions whose consumer is being
    /// made: one made for an older number is dropped.
    pub(crate) opening: u64,
}

impl Coord {
    pub fn new(idx: usize, clock: Clock) -> Coord {
        Coord {
            id: String::new(),
            inc: 0,
            up: false,
            engine: None,
            clock,
            server: idx % SERVERS,
            conn: ConnId {
                server_id: String::new(),
                cid: 0,
            },
            feeds: [Feed::default(), Feed::default()],
            ready: false,
            listen_until: 0,
            next_beat: 0,
            writes: 0,
            next_proof: 0,
            proofs_in_flight: 0,
            last_proof: None,
            done: Vec::new(),
            reading: None,
            fed: Vec::new(),
            catching_up: None,
            opening: 0,
        }
    }

    pub(crate) fn feed(&mut self, kind: FeedKind) -> &mut Feed {
        &mut self.feeds[kind as usize]
    }
}

pub fn server_id(server: usize) -> String {
    format!("NSRV{server}")
}

impl World {
    pub fn live(&self, c: usize, inc: u32) -> bool {
        self.coords[c].up && self.coords[c].inc == inc
    }

    /// The coordinator's engine and its clock's now, if `inc` is running.
    pub fn engine_now(&mut self, c: usize) -> (&mut Engine, tokio::time::Instant) {
        let now = self.instant(&self.coords[c].clock);
        let engine = self.coords[c]
            .engine
            .as_mut()
            .expect("a running coordinator");
        (engine, now)
    }

    /// Starts coordinator `c` (again): a new id and connection, the request
    /// stream from its first message and the bucket's last message per key.
    pub fn restart(&mut self, c: usize) {
        let co = &mut self.coords[c];
        co.inc += 1;
        co.up = true;
        co.id = format!("c{c}.{}", co.inc);
        co.conn = ConnId {
            server_id: server_id(co.server),
            cid: 1000 + c as u64 * 100 + co.inc as u64,
        };
        let cfg = EngineConfig {
            confirm_with_proof: true,
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(co.id.clone(), cfg);
        engine.set_partitions(self.cfg.partitions);
        co.engine = Some(engine);
        co.reading = None;
        co.fed = vec![0; self.cfg.partitions as usize + 1];
        co.catching_up = None;
        co.opening = 0;
        co.feeds = [Feed::default(), Feed::default()];
        co.ready = false;
        co.proofs_in_flight = 0;
        co.last_proof = None;
        co.next_proof = 0;
        co.done.clear();
        co.listen_until = self.now + 2 * BEAT;
        let inc = co.inc;
        trace!(self, "{} starts", self.coords[c].id);
        let seqs: Vec<u64> = self.stream.msgs.keys().copied().collect();
        for seq in seqs {
            self.append(c, FeedKind::Requests, FeedItem::Request(seq));
        }
        let keys: Vec<(String, crate::bucket::Entry)> = self
            .bucket
            .keys
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for (key, e) in keys {
            let name = LockName::from_key(&key).expect("keys of valid names");
            self.append(
                c,
                FeedKind::Changes,
                FeedItem::Change(name, e.current(), e.expired, e.stamp.clone()),
            );
        }
        for kind in [FeedKind::Requests, FeedKind::Changes] {
            let f = self.coords[c].feed(kind);
            f.initial = f.items.len();
        }
        self.schedule(self.now + TICK, Ev::Tick(c, inc));
    }

    /// Kills coordinator `c`; it starts again after a while.
    pub fn crash(&mut self, c: usize) {
        if !self.coords[c].up {
            return;
        }
        trace!(self, "{} crashes", self.coords[c].id);
        self.counts.crashes += 1;
        self.coords[c].up = false;
        self.coords[c].engine = None;
        let conn = self.coords[c].conn.clone();
        self.advise(Proc::Coord(c), conn, "Client Closed");
        let down = self.rng.u64(100 * MS..3 * SEC);
        self.schedule(self.now + down, Ev::Restart(c));
    }

    /// The server `from` is on reports a closed connection to every
    /// coordinator.
    pub fn advise(&mut self, from: Proc, conn: ConnId, reason: &str) {
        for c in 0..self.coords.len() {
            if !self.coords[c].up || matches!(from, Proc::Coord(f) if f == c) {
                continue;
            }
            let inc = self.coords[c].inc;
            for at in self.core(from, Proc::Coord(c)) {
                let msg = CoordMsg::Advisory {
                    conn: conn.clone(),
                    reason: reason.to_owned(),
                };
                self.schedule(at, Ev::ToCoord(c, inc, msg));
            }
        }
    }

    /// A JetStream message for every running coordinator's feed.
    pub fn broadcast(&mut self, kind: FeedKind, item: impl Fn() -> FeedItem) {
        for c in 0..self.coords.len() {
            if !self.coords[c].up {
                continue;
            }
            // The consumer's filter: only the partitions it reads.
            if let FeedItem::Request(seq) = item() {
                let read = self
                    .stream
                    .msgs
                    .get(&seq)
                    .is_some_and(|m| self.coords[c].reads(&m.subject));
                if !read {
                    continue;
                }
            }
            self.append(c, kind, item());
        }
    }

    pub(crate) fn append(&mut self, c: usize, kind: FeedKind, item: FeedItem) {
        let at = self.now + self.delay();
        let inc = self.coords[c].inc;
        let f = self.coords[c].feed(kind);
        let at = f.items.back().map_or(at, |(last, _)| at.max(*last));
        f.items.push_back((at, item));
        if !f.pumping {
            f.pumping = true;
            self.schedule(at, Ev::Pump(c, inc, kind));
        }
    }

    /// Delivers a feed in order; it stalls while JetStream is out of reach.
    pub fn pump(&mut self, c: usize, inc: u32, kind: FeedKind) {
        if !self.live(c, inc) {
            return;
        }
        if !self.js_reachable(Proc::Coord(c)) {
            let at = self.js_back_at() + self.delay();
            self.schedule(at, Ev::Pump(c, inc, kind));
            return;
        }
        let now = self.now;
        let f = self.coords[c].feed(kind);
        let Some((at, _)) = f.items.front() else {
            f.pumping = false;
            return;
        };
        if *at > now {
            let at = *at;
            self.schedule(at, Ev::Pump(c, inc, kind));
            return;
        }
        let (_, item) = f.items.pop_front().expect("checked");
        let was_initial = f.initial > 0;
        f.initial = f.initial.saturating_sub(1);
        let last_initial = was_initial && f.initial == 0;
        self.schedule(now, Ev::Pump(c, inc, kind));
        match item {
            FeedItem::Request(seq) => {
                // The pending requests of a new consumer are read: the
                // partitions it gained are caught up on, after this one.
                let caught_up = if last_initial {
                    self.coords[c].catching_up.take()
                } else {
                    None
                };
                self.feed_request(c, seq, now);
                if let Some(generation) = caught_up {
                    trace!(self, "{} caught up on its partitions", self.coords[c].id);
                    let (e, t) = self.engine_now(c);
                    e.partitions_caught_up(generation, t);
                }
            }
            FeedItem::Change(name, current, expired, stamp) => {
                trace!(
                    self,
                    "{} sees {} = {current:?}",
                    self.coords[c].id,
                    name.key()
                );
                let (e, t) = self.engine_now(c);
                e.observed_change(&name, current, expired, stamp, t);
            }
        }
        self.after(c);
    }

    /// Feeds request `seq` to coordinator `c`, unless it was fed before.
    fn feed_request(&mut self, c: usize, seq: u64, now: u64) {
        {
            {
                let Some(m) = self.stream.msgs.get(&seq).cloned() else {
                    return;
                };
                if self.coords[c].fed(&m.subject, seq) {
                    return;
                }
                // The coordinator's wall clock minus the server's stamp.
                let skew =
                    self.rng.u64(0..=2 * self.cfg.wall_skew) as i64 - self.cfg.wall_skew as i64;
                let age = ((now - m.at) as i64 + skew).max(0) as u64;
                trace!(
                    self,
                    "{} reads request {seq} {} {}",
                    self.coords[c].id,
                    m.subject,
                    String::from_utf8_lossy(&m.body)
                );
                let (e, t) = self.engine_now(c);
                e.request(seq, &m.subject, &m.body, Duration::from_micros(age), t);
            }
        }
    }

    pub fn coord_tick(&mut self, c: usize, inc: u32) {
        if !self.live(c, inc) {
            return;
        }
        let local = self.coords[c].clock.local(self.now);
        if local >= self.coords[c].next_proof {
            self.coords[c].next_proof = local + PROOF_INTERVAL;
            self.prove(c);
        }
        let (e, t) = self.engine_now(c);
        e.tick(t);
        let co = &self.coords[c];
        if co.ready && self.now >= co.next_beat {
            self.coords[c].next_beat = self.now + BEAT;
            self.beat(c);
        }
        self.after(c);
        self.send_done(c);
        let next = self.coords[c].clock.local(self.now) + TICK;
        let at = self.coords[c].clock.at(next);
        self.schedule(at, Ev::Tick(c, inc));
    }

    /// The done note of coordinator `c`'s tick, one message to each other
    /// coordinator (lost, duplicated or late as a whole).
    fn send_done(&mut self, c: usize) {
        let done = std::mem::take(&mut self.coords[c].done);
        if done.is_empty() {
            return;
        }
        for to in (0..self.coords.len()).filter(|&to| to != c) {
            if !self.coords[to].up {
                continue;
            }
            let to_inc = self.coords[to].inc;
            for at in self.core(Proc::Coord(c), Proc::Coord(to)) {
                self.schedule(at, Ev::ToCoord(to, to_inc, CoordMsg::Done(done.clone())));
            }
        }
    }

    fn beat(&mut self, c: usize) {
        let beat = CoordinatorBeat {
            v: VERSION,
            id: self.coords[c].id.clone(),
            conn: Some(self.coords[c].conn.clone()),
            now_ms: None,
            leaving: false,
        };
        for to in 0..self.coords.len() {
            if !self.coords[to].up {
                continue;
            }
            let inc = self.coords[to].inc;
            for at in self.core(Proc::Coord(c), Proc::Coord(to)) {
                self.schedule(at, Ev::ToCoord(to, inc, CoordMsg::Beat(beat.clone())));
            }
        }
    }

    pub fn coord_input(&mut self, c: usize, inc: u32, msg: CoordMsg) {
        if !self.live(c, inc) {
            return;
        }
        match msg {
            CoordMsg::Beat(beat) => {
                let (e, t) = self.engine_now(c);
                e.coordinator_beat(beat, t);
            }
            CoordMsg::Heartbeat {
                client,
                gen,
                hb,
                session,
                body,
            } => {
                let (e, t) = self.engine_now(c);
                // The reply subject names the client's inbox and heartbeat.
                e.heartbeat_to(&session, body, format!("{client}.{gen}.{hb}"), t);
                trace!(self, "{} heartbeat {session}", self.coords[c].id);
            }
            CoordMsg::Done(done) => {
                let (e, t) = self.engine_now(c);
                for (session, re) in &done {
                    e.answered(session, re, t);
                }
            }
            CoordMsg::UnstoredRelease { subject, body } => {
                // Its subscriptions: only the partitions it reads.
                if !self.coords[c].reads(&subject) {
                    return;
                }
                trace!(self, "{} unstored release on {subject}", self.coords[c].id);
                let (e, t) = self.engine_now(c);
                e.unstored_release(&subject, &body, t);
            }
            CoordMsg::Advisory { conn, reason } => {
                trace!(self, "{} advisory {conn:?} {reason}", self.coords[c].id);
                let (e, t) = self.engine_now(c);
                e.disconnected(&conn, &reason, t);
            }
            CoordMsg::HeardQuery {
                from,
                from_inc,
                round,
                sessions,
            } => {
                let (e, t) = self.engine_now(c);
                let ages_ms = e.heard_query(&sessions, t);
                trace!(
                    self,
                    "{} tells c{from} it heard {sessions:?} {ages_ms:?} ms ago",
                    self.coords[c].id
                );
                let by = self.coords[c].id.clone();
                for at in self.core(Proc::Coord(c), Proc::Coord(from)) {
                    let m = CoordMsg::HeardReply {
                        by: by.clone(),
                        round,
                        ages_ms: ages_ms.clone(),
                    };
                    self.schedule(at, Ev::ToCoord(from, from_inc, m));
                }
            }
            CoordMsg::HeardReply { by, round, ages_ms } => {
                let (e, t) = self.engine_now(c);
                e.heard_reply(&by, round, &ages_ms, t);
            }
        }
        self.after(c);
    }

    /// After any input: become ready once caught up, then carry out the
    /// engine's actions.
    pub fn after(&mut self, c: usize) {
        let co = &mut self.coords[c];
        if !co.ready && co.feeds.iter().all(|f| f.initial == 0) && self.now >= co.listen_until {
            co.ready = true;
            co.next_beat = self.now + BEAT;
            let t = self.base + Duration::from_micros(co.clock.local(self.now));
            co.engine.as_mut().expect("running").set_ready(t);
            trace!(self, "{} ready", self.coords[c].id);
            self.beat(c);
        }
        let actions = self.coords[c]
            .engine
            .as_mut()
            .expect("running")
            .take_actions();
        for a in actions {
            self.carry_out(c, a);
        }
        let change = self.coords[c]
            .engine
            .as_mut()
            .expect("running")
            .take_partition_change();
        if let Some((owned, generation)) = change {
            self.open_partitions(c, owned, generation);
        }
    }

    fn carry_out(&mut self, c: usize, action: Action) {
        let inc = self.coords[c].inc;
        let me = Proc::Coord(c);
        match action {
            Action::HeartbeatAck { reply, ack } => {
                trace!(
                    self,
                    "{} heartbeat answer {reply}: {ack:?}",
                    self.coords[c].id
                );
                let mut parts = reply.split('.').map(|p| p.parse::<u64>().expect("ours"));
                let (client, gen, hb) = (parts.next(), parts.next(), parts.next());
                let (client, gen, hb) = (
                    client.expect("ours") as usize,
                    gen.expect("ours") as u32,
                    hb.expect("ours"),
                );
                for at in self.core(me, Proc::Client(client)) {
                    let m = crate::client::ClientMsg::Ack {
                        hb,
                        ack: ack.clone(),
                    };
                    self.schedule(at, Ev::ToClient(client, gen, m));
                }
            }
            Action::Answer { session, answer } => {
                trace!(self, "{} answers {session}: {answer:?}", self.coords[c].id);
                let id = self.coords[c].id.clone();
                self.checker.answer(self.now, &id, &session, &answer);
                if let Some((k, gen)) = crate::client::parse_session(&session) {
                    if k < self.clients.len() {
                        for at in self.core(me, Proc::Client(k)) {
                            let m = crate::client::ClientMsg::Answer(answer.clone());
                            self.schedule(at, Ev::ToClient(k, gen, m));
                        }
                    }
                }
                if let (Some(re), true) = (answer.re(), answer.is_final()) {
                    self.coords[c].done.push((session.clone(), re.to_owned()));
                }
            }
            Action::Write(write) => {
                self.coords[c].writes += 1;
                let wid = write.id.clone();
                trace!(
                    self,
                    "{} writes {wid} {} expecting {}: {:?}",
                    self.coords[c].id,
                    write.name.key(),
                    write.expected,
                    write.kind
                );
                let name = write.name.clone();
                if !self.js_reachable(me) || self.chance(self.cfg.faults.write_lost) {
                    self.counts.writes_lost += 1;
                    let result = WriteResult::Failed;
                    self.schedule(
                        self.now + JS_TIMEOUT,
                        Ev::WriteDone {
                            c,
                            inc,
                            name,
                            result,
                        },
                    );
                } else {
                    let at = self.now + self.delay();
                    self.schedule(at, Ev::WriteLand { c, inc, write });
                }
            }
            Action::Read { name } => {
                if self.js_reachable(me) {
                    let at = self.now + self.delay();
                    self.schedule(at, Ev::ReadAt { c, inc, name });
                } else {
                    let current = None;
                    self.schedule(
                        self.now + JS_TIMEOUT,
                        Ev::ReadDone {
                            c,
                            inc,
                            name,
                            current,
                        },
                    );
                }
            }
            Action::Delete { seq } => {
                if self.js_reachable(me) {
                    let at = self.now + self.delay();
                    self.schedule(at, Ev::DeleteAt(seq));
                }
            }
            Action::Prove => self.prove(c),
            Action::AskHeard { round, sessions } => {
                trace!(self, "{} asks who heard {sessions:?}", self.coords[c].id);
                for to in (0..self.coords.len()).filter(|&to| to != c) {
                    if !self.coords[to].up {
                        continue;
                    }
                    let to_inc = self.coords[to].inc;
                    for at in self.core(me, Proc::Coord(to)) {
                        let m = CoordMsg::HeardQuery {
                            from: c,
                            from_inc: inc,
                            round,
                            sessions: sessions.clone(),
                        };
                        self.schedule(at, Ev::ToCoord(to, to_inc, m));
                    }
                }
            }
            Action::Event(_) => {}
        }
    }

    pub fn write_done(&mut self, c: usize, inc: u32, name: LockName, result: WriteResult) {
        if !self.live(c, inc) {
            return;
        }
        let (e, t) = self.engine_now(c);
        e.written(&name, result, t);
        self.after(c);
    }

    pub fn read_done(
        &mut self,
        c: usize,
        inc: u32,
        name: LockName,
        current: Option<(Current, Stamp)>,
    ) {
        if !self.live(c, inc) {
            return;
        }
        let (e, t) = self.engine_now(c);
        e.read_done(&name, current, t);
        self.after(c);
    }
}
