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
        let mut engine = Engine::new("me".into(), EngineConfig::default());
        let now = Instant::now();
        engine.set_ready(now);
        engine.proof_acked(now, now, now);
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
    sim.engine.coordinator_beat(
        CoordinatorBeat {
            v: 1,
            id: id.to_owned(),
            conn: None,
            now_ms: None,
            leaving: true,
        },
        sim.now,
    );
    sim.settle();
}

#[test]
fn a_release_the_dead_owner_carried_out_is_answered_released_after_takeover() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    let name = LockName::new("k").unwrap();
    let record = |session: &str| LockRecord {
        owner: session.into(),
        session: session.into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds: 1,
        token: 0,
    };
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 1,
            record: record("h"),
        },
        sim.now,
    );
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.release("h", "r", 1);
    // The owner handed the lock to w, then died before answering h.
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 2,
            record: record("w"),
        },
        sim.now,
    );
    leave(&mut sim, &other);
    let answers = sim.answers_to("h");
    assert!(
        matches!(answers.as_slice(), [Answer::Released { re, .. }] if re == "r"),
        "{answers:?}"
    );
}

#[test]
fn a_coordinator_that_does_not_own_the_key_only_mirrors() {
    let mut sim = Sim::new();
    // Find a ring where "other" owns key k.
    let mut other = 0;
    loop {
        let id = format!("c{other}");
        sim.engine.coordinator_beat(
            CoordinatorBeat {
                v: 1,
                id: id.clone(),
                conn: None,
                now_ms: None,
                leaving: false,
            },
            sim.now,
        );
        if sim.engine.ring().owner(LockName::new("k").unwrap().key()) == id {
            break;
        }
        sim.engine.coordinator_beat(
            CoordinatorBeat {
                v: 1,
                id,
                conn: None,
                now_ms: None,
                leaving: true,
            },
            sim.now,
        );
        other += 1;
    }
    sim.settle();
    sim.answers.clear();
    sim.acquire("h", "a", 60_000);
    assert!(sim.answers.is_empty(), "a mirror does not answer");
    assert_eq!(sim.bucket.seq, 0, "a mirror does not write");
    assert_eq!(sim.engine.queue_len(LockName::new("k").unwrap().key()), 1);
    // The owner leaves: this coordinator takes the key and grants.
    sim.engine.coordinator_beat(
        CoordinatorBeat {
            v: 1,
            id: format!("c{other}"),
            conn: None,
            now_ms: None,
            leaving: true,
        },
        sim.now,
    );
    sim.settle();
    assert!(sim.grant_token("h", "a").is_some());
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

/// (kind, token, session) of the lock events so far.
fn lock_events(sim: &Sim) -> Vec<(EventKind, Option<u64>, String)> {
    sim.events
        .iter()
        .filter(|e| e.kind.is_lock())
        .map(|e| (e.kind, e.token, e.session.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn each_hold_is_reported_once_with_its_cause_whenever_the_watch_shows_it() {
    for watch_first in [None, Some(true), Some(false)] {
        let mut sim = Sim::new();
        sim.watch_first = watch_first;
        sim.acquire("h", "a", 0);
        let t1 = sim.grant_token("h", "a").unwrap();
        sim.acquire("w", "a", 60_000);
        sim.advance(Duration::from_millis(40));
        sim.release("h", "r1", t1);
        let t2 = sim.grant_token("w", "a").unwrap();
        sim.release("w", "r2", t2);
        use EventKind::*;
        let (h, w) = (String::from("h"), String::from("w"));
        assert_eq!(
            lock_events(&sim),
            [
                (Granted, Some(t1), h.clone()),
                (Released, Some(t1), h),
                (Granted, Some(t2), w.clone()),
                (Released, Some(t2), w),
            ],
            "watch_first {watch_first:?}"
        );
        let grants: Vec<&Event> = sim.events.iter().filter(|e| e.kind == Granted).collect();
        assert_eq!(grants[0].handoff, Some(false));
        assert_eq!(grants[1].handoff, Some(true), "one write from h to w");
        assert_eq!(grants[1].waited_ms, Some(40));
        assert_eq!(grants[1].lock.as_deref(), Some("k"));
    }
}

#[test]
fn grants_and_expiries_nobody_asked_us_for_are_reported_from_the_bucket() {
    let mut sim = Sim::new();
    let name = LockName::new("k").unwrap();
    let record = LockRecord {
        owner: "o".into(),
        session: "direct".into(),
        acquired_ms: 0,
        lease_ms: 10_000,
        holds: 1,
        token: 0,
    };
    sim.engine.observed(
        &name,
        Current::Held {
            revision: 7,
            record,
        },
        sim.now,
    );
    let marker = Current::Vacant { revision: 8 };
    sim.engine
        .observed_change(&name, marker, true, Stamp::default(), sim.now);
    sim.settle();
    let events: Vec<&Event> = sim.events.iter().filter(|e| e.kind.is_lock()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Granted);
    assert_eq!(events[0].waited_ms, None, "not queued here");
    assert_eq!(events[1].kind, EventKind::Expired);
    assert_eq!(events[1].cause.as_deref(), Some("lease"));
    assert_eq!(events[1].token, Some(7));
}

#[test]
fn revocations_and_session_deaths_name_their_cause() {
    let mut sim = Sim::new();
    sim.acquire("h", "a", 0);
    let t1 = sim.grant_token("h", "a").unwrap();
    sim.send(
        "revoke",
        "ops",
        json!({"v": 1, "id": "v", "key": "k", "grace_ms": 0, "reason": "stuck"}),
    );
    let revoked = sim.events.iter().find(|e| e.kind == EventKind::Revoked);
    let revoked = revoked.expect("a revoked event");
    assert_eq!(revoked.token, Some(t1));
    assert_eq!(revoked.by.as_deref(), Some("ops"));
    assert_eq!(revoked.reason.as_deref(), Some("stuck"));
    sim.acquire("x", "b", 0);
    let t2 = sim.grant_token("x", "b").unwrap();
    sim.engine.heartbeat(
        "x",
        Heartbeat {
            leaving: true,
            ..hb()
        },
        sim.now,
    );
    sim.settle();
    let last = sim.events.iter().rfind(|e| e.kind.is_lock()).unwrap();
    assert_eq!(
        (last.kind, last.token, last.cause.as_deref()),
        (EventKind::Expired, Some(t2), Some("session"))
    );
    assert!(sim
        .events
        .iter()
        .any(|e| e.kind == EventKind::SessionDown && e.subject.as_deref() == Some("x")));
}

#[test]
fn policies_refuse_long_leases_and_long_queues_and_change_nothing() {
    let mut sim = Sim::new();
    let mut cfg = EngineConfig::default();
    cfg.policies.push((
        LockName::new("k").unwrap(),
        PrefixLimits {
            max_ttl_ms: Some(2000),
            max_waiters: Some(1),
            ..PrefixLimits::default()
        },
    ));
    sim.engine.set_config(cfg);
    sim.engine.heartbeat("h", hb(), sim.now);
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "long", "key": "k", "ttl_ms": 5000}),
    );
    assert_eq!(sim.error_code("h", "long"), Some(ErrorCode::InvalidTtl));
    assert_eq!(sim.bucket.seq, 0, "nothing written");
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "a", "key": "k", "ttl_ms": 2000}),
    );
    assert!(sim.grant_token("h", "a").is_some());
    for w in ["w1", "w2"] {
        let body = json!({"v": 1, "id": "a", "key": "k", "ttl_ms": 2000, "wait_ms": 60_000});
        sim.send("acquire", w, body);
    }
    assert_eq!(sim.error_code("w1", "a"), None, "w1 waits");
    assert_eq!(sim.error_code("w2", "a"), Some(ErrorCode::QueueFull));
    assert_eq!(sim.engine.queue_len("k"), 1);
    // The holder's reentry is not a waiter.
    sim.send(
        "acquire",
        "h",
        json!({"v": 1, "id": "b", "key": "k", "ttl_ms": 2000}),
    );
    assert!(sim.grant_token("h", "b").is_some());
}

#[test]
fn a_departed_coordinator_is_reported_once_with_the_locks_taken_over() {
    let mut sim = Sim::new();
    let other = let_another_coordinator_own_k(&mut sim);
    sim.acquire("h", "a", 60_000); // mirrored: the other coordinator owns k
    sim.events.clear();
    leave(&mut sim, &other);
    let down: Vec<&Event> = sim
        .events
        .iter()
        .filter(|e| e.kind == EventKind::CoordinatorDown)
        .collect();
    assert_eq!(down.len(), 1, "{:?}", sim.events);
    assert_eq!(down[0].subject.as_deref(), Some(other.as_str()));
    assert_eq!(down[0].cause.as_deref(), Some("left"));
    let takeover = sim
        .events
        .iter()
        .find(|e| e.kind == EventKind::Takeover)
        .expect("a takeover event");
    assert_eq!(takeover.keys, Some(1), "key k moved here");
    assert_eq!(takeover.cause, Some(format!("{other} left")));
    assert!(
        sim.grant_token("h", "a").is_some(),
        "and the waiter is granted"
    );
}

#[test]
fn a_coordinator_that_cannot_prove_it_hears_the_quorum_declares_nobody_dead() {
    let mut sim = Sim::new();
    sim.acquire("s", "a1", 0);
    let token = sim.grant_token("s", "a1").expect("granted");
    // Our server lost its routes (its own echo still comes back): proof
    // beats are not stored, and the session's heartbeats on the other side
    // never arrive, for far longer than its timeout.
    sim.quorum = false;
    for _ in 0..100 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        !sim.events.iter().any(|e| e.kind == EventKind::SessionDown),
        "a coordinator without proof of hearing declared a session dead"
    );
    // Healed: the silence was ours, so the session counts as heard from
    // the first stored beat and has its whole timeout to heartbeat.
    sim.quorum = true;
    sim.advance(Duration::from_millis(50));
    sim.advance(Duration::from_millis(50));
    assert!(!sim.events.iter().any(|e| e.kind == EventKind::SessionDown));
    assert!(matches!(
        sim.bucket.keys.get("k"),
        Some(Current::Held { .. })
    ));
    sim.engine.heartbeat("s", hb(), sim.now);
    for _ in 0..10 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(!sim.events.iter().any(|e| e.kind == EventKind::SessionDown));
    // While we provably hear, silence is the session's: it dies.
    for _ in 0..40 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.events
            .iter()
            .any(|e| e.kind == EventKind::SessionDown && e.subject.as_deref() == Some("s")),
        "the silent session was declared dead once we heard the quorum (token {token})"
    );
}

#[test]
fn a_death_waits_for_a_proof_beat_sent_after_its_deadline() {
    let mut sim = Sim::new();
    sim.acquire("s", "a1", 0);
    // Time passes with no proof beat at all (none sent: the runtime is
    // slow), past the session's deadline.
    sim.now += Duration::from_millis(950);
    sim.engine.tick(sim.now);
    let actions = sim.engine.take_actions();
    assert!(
        actions.contains(&Action::Prove),
        "asks for proof: {actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Write(_))));
    // A beat sent before the gap and stored now proves nothing after it.
    let long_ago = sim.now - Duration::from_millis(900);
    sim.engine.proof_acked(long_ago, long_ago, sim.now);
    assert!(sim
        .engine
        .take_actions()
        .iter()
        .all(|a| !matches!(a, Action::Write(_))));
}
mod replays;
#[test]
fn only_the_preempt_subject_preempts_and_a_policy_can_forbid_it() {
    let mut sim = Sim::new();
    let t = sim.acquire("h", "a", 0);
    assert!(sim.grant_token("h", "a").is_some(), "h holds k ({t})");
    let notices = |sim: &Sim| {
        sim.answers
            .iter()
            .filter(|(s, a)| s == "h" && matches!(a, Answer::RevokeNotice { .. }))
            .count()
    };
    // On the acquire subject: refused, nothing queued, the holder untold.
    sim.engine.heartbeat("p", hb(), sim.now);
    let body = json!({"v": 1, "id": "p1", "key": "k", "wait_ms": 60_000, "preempt": true});
    sim.send("acquire", "p", body);
    assert_eq!(sim.error_code("p", "p1"), Some(ErrorCode::NotPermitted));
    assert_eq!(sim.engine.queue_len("k"), 0);
    assert_eq!(notices(&sim), 0);
    // A policy that forbids preemption refuses the preempt subject too.
    let mut cfg = EngineConfig::default();
    let forbid = PrefixLimits {
        preempt: Some(false),
        ..PrefixLimits::default()
    };
    cfg.policies.push((LockName::new("k").unwrap(), forbid));
    sim.engine.set_config(cfg);
    sim.send(
        "preempt",
        "p",
        json!({"v": 1, "id": "p2", "key": "k", "wait_ms": 60_000}),
    );
    assert_eq!(sim.error_code("p", "p2"), Some(ErrorCode::NotPermitted));
    assert_eq!(sim.engine.queue_len("k"), 0);
    assert_eq!(notices(&sim), 0);
    // Without the policy the preempt subject asks the holder to give way.
    sim.engine.set_config(EngineConfig::default());
    sim.send(
        "preempt",
        "p",
        json!({"v": 1, "id": "p3", "key": "k", "wait_ms": 60_000}),
    );
    assert_eq!(sim.error_code("p", "p3"), None);
    assert_eq!(notices(&sim), 1, "{:?}", sim.answers);
}

#[test]
fn session_quotas_refuse_more_locks_and_waits_and_count_again_after_releases() {
    let mut sim = Sim::new();
    let cfg = EngineConfig {
        max_locks_per_session: 2,
        max_waits_per_session: 1,
        ..EngineConfig::default()
    };
    sim.engine.set_config(cfg);
    for s in ["s", "h"] {
        sim.engine.heartbeat(s, hb(), sim.now);
    }
    let take = |sim: &mut Sim, s: &str, id: &str, key: &str, wait_ms: u64| {
        sim.send(
            "acquire",
            s,
            json!({"v": 1, "id": id, "key": key, "wait_ms": wait_ms}),
        );
    };
    take(&mut sim, "s", "a", "k1", 0);
    take(&mut sim, "s", "b", "k2", 0);
    let t1 = sim.grant_token("s", "a").expect("first lock");
    assert!(sim.grant_token("s", "b").is_some(), "second lock");
    take(&mut sim, "s", "c", "k3", 0);
    assert_eq!(sim.error_code("s", "c"), Some(ErrorCode::TooManyLocks));
    // A reentry is not a new lock.
    take(&mut sim, "s", "a2", "k1", 0);
    assert!(sim.grant_token("s", "a2").is_some());
    // Waits: one, then refused; nothing was queued for the refused one.
    take(&mut sim, "h", "x", "busy1", 0);
    take(&mut sim, "h", "y", "busy2", 0);
    let w = EngineConfig {
        max_locks_per_session: 0,
        max_waits_per_session: 1,
        ..EngineConfig::default()
    };
    sim.engine.set_config(w);
    take(&mut sim, "s", "w1", "busy1", 60_000);
    take(&mut sim, "s", "w2", "busy2", 60_000);
    assert_eq!(sim.error_code("s", "w1"), None, "waits");
    assert_eq!(sim.error_code("s", "w2"), Some(ErrorCode::TooManyWaits));
    assert_eq!(sim.engine.queue_len("busy2"), 0);
    // After releases the session is counted again (at most once a second).
    sim.engine.set_config(EngineConfig {
        max_locks_per_session: 2,
        max_waits_per_session: 0,
        ..EngineConfig::default()
    });
    for id in ["r1", "r2"] {
        sim.send(
            "release",
            "s",
            json!({"v": 1, "id": id, "key": "k1", "token": t1}),
        );
    }
    sim.now += Duration::from_secs(1);
    sim.engine.heartbeat("s", hb(), sim.now);
    take(&mut sim, "s", "d", "k3", 0);
    assert!(
        sim.grant_token("s", "d").is_some(),
        "{:?}",
        sim.error_code("s", "d")
    );
}

#[test]
fn a_coordinator_that_cannot_prove_it_hears_the_quorum_confirms_no_session() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        confirm_with_proof: true,
        ..EngineConfig::default()
    });
    // Cut off with the client's server: its heartbeats arrive here, and
    // nowhere else.
    sim.quorum = false;
    sim.engine.heartbeat_to("s", hb(), "r1".into(), sim.now);
    sim.settle();
    for _ in 0..25 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.acks.is_empty(),
        "answered alive without proof of hearing"
    );
    // Healed: a heartbeat read once the new span of hearing is older than
    // the longest gap is answered with the first beat after it; the one
    // from the cut is not (a client has long heartbeated again), nor one
    // read right after the heal (it may have been sent during the cut).
    sim.quorum = true;
    sim.engine.heartbeat_to("s", hb(), "r-heal".into(), sim.now);
    for _ in 0..4 {
        sim.advance(Duration::from_millis(50));
    }
    assert!(
        sim.acks.is_empty(),
        "answered a heartbeat read as the cut healed"
    );
    sim.engine.heartbeat_to("s", hb(), "r2".into(), sim.now);
    sim.settle();
    assert!(sim.acks.is_empty(), "answered before a beat sent after it");
    sim.advance(Duration::from_millis(50));
    let replies: Vec<_> = sim
        .acks
        .iter()
        .map(|(r, a)| (r.as_str(), a.alive))
        .collect();
    assert_eq!(replies, [("r2", true)]);
    // `alive: false` needs no proof.
    let leaving = Heartbeat {
        leaving: true,
        ..hb()
    };
    sim.quorum = false;
    sim.engine.heartbeat_to("s", leaving, "r3".into(), sim.now);
    sim.settle();
    assert_eq!(
        sim.acks.last().map(|(r, a)| (r.as_str(), a.alive)),
        Some(("r3", false))
    );
}

#[test]
fn sessions_per_prefix_are_bounded_and_a_refused_session_changes_nothing() {
    let mut sim = Sim::new();
    sim.engine.set_config(EngineConfig {
        max_sessions_per_prefix: 2,
        ..EngineConfig::default()
    });
    let ack = |sim: &mut Sim, session: &str| {
        let now = sim.now;
        sim.engine.heartbeat(session, hb(), now).expect("answered")
    };
    assert!(ack(&mut sim, "team.a").alive);
    assert!(ack(&mut sim, "team.b").alive);
    assert!(ack(&mut sim, "team.a").alive, "a live session beats on");
    let refused = ack(&mut sim, "team.c");
    assert!(!refused.alive);
    assert_eq!(refused.refused, Some(ErrorCode::TooManySessions));
    assert_eq!(sim.engine.stats.sessions_refused, 1);
    // Other prefixes have room of their own.
    assert!(ack(&mut sim, "other.a").alive);
    assert!(ack(&mut sim, "team.x.a").alive);
    // A request of a refused session is answered and changes nothing.
    sim.send(
        "acquire",
        "team.c",
        json!({"v": 1, "id": "q", "key": "k", "wait_ms": 0}),
    );
    assert_eq!(
        sim.error_code("team.c", "q"),
        Some(ErrorCode::TooManySessions)
    );
    assert_eq!(sim.holder(), None);
    // Refused is not dead: once a session of the prefix ends, it starts.
    let leaving = Heartbeat {
        leaving: true,
        ..hb()
    };
    let now = sim.now;
    sim.engine.heartbeat("team.a", leaving, now);
    assert!(ack(&mut sim, "team.c").alive);
    assert!(!ack(&mut sim, "team.d").alive);
}

#[test]
fn a_death_by_silence_stands_only_once_the_other_coordinators_heard_nothing_either() {
    let mut sim = Sim::new();
    let other = "c-other".to_owned();
    let beat = |sim: &mut Sim| {
        let b = CoordinatorBeat {
            v: 1,
            id: other.clone(),
            conn: None,
            now_ms: None,
            leaving: false,
        };
        let now = sim.now;
        sim.engine.coordinator_beat(b, now);
    };
    let alive = |sim: &Sim| sim.engine.live_sessions() == 1;
    // Runs 50 ms steps (proof beats all along) until a question is asked.
    let asked = |sim: &mut Sim| {
        for _ in 0..100 {
            sim.advance(Duration::from_millis(50));
            beat(sim);
            if let Some(q) = sim.asked.pop() {
                return q;
            }
        }
        panic!("never asked");
    };
    beat(&mut sim);
    sim.engine.heartbeat("s", hb(), sim.now);
    let heard_here = sim.now;

    let (round, sessions) = asked(&mut sim);
    assert_eq!(sessions, ["s"]);
    assert!(sim.now >= heard_here + Duration::from_millis(900));
    assert!(alive(&sim), "overdue here, not dead before the answer");
    // Unanswered: it stays alive, and is asked about again.
    let (round, _) = {
        let late = asked(&mut sim);
        assert_ne!(late.0, round);
        late
    };
    assert!(alive(&sim), "an unanswered question kills nobody");
    // The other heard a heartbeat that never reached us, 200 ms ago.
    let now = sim.now;
    sim.engine.heard_reply(&other, round, &[Some(200)], now);
    sim.settle();
    assert!(alive(&sim), "revived from when the other heard it");
    // Silence on both: asked again, and dead once the other counts it
    // overdue too.
    let (round, _) = asked(&mut sim);
    let now = sim.now;
    assert_eq!(
        sim.engine.heard_query(&["s".into()], now),
        [None],
        "overdue here: what this one would answer"
    );
    sim.engine.heard_reply(&other, round, &[None], now);
    sim.settle();
    assert!(!alive(&sim), "dead once nobody heard it for its timeout");
    assert_eq!(
        sim.engine.heartbeat("s", hb(), sim.now).map(|a| a.alive),
        Some(false)
    );
}
