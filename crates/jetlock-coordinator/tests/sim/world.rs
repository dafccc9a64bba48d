//! The simulated world: one seeded scheduler of events on true time (µs),
//! the network between processes, per-process clocks, the fault plan.
//!
//! Three NATS servers form the cluster; every process is connected to one
//! of them. Core NATS messages (heartbeats and their answers, coordinator
//! beats, answers, disconnect advisories) may be lost, duplicated, delayed
//! and reordered, and never cross a route partition. JetStream (the
//! bucket and the request stream) lives on the majority: a process on an
//! isolated server cannot reach it, and its feeds resume after the heal.

use crate::bucket::{Bucket, RequestStream};
use crate::check::Checker;
use crate::client::{Client, ClientMsg, Timer};
use crate::coord::{Coord, CoordMsg, FeedKind};
use jetlock::name::LockName;
use jetlock::store::Current;
use jetlock_coordinator::{Stamp, Write, WriteResult};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use tokio::time::Instant;

pub const MS: u64 = 1_000;
pub const SEC: u64 = 1_000_000;
pub const SERVERS: usize = 3;

/// What faults a run injects. Rates are per message or per write; the
/// `*_every` are mean intervals between faults of that kind (0: never).
#[derive(Debug, Clone)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    /// Share of messages held up 20–300 ms (reordering).
    pub slow: f64,
    pub publish_ack_loss: f64,
    pub write_ack_loss: f64,
    pub write_lost: f64,
    pub crash_every: u64,
    pub reconnect_every: u64,
    pub partition_every: u64,
    /// Share of last releases sent unstored (core NATS, protocol 1.8),
    /// each sent again stored when no answer comes in 500 ms. Not a fault,
    /// but drawn only when above 0, so the runs of the named seeds stay
    /// what they were.
    pub unstored: f64,
}

impl Faults {
    /// Message faults only: no crash, reconnect or partition.
    pub fn network() -> Self {
        Faults {
            loss: 0.01,
            dup: 0.005,
            slow: 0.02,
            publish_ack_loss: 0.02,
            write_ack_loss: 0.0,
            write_lost: 0.0,
            crash_every: 0,
            reconnect_every: 0,
            partition_every: 0,
            unstored: 0.0,
        }
    }

    /// Message faults and one other kind: `crash`, `reconnect`,
    /// `partition` or `write` (lost write acks and writes).
    pub fn network_and(kind: &str) -> Self {
        let all = Faults::all();
        let mut f = Faults::network();
        match kind {
            "crash" => f.crash_every = all.crash_every,
            "reconnect" => f.reconnect_every = all.reconnect_every,
            "partition" => f.partition_every = all.partition_every,
            "write" => {
                f.write_ack_loss = all.write_ack_loss;
                f.write_lost = all.write_lost;
            }
            other => panic!("no fault kind {other}"),
        }
        f
    }

    /// Every fault.
    pub fn all() -> Self {
        Faults {
            write_ack_loss: 0.02,
            write_lost: 0.01,
            crash_every: 8 * SEC,
            reconnect_every: 6 * SEC,
            partition_every: 15 * SEC,
            ..Faults::network()
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub coordinators: usize,
    pub clients: usize,
    pub keys: usize,
    /// How long faults are injected (true time).
    pub faulty_for: u64,
    /// Then, without faults, every client takes every key once.
    pub quiet_for: u64,
    pub faults: Faults,
    /// Session timeouts the clients choose from.
    pub timeouts_ms: Vec<u64>,
    /// Clock rate bound: every process' clock runs within ±this, ppm.
    pub drift_ppm: i64,
    /// Most a coordinator's wall clock differs from the servers', µs (a
    /// request's age is one minus the other).
    pub wall_skew: u64,
    /// Request partitions (1: not partitioned, every coordinator reads
    /// every request). Few, so that a run's keys land in partitions of
    /// different owners and move between them.
    pub partitions: u32,
}

impl SimConfig {
    /// A run drawn from `seed`: sizes vary with the seed.
    pub fn from_seed(seed: u64, faults: Faults) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        SimConfig {
            seed,
            coordinators: rng.usize(1..=3),
            clients: rng.usize(2..=4),
            keys: rng.usize(1..=2),
            faulty_for: 30 * SEC,
            quiet_for: 60 * SEC,
            faults,
            timeouts_ms: vec![300, 900, 2_000, 5_000],
            drift_ppm: 1_000,
            wall_skew: 20 * MS,
            // One seed in four runs as a deployment made before partitions.
            partitions: if seed % 4 == 3 { 1 } else { 4 },
        }
    }
}

/// A process clock: `local = offset + t · (1 + ppm / 10⁶)`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub ppm: i64,
    pub offset: u64,
}

impl Clock {
    pub fn draw(rng: &mut fastrand::Rng, bound: i64) -> Clock {
        Clock {
            ppm: rng.i64(-bound..=bound),
            offset: rng.u64(0..1_000 * SEC),
        }
    }

    pub fn local(&self, t: u64) -> u64 {
        let drift = (t as i128 * self.ppm as i128 / 1_000_000) as i64;
        self.offset + (t as i64 + drift) as u64
    }

    /// The true time at which this clock shows `local` (never before now).
    pub fn at(&self, local: u64) -> u64 {
        let since = local.saturating_sub(self.offset) as u128;
        (since * 1_000_000).div_ceil((1_000_000 + self.ppm) as u128) as u64
    }
}

/// Who sends and receives.
#[derive(Debug, Clone, Copy)]
pub enum Proc {
    Coord(usize),
    Client(usize),
}

pub enum Ev {
    Tick(usize, u32),
    Pump(usize, u32, FeedKind),
    ToCoord(usize, u32, CoordMsg),
    WriteLand {
        c: usize,
        inc: u32,
        write: Write,
    },
    WriteDone {
        c: usize,
        inc: u32,
        name: LockName,
        result: WriteResult,
    },
    ReadAt {
        c: usize,
        inc: u32,
        name: LockName,
    },
    ReadDone {
        c: usize,
        inc: u32,
        name: LockName,
        current: Option<(Current, Stamp)>,
    },
    DeleteAt(u64),
    Expire {
        key: String,
        revision: u64,
    },
    Restart(usize),
    /// The consumer of the partitions `owned` is made (`runtime/
    /// partitions.rs`), or the JetStream API call fails.
    PartitionsOpened {
        c: usize,
        inc: u32,
        owned: Vec<u32>,
        generation: u64,
    },
    /// A proof beat was acknowledged (`Some(sent)`) or timed out.
    ProofDone(usize, u32, Option<Instant>),
    ToClient(usize, u32, ClientMsg),
    ClientTimer(usize, u32, Timer),
    Store {
        client: usize,
        gen: u32,
        id: String,
        subject: String,
        body: Vec<u8>,
        msg_id: String,
    },
    Fault,
    Heal(usize),
    EndFaults,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Counts of what a run did.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub steps: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub reconnects: u64,
    pub partitions: u64,
    pub write_acks_lost: u64,
    pub writes_lost: u64,
    pub publish_acks_lost: u64,
    pub grants: u64,
    pub session_ends: u64,
    pub double_answers: u64,
    /// Unstored releases sent, and those sent again stored unanswered.
    pub unstored: u64,
    pub unstored_unanswered: u64,
    /// Request partitions a coordinator gained and read again from the
    /// stream with requests in them (`partitions` above are network ones).
    pub partition_catch_ups: u64,
}

pub struct World {
    pub cfg: SimConfig,
    pub rng: fastrand::Rng,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub base: Instant,
    pub coords: Vec<Coord>,
    pub clients: Vec<Client>,
    pub bucket: Bucket,
    pub stream: RequestStream,
    pub server_clock: Clock,
    /// The server cut off from the others by a route partition, and until
    /// when.
    pub isolated: Option<(usize, u64)>,
    pub faulty: bool,
    pub checker: Checker,
    pub counts: Counts,
    pub trace: Option<Vec<String>>,
    pub key_names: Vec<LockName>,
}

/// Formats a trace line only when tracing (a failing seed's replay).
macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {
        if let Some(t) = $w.trace.as_mut() {
            t.push(format!("{:>10.3}ms {}", $w.now as f64 / 1000.0, format!($($arg)*)));
        }
    };
}
pub(crate) use trace;

impl World {
    pub fn new(cfg: SimConfig, trace: bool) -> World {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let server_clock = Clock::draw(&mut rng, cfg.drift_ppm);
        let key_names = (0..cfg.keys)
            .map(|k| LockName::new(&format!("acct:{k}")).expect("a valid name"))
            .collect();
        let mut w = World {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            base: Instant::now(),
            coords: Vec::new(),
            clients: Vec::new(),
            bucket: Bucket::default(),
            stream: RequestStream::default(),
            server_clock,
            isolated: None,
            faulty: true,
            checker: Checker::default(),
            counts: Counts::default(),
            trace: trace.then(Vec::new),
            key_names,
            cfg,
        };
        for c in 0..w.cfg.coordinators {
            let clock = Clock::draw(&mut w.rng, w.cfg.drift_ppm);
            w.coords.push(Coord::new(c, clock));
            let at = w.rng.u64(0..300 * MS);
            w.schedule(at, Ev::Restart(c));
        }
        for k in 0..w.cfg.clients {
            let clock = Clock::draw(&mut w.rng, w.cfg.drift_ppm);
            let timeout = w.cfg.timeouts_ms[w.rng.usize(0..w.cfg.timeouts_ms.len())];
            w.clients.push(Client::new(k, clock, timeout));
            let at = w.rng.u64(0..500 * MS);
            w.schedule(at, Ev::ClientTimer(k, 0, Timer::Reconnect));
        }
        w.schedule(0, Ev::Fault);
        w.schedule(w.cfg.faulty_for, Ev::EndFaults);
        w
    }

    pub fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    /// Runs until the end of the quiet period; false when a property broke.
    pub fn run(&mut self, max_steps: u64) -> bool {
        let end = self.cfg.faulty_for + self.cfg.quiet_for;
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.at > end || self.counts.steps >= max_steps {
                break;
            }
            self.now = s.at;
            self.counts.steps += 1;
            self.dispatch(s.ev);
            if !self.checker.violations.is_empty() {
                return false;
            }
        }
        self.final_checks();
        self.counts.double_answers = self.checker.double_answers.len() as u64;
        self.checker.violations.is_empty()
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(c, inc) => self.coord_tick(c, inc),
            Ev::Pump(c, inc, feed) => self.pump(c, inc, feed),
            Ev::ToCoord(c, inc, msg) => self.coord_input(c, inc, msg),
            Ev::WriteLand { c, inc, write } => self.write_land(c, inc, write),
            Ev::WriteDone {
                c,
                inc,
                name,
                result,
            } => self.write_done(c, inc, name, result),
            Ev::ReadAt { c, inc, name } => self.read_at(c, inc, name),
            Ev::ReadDone {
                c,
                inc,
                name,
                current,
            } => self.read_done(c, inc, name, current),
            Ev::DeleteAt(seq) => self.stream.delete(seq),
            Ev::Expire { key, revision } => self.expire(&key, revision),
            Ev::Restart(c) => self.restart(c),
            Ev::PartitionsOpened {
                c,
                inc,
                owned,
                generation,
            } => self.partitions_opened(c, inc, owned, generation),
            Ev::ProofDone(c, inc, sent) => self.proof_done(c, inc, sent),
            Ev::ToClient(k, gen, msg) => self.client_input(k, gen, msg),
            Ev::ClientTimer(k, gen, t) => self.client_timer(k, gen, t),
            Ev::Store {
                client,
                gen,
                id,
                subject,
                body,
                msg_id,
            } => self.store(client, gen, id, &subject, &body, &msg_id),
            Ev::Fault => self.fault(),
            Ev::Heal(server) => {
                if self.isolated.is_some_and(|(s, _)| s == server) {
                    trace!(self, "heal: server {server} reconnected");
                    self.isolated = None;
                }
            }
            Ev::EndFaults => {
                trace!(self, "faults end");
                self.faulty = false;
                self.isolated = None;
                for k in 0..self.clients.len() {
                    self.begin_final(k);
                }
            }
        }
    }

    // ---- network --------------------------------------------------------

    pub fn server_of(&self, p: Proc) -> usize {
        match p {
            Proc::Coord(c) => self.coords[c].server,
            Proc::Client(k) => self.clients[k].server,
        }
    }

    /// A client whose connection is down (between a drop and the
    /// reconnect) sends and receives nothing.
    pub fn offline(&self, p: Proc) -> bool {
        matches!(p, Proc::Client(k) if self.clients[k].offline_until > self.now)
    }

    fn cut(&self, a: Proc, b: Proc) -> bool {
        self.offline(a)
            || self.offline(b)
            || self
                .isolated
                .is_some_and(|(s, _)| (self.server_of(a) == s) != (self.server_of(b) == s))
    }

    /// Whether `p` reaches JetStream (its quorum is on the majority).
    pub fn js_reachable(&self, p: Proc) -> bool {
        !self.offline(p) && self.isolated.is_none_or(|(s, _)| self.server_of(p) != s)
    }

    /// When `p` reaches JetStream again.
    pub fn js_back_at(&self) -> u64 {
        self.isolated.map_or(self.now, |(_, until)| until)
    }

    /// A delay of one hop: mostly under 2 ms, sometimes held up.
    pub fn delay(&mut self) -> u64 {
        if self.faulty && self.rng.f64() < self.cfg.faults.slow {
            self.rng.u64(20 * MS..300 * MS)
        } else {
            self.rng.u64(100..2 * MS)
        }
    }

    /// Sends a core NATS message: the arrival times of its copies (none
    /// when lost or cut by a partition).
    pub fn core(&mut self, from: Proc, to: Proc) -> Vec<u64> {
        if self.cut(from, to) {
            return Vec::new();
        }
        if self.faulty && self.rng.f64() < self.cfg.faults.loss {
            self.counts.lost += 1;
            return Vec::new();
        }
        let mut at = vec![self.now + self.delay()];
        if self.faulty && self.rng.f64() < self.cfg.faults.dup {
            self.counts.duplicated += 1;
            at.push(self.now + self.delay());
        }
        at
    }

    /// True with probability `p` while faults run.
    pub fn chance(&mut self, p: f64) -> bool {
        self.faulty && p > 0.0 && self.rng.f64() < p
    }

    // ---- faults ---------------------------------------------------------

    fn fault(&mut self) {
        if !self.faulty {
            return;
        }
        let f = self.cfg.faults.clone();
        // One fault event a second, each kind at its own rate.
        let p = |every: u64| {
            if every == 0 {
                0.0
            } else {
                SEC as f64 / every as f64
            }
        };
        if self.rng.f64() < p(f.crash_every) {
            let c = self.rng.usize(0..self.coords.len());
            self.crash(c);
        }
        if self.rng.f64() < p(f.reconnect_every) {
            let k = self.rng.usize(0..self.clients.len());
            self.reconnect(k);
        }
        if self.isolated.is_none() && self.rng.f64() < p(f.partition_every) {
            let s = self.rng.usize(0..SERVERS);
            let until = self.now + self.rng.u64(300 * MS..5 * SEC);
            trace!(self, "partition: server {s} cut off until {}ms", until / MS);
            self.counts.partitions += 1;
            self.isolated = Some((s, until));
            self.schedule(until, Ev::Heal(s));
        }
        self.schedule(self.now + SEC, Ev::Fault);
    }

    fn final_checks(&mut self) {
        for k in 0..self.clients.len() {
            if let Some(v) = self.clients[k].unfinished() {
                self.checker.violations.push(format!(
                    "liveness: client {k} after {} s without faults: {v}",
                    self.cfg.quiet_for / SEC
                ));
            }
        }
        for (key, e) in &self.bucket.keys {
            if let (Some(r), 0) = (&e.record, self.checker.holders(key)) {
                self.checker.violations.push(format!(
                    "liveness: {key} still held by {} (revision {}) at the end, and nobody believes it",
                    r.session, e.revision
                ));
            }
        }
    }

    /// The trace's last `n` lines.
    pub fn trace_tail(&self, n: usize) -> String {
        let t = self.trace.as_deref().unwrap_or_default();
        t[t.len().saturating_sub(n)..].join("\n")
    }

    /// The trace's last `n` lines that name a session or key of `about`
    /// (faults included), heartbeats and request reads left out.
    pub fn trace_about(&self, about: &str, n: usize) -> String {
        let words: Vec<&str> = about
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .filter(|w| (w.starts_with('s') && w.contains('g')) || w.starts_with("acct."))
            .collect();
        let t = self.trace.as_deref().unwrap_or_default();
        let hit = |l: &&String| {
            let fault = [
                "crashes",
                "starts",
                "partition",
                "heal",
                "reconnects",
                "advisory",
            ]
            .iter()
            .any(|f| l.contains(f));
            fault
                || (!l.contains("heartbeat")
                    && !l.contains(" reads request ")
                    && words.iter().any(|w| l.contains(w)))
        };
        let lines: Vec<&String> = t.iter().filter(hit).collect();
        let tail = &lines[lines.len().saturating_sub(n)..];
        tail.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn instant(&self, clock: &Clock) -> Instant {
        self.base + Duration::from_micros(clock.local(self.now))
    }
}
