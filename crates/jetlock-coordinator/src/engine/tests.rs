//! The state machine against a simulated bucket: CAS writes applied in
//! order, answers collected per session.

use super::*;
use crate::hearing;
use crate::limits::PrefixLimits;
use proptest::prelude::*;
use serde_json::json;

/// A heartbeat naming the default timeout, as the Rust client sends.
fn hb() -> Heartbeat {
    Heartbeat {
        timeout_ms: Some(900),
        ..Heartbeat::default()
    }
}

/// A bucket of one stream: revisions are stream sequences, CAS by expected
/// revision, like the real one.
#[derive(Default)]
struct Bucket {
    seq: u64,
    keys: HashMap<String, Current>,
    /// What each key's last message says about its writer.
    stamps: HashMap<String, Stamp>,
}

impl Bucket {
    fn apply(&mut self, w: &Write) -> WriteResult {
        let current = self
            .keys
            .get(w.name.key())
            .cloned()
            .unwrap_or(Current::Vacant { revision: 0 });
        if revision_of(&current) != w.expected {
            return WriteResult::Conflict;
        }
        self.seq += 1;
        let next = match &w.kind {
            WriteKind::Put { record, .. } => Current::Held {
                revision: self.seq,
                record: record.clone(),
            },
            WriteKind::Release => Current::Vacant { revision: self.seq },
        };
        self.keys.insert(w.name.key().to_owned(), next);
        let stamp = Stamp {
            write_id: Some(w.id.clone()),
            applied: w.applied,
        };
        self.stamps.insert(w.name.key().to_owned(), stamp);
        WriteResult::Written { revision: self.seq }
    }

    /// The key's last message, as a read returns it.
    fn read(&self, key: &str) -> (Current, Stamp) {
        let c = self.keys.get(key).cloned();
        let c = c.unwrap_or(Current::Vacant { revision: 0 });
        (c, self.stamps.get(key).cloned().unwrap_or_default())
    }
}

struct Sim {
    engine: Engine,
    bucket: Bucket,
    now: Instant,
    seq: u64,
    answers: Vec<(String, Answer)>,
    deleted: Vec<u64>,
    events: Vec<Event>,
    /// Whether the bucket watch shows each write too, and whether before
    /// or after the write's own result (`None`: it never does).
    watch_first: Option<bool>,
    /// When set, reads are kept here unanswered instead of answered at once.
    reads: Option<Vec<LockName>>,
    /// Whether proof beats reach a quorum (false: our server lost its
    /// routes, or hangs).
    quorum: bool,
    /// Proof beats were sent up to here.
    proved: Instant,
    /// How many of the next writes land but report `Failed` (a lost ack).
    lose_acks: u32,
    /// Every request sent: (stream sequence, subject, body).
    sent: Vec<(u64, String, Vec<u8>)>,
    /// Heartbeat answers sent: (reply subject, answer).
    acks: Vec<(String, HeartbeatAck)>,
    /// Questions to the other coordinators before deaths: (round, sessions).
    asked: Vec<(u64, Vec<String>)>,
}

impl Sim {
    fn new() -> Self {
        let mut sim = Sim::starting();
        sim.engine.set_ready(sim.now);
        sim.engine.proof_acked(sim.now, sim.now, sim.now);
        sim
    }

    /// A coordinator still reading before it is ready.
    fn starting() -> Self {
        let engine = Engine::new("me".into(), EngineConfig::default());
        let now = Instant::now();
        Sim {
            engine,
            bucket: Bucket::default(),
            now,
            seq: 0,
            answers: Vec::new(),
            deleted: Vec::new(),
            events: Vec::new(),
            watch_first: None,
            reads: None,
            quorum: true,
            proved: now,
            lose_acks: 0,
            sent: Vec::new(),
            acks: Vec::new(),
            asked: Vec::new(),
        }
    }

    /// Proof beats every 100 ms up to now, stored by the quorum if it is
    /// reachable.
    fn prove(&mut self) {
        while self.proved + hearing::PROOF_INTERVAL <= self.now {
            self.proved += hearing::PROOF_INTERVAL;
            if self.quorum {
                self.engine.proof_acked(self.proved, self.proved, self.now);
            }
        }
    }

    /// Carries out actions until none are left (writes land at once).
    fn settle(&mut self) {
        loop {
            let actions = self.engine.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Answer { session, answer } => self.answers.push((session, answer)),
                    Action::Write(w) => {
                        let r = self.bucket.apply(&w);
                        let (seen, stamp) = self.bucket.read(w.name.key());
                        let watch = |sim: &mut Sim| {
                            if let WriteResult::Written { .. } = r {
                                let (c, stamp) = (seen.clone(), stamp.clone());
                                sim.engine
                                    .observed_change(&w.name, c, false, stamp, sim.now);
                            }
                        };
                        if self.watch_first == Some(true) {
                            watch(self);
                        }
                        let r = match r {
                            WriteResult::Written { .. } if self.lose_acks > 0 => {
                                self.lose_acks -= 1;
                                WriteResult::Failed
                            }
                            r => r,
                        };
                        self.engine.written(&w.name, r, self.now);
                        if self.watch_first == Some(false) {
                            watch(self);
                        }
                    }
                    Action::Read { name } if self.reads.is_some() => {
                        self.reads.as_mut().expect("checked").push(name)
                    }
                    Action::Read { name } => {
                        let read = self.bucket.read(name.key());
                        self.engine.read_done(&name, Some(read), self.now);
                    }
                    Action::Delete { seq } => self.deleted.push(seq),
                    Action::Event(e) => self.events.push(*e),
                    Action::Prove => self.prove(),
                    Action::HeartbeatAck { reply, ack } => self.acks.push((reply, ack)),
                    Action::AskHeard { round, sessions } => self.asked.push((round, sessions)),
                }
            }
        }
    }

    fn send(&mut self, op: &str, session: &str, body: serde_json::Value) -> u64 {
        self.seq += 1;
        let subject = format!("jetlock.req.{op}.{session}");
        let body = serde_json::to_vec(&body).unwrap();
        self.engine
            .request(self.seq, &subject, &body, Duration::ZERO, self.now);
        self.sent.push((self.seq, subject, body));
        self.settle();
        self.seq
    }

    fn acquire(&mut self, session: &str, id: &str, wait_ms: u64) -> u64 {
        self.engine.heartbeat(session, hb(), self.now);
        self.send(
            "acquire",
            session,
            json!({"v": 1, "id": id, "key": "k", "wait_ms": wait_ms}),
        )
    }

    fn release(&mut self, session: &str, id: &str, token: u64) {
        self.send(
            "release",
            session,
            json!({"v": 1, "id": id, "key": "k", "token": token}),
        );
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.prove();
        self.engine.tick(self.now);
        self.settle();
    }

    /// Final answers to `session`, as (re, answer).
    fn answers_to(&self, session: &str) -> Vec<&Answer> {
        self.answers
            .iter()
            .filter(|(s, _)| s == session)
            .map(|(_, a)| a)
            .collect()
    }

    fn grant_token(&self, session: &str, id: &str) -> Option<u64> {
        self.answers_to(session).into_iter().find_map(|a| match a {
            Answer::Granted { re, token, .. } if re == id => Some(*token),
            _ => None,
        })
    }

    fn error_code(&self, session: &str, id: &str) -> Option<ErrorCode> {
        self.answers_to(session).into_iter().find_map(|a| match a {
            Answer::Error {
                re: Some(re), code, ..
            } if re == id => Some(*code),
            _ => None,
        })
    }

    fn holder(&self) -> Option<String> {
        match self.bucket.keys.get("k") {
            Some(Current::Held { record, .. }) => Some(record.session.clone()),
            _ => None,
        }
    }
}

#[test]
fn waiters_are_granted_in_arrival_order_by_one_write_each() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let mut token = sim.grant_token("h", "a").expect("free lock granted");
    for i in 0..5 {
        sim.acquire(&format!("w{i}"), "a", 60_000);
    }
    assert!(
        sim.answers_to("h")
            .iter()
            .any(|a| matches!(a, Answer::Contended { waiters: 1, .. })),
        "the holder hears somebody waits"
    );
    let writes_before = sim.bucket.seq;
    let mut holder = "h".to_owned();
    for i in 0..5 {
        sim.release(&holder, "r", token);
        holder = format!("w{i}");
        let next = sim.grant_token(&holder, "a").expect("next waiter granted");
        assert!(next > token);
        token = next;
        assert_eq!(sim.holder().as_deref(), Some(holder.as_str()));
    }
    // Handoffs: one write per owner change, never a vacant key between.
    assert_eq!(sim.bucket.seq - writes_before, 5);
}

#[test]
fn a_try_lock_of_a_free_key_waits_for_the_read_that_learns_it_is_free() {
    let mut sim = Sim::new();
    sim.acquire("a", "1", 0);
    let token = sim.grant_token("a", "1").expect("free lock granted");
    sim.release("a", "2", token);
    // Idle, the key is forgotten: the next grant expects revision 0, loses
    // to the release marker, and the key is read again.
    sim.advance(Duration::from_millis(20));
    sim.reads = Some(Vec::new());
    sim.acquire("b", "1", 0);
    let reads = sim.reads.take().expect("set above");
    assert_eq!(reads.len(), 1, "the key is read after the lost write");
    // The try-lock's deadline (now) passes on the next ticks, before the
    // read answers.
    sim.advance(Duration::from_millis(20));
    sim.advance(Duration::from_millis(20));
    assert_eq!(sim.error_code("b", "1"), None, "no busy for a free lock");
    for name in reads {
        let read = sim.bucket.read(name.key());
        sim.engine.read_done(&name, Some(read), sim.now);
    }
    sim.settle();
    assert!(sim.grant_token("b", "1").is_some_and(|t| t > token));
    assert_eq!(sim.holder().as_deref(), Some("b"));
}

#[test]
fn timed_out_and_dead_waiters_are_skipped() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("short", "a", 100);
    sim.acquire("dead", "a", 60_000);
    sim.acquire("late", "a", 60_000);
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.error_code("short", "a"), Some(ErrorCode::Timeout));
    // `dead` stops heartbeating; `h` and `late` keep going.
    for _ in 0..10 {
        sim.engine.heartbeat("h", hb(), sim.now);
        sim.engine.heartbeat("late", hb(), sim.now);
        sim.advance(Duration::from_millis(200));
    }
    sim.release("h", "r", token);
    assert!(sim.grant_token("dead", "a").is_none());
    assert!(sim.grant_token("late", "a").is_some());
}

#[test]
fn a_dead_holders_lock_goes_to_the_next_waiter() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        reconnect_grace: Duration::from_millis(100),
        ..EngineConfig::default()
    });
    sim.acquire("h", "a", 0);
    sim.acquire("w", "a", 60_000);
    let conn = ConnId {
        server_id: "S".into(),
        cid: 7,
    };
    sim.engine.heartbeat(
        "h",
        Heartbeat {
            conn: Some(conn.clone()),
            ..hb()
        },
        sim.now,
    );
    sim.engine.disconnected(&conn, "Client Closed", sim.now);
    sim.settle();
    // Asked to show it reconnected; it does not within the grace.
    assert!(sim
        .answers_to("h")
        .iter()
        .any(|a| matches!(a, Answer::Probe { .. })));
    assert!(sim.grant_token("w", "a").is_none(), "not before the grace");
    sim.advance(Duration::from_millis(150));
    assert!(sim.grant_token("w", "a").is_some());
    assert_eq!(sim.holder().as_deref(), Some("w"));
    // The dead session stays dead.
    sim.send("acquire", "h", json!({"v": 1, "id": "b", "key": "k"}));
    assert_eq!(sim.error_code("h", "b"), Some(ErrorCode::SessionExpired));
}

#[test]
fn a_reconnect_within_the_grace_keeps_the_session_and_its_lock() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        reconnect_grace: Duration::from_millis(100),
        ..EngineConfig::default()
    });
    sim.acquire("h", "a", 0);
    sim.acquire("w", "a", 60_000);
    let conn = |cid| ConnId {
        server_id: "S".into(),
        cid,
    };
    let on = |cid| Heartbeat {
        conn: Some(conn(cid)),
        ..hb()
    };
    sim.engine.heartbeat("h", on(7), sim.now);
    // async-nats reconnects: the server reports the old connection closed
    // by the client; the probe brings a heartbeat on the new one.
    sim.engine.disconnected(&conn(7), "Client Closed", sim.now);
    sim.settle();
    sim.advance(Duration::from_millis(5));
    let ack = sim.engine.heartbeat("h", on(8), sim.now).expect("answered");
    assert!(ack.alive);
    assert_eq!(ack.grace_ms, Some(100));
    for _ in 0..10 {
        sim.advance(Duration::from_millis(100));
        sim.engine.heartbeat("h", on(8), sim.now);
        sim.engine.heartbeat("w", hb(), sim.now);
    }
    assert!(!sim.events.iter().any(|e| e.kind == EventKind::SessionDown));
    assert_eq!(sim.holder().as_deref(), Some("h"));
    assert!(sim.grant_token("w", "a").is_none());
}

#[test]
fn only_the_holder_with_its_token_releases() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("x", "a", 0);
    assert_eq!(sim.error_code("x", "a"), Some(ErrorCode::Busy));
    sim.release("x", "r1", token);
    assert_eq!(sim.error_code("x", "r1"), Some(ErrorCode::NotHolder));
    sim.release("h", "r2", token - 1);
    assert_eq!(sim.error_code("h", "r2"), Some(ErrorCode::StaleToken));
    sim.release("h", "r3", token + 1);
    assert_eq!(sim.error_code("h", "r3"), Some(ErrorCode::StaleToken));
    assert_eq!(sim.holder().as_deref(), Some("h"));
    // A forged owner does not make another session's acquire reentrant.
    sim.send(
        "acquire",
        "x",
        json!({"v": 1, "id": "f", "key": "k", "owner": "h"}),
    );
    assert_eq!(sim.error_code("x", "f"), Some(ErrorCode::Busy));
}

#[test]
fn duplicate_request_ids_do_not_acquire_twice() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let writes = sim.bucket.seq;
    sim.acquire("h", "a", 0);
    assert_eq!(sim.error_code("h", "a"), Some(ErrorCode::Duplicate));
    assert_eq!(sim.bucket.seq, writes, "no write for the duplicate");
}

#[test]
fn reentrant_acquire_counts_holds() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("h", "b", 0);
    assert!(sim.answers_to("h").iter().any(
        |a| matches!(a, Answer::Granted { re, holds: 2, token: t, .. } if re == "b" && *t == token)
    ));
    sim.release("h", "r1", token);
    assert_eq!(sim.holder().as_deref(), Some("h"), "one hold remains");
    sim.release("h", "r2", token);
    assert_eq!(sim.holder(), None);
}

#[test]
fn revocation_notifies_then_hands_over_after_the_grace() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let token = sim.grant_token("h", "a").unwrap();
    sim.acquire("w", "a", 60_000);
    sim.send(
        "revoke",
        "op",
        json!({"v": 1, "id": "v", "key": "k", "grace_ms": 500}),
    );
    assert!(sim
        .answers_to("h")
        .iter()
        .any(|a| matches!(a, Answer::RevokeNotice { token: t, .. } if *t == token)));
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.engine.heartbeat("w", hb(), sim.now);
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.holder().as_deref(), Some("h"), "grace not over yet");
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.engine.heartbeat("w", hb(), sim.now);
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.holder().as_deref(), Some("w"));
    assert!(sim.answers_to("h").iter().any(|a| matches!(
        a,
        Answer::Lost {
            cause: LostCause::Revoked,
            ..
        }
    )));
}

/// Adds coordinators until one of them owns key `k`; returns its id.
fn let_another_coordinator_own_k(sim: &mut Sim) -> String {
    let key = LockName::new("k").unwrap();
    for n in 0.. {
        let id = format!("c{n}");
        let beat = |leaving| CoordinatorBeat {
            v: 1,
            id: id.clone(),
            conn: None,
            now_ms: None,
            leaving,
        };
        sim.engine.coordinator_beat(beat(false), sim.now);
        if sim.engine.ring().owner(key.key()) == id {
            sim.settle();
            sim.answers.clear();
            return id;
        }
        sim.engine.coordinator_beat(beat(true), sim.now);
    }
    unreachable!()
}

fn leave(sim: &mut Sim, id: &str) {
    coordinator_beat(sim, id, true);
}

/// A heartbeat of coordinator `id` (its last, when `leaving`).
fn coordinator_beat(sim: &mut Sim, id: &str, leaving: bool) {
    sim.engine.coordinator_beat(
        CoordinatorBeat {
            v: 1,
            id: id.to_owned(),
            conn: None,
            now_ms: None,
            leaving,
        },
        sim.now,
    );
    sim.settle();
}

#[test]
fn bad_requests_are_answered_and_change_nothing() {
    let mut sim = Sim::new();
    sim.seq += 1;
    sim.engine.request(
        sim.seq,
        "jetlock.req.acquire.s",
        b"{nope",
        Duration::ZERO,
        sim.now,
    );
    sim.seq += 1;
    sim.engine.request(
        sim.seq,
        "jetlock.req.acquire.s",
        br#"{"v":9,"id":"x","key":"k"}"#,
        Duration::ZERO,
        sim.now,
    );
    sim.seq += 1;
    // Unreadable subject: nobody to answer, counted.
    sim.engine.request(
        sim.seq,
        "jetlock.req.acquire.a.b.c.d.e",
        br#"{"v":1,"id":"x","key":"k"}"#,
        Duration::ZERO,
        sim.now,
    );
    sim.settle();
    let codes: Vec<_> = sim
        .answers_to("s")
        .iter()
        .map(|a| match a {
            Answer::Error { code, .. } => *code,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![ErrorCode::BadRequest, ErrorCode::UnsupportedVersion]
    );
    assert_eq!(sim.engine.stats.dropped, 1);
    assert_eq!(sim.deleted, vec![1, 2, 3], "all three leave the stream");
    assert_eq!(sim.bucket.seq, 0);
}

#[test]
fn a_dropped_request_is_counted_by_the_coordinator_that_deletes_it() {
    // A coordinator that does not act yet (still catching up) neither
    // deletes nor counts: the one that deletes it counts it, so the metric
    // summed over coordinators counts each drop once.
    let mut waiting = Engine::new("me".into(), EngineConfig::default());
    let now = Instant::now();
    for subject in ["jetlock.req.steal.s", "jetlock.req.acquire.*"] {
        waiting.request(1, subject, b"{}", Duration::ZERO, now);
    }
    assert_eq!(waiting.stats.dropped, 0);
    assert!(waiting.take_actions().is_empty());

    let mut sim = Sim::new();
    for subject in ["jetlock.req.steal.s", "jetlock.req.acquire.*"] {
        sim.seq += 1;
        sim.engine
            .request(sim.seq, subject, b"{}", Duration::ZERO, sim.now);
    }
    sim.settle();
    assert_eq!(sim.engine.stats.dropped, 2);
    assert_eq!(sim.deleted, vec![1, 2]);
    assert!(sim.answers.is_empty(), "nobody is answered");
}

proptest! {
    /// Whatever mix of waits, cancels, timeouts and releases: grants follow
    /// arrival order, and no lock ever has two holders (the bucket's CAS
    /// would refuse, but the machine must not even try).
    #[test]
    fn grants_follow_arrival_order(ops in proptest::collection::vec(0u8..5, 1..60)) {
        let mut sim = Sim::new();
        let mut arrivals: Vec<(String, u64)> = Vec::new();
        let mut n = 0;
        for op in ops {
            match op {
                0 | 1 => {
                    n += 1;
                    let s = format!("s{n}");
                    let wait = if op == 0 { 60_000 } else { 150 };
                    sim.acquire(&s, "a", wait);
                    arrivals.push((s, n));
                }
                2 => {
                    // The holder releases.
                    if let Some(Current::Held { revision, record }) = sim.bucket.keys.get("k").cloned() {
                        let token = record.token_at(revision);
                        sim.release(&record.session, &format!("r{}", sim.seq), token);
                    }
                }
                3 => {
                    // The oldest waiter cancels.
                    if let Some((s, _)) = arrivals.iter().find(|(s, _)| sim.grant_token(s, "a").is_none() && sim.error_code(s, "a").is_none()) {
                        let s = s.clone();
                        sim.send("cancel", &s, json!({"v":1,"id":"c","key":"k","target":"a"}));
                    }
                }
                _ => {
                    for (s, _) in &arrivals {
                        sim.engine.heartbeat(s, hb(), sim.now);
                    }
                    sim.advance(Duration::from_millis(100));
                }
            }
        }
        // Grant order (by token) must be arrival order.
        let mut granted: Vec<(u64, u64)> = arrivals
            .iter()
            .filter_map(|(s, n)| sim.grant_token(s, "a").map(|t| (t, *n)))
            .collect();
        granted.sort();
        let order: Vec<u64> = granted.iter().map(|(_, n)| *n).collect();
        let mut sorted = order.clone();
        sorted.sort();
        prop_assert_eq!(order, sorted);
        // Every request got exactly one final answer, or still waits.
        for (s, _) in &arrivals {
            let finals = sim
                .answers_to(s)
                .iter()
                .filter(|a| a.re() == Some("a") && a.is_final())
                .count();
            prop_assert!(finals <= 1, "{} answered {} times", s, finals);
        }
    }
}

mod events;
mod limits;
mod partitions;
mod proofs;
mod replays;
mod takeover;
mod unstored;
