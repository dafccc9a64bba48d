//! The coordinator's side: sessions (C1, C2, C4), reading the request
//! stream, and the one step per key that decides the next CAS write (C3).

use crate::config::{Alive, Config, Guard, Op};
use crate::net;
use crate::state::{Body, Coordinator, Key, Outcome, Record, Session, State};

pub fn fresh(cfg: &Config) -> Coordinator {
    Coordinator {
        read: 0,
        known: 0,
        sessions: vec![None; cfg.clients()],
        finished: 0,
        to_delete: 0,
        proof_since: None,
        echo_lost_since: None,
        hold_off_until: 0,
        held: Vec::new(),
    }
}

fn clamp(cfg: &Config, d: usize, timeout: u8) -> u8 {
    timeout.clamp(cfg.min_timeout, cfg.max_timeout[d])
}

pub fn on_heartbeat(
    cfg: &Config,
    s: &mut State,
    d: usize,
    c: usize,
    conn: u8,
    sent: u8,
    timeout: u8,
) {
    let now = s.now;
    let timeout = clamp(cfg, d, timeout);
    let sess = &mut s.coords[d].sessions[c];
    let (alive, answered) = match sess {
        Some(sess) if sess.dead => (false, sess.timeout),
        Some(sess) => {
            sess.last_seen = sess.last_seen.max(now);
            sess.timeout = timeout;
            // C2: a beat on another connection than the closed one is the
            // reconnect.
            if conn != sess.conn {
                sess.closing_since = None;
            }
            // Connections only grow in the model: a late beat of the old
            // connection does not bring it back.
            sess.conn = sess.conn.max(conn);
            (true, timeout)
        }
        None => {
            *sess = Some(Session {
                last_seen: now,
                timeout,
                conn,
                closing_since: None,
                dead: false,
            });
            (true, timeout)
        }
    };
    // C4: an `alive` answer needs proof that the coordinator hears the
    // quorum; the model's proof beat after the heartbeat is acked at once
    // while the stream is reachable.
    let reach = net::coord_reaches_stream(cfg, s, d);
    if alive {
        match cfg.fixes.alive {
            // The span must cover the heartbeat's send: one read late,
            // after a loss of the quorum healed, may have missed the
            // others (its copies to them were lost in the split).
            Alive::InSpan if reach && s.coords[d].proof_since.is_some_and(|p| p <= sent) => {
                s.coords[d].held.push((c as u8, sent));
                return;
            }
            Alive::HeldUntilProof if !reach => {
                s.coords[d].held.push((c as u8, sent));
                return;
            }
            Alive::InSpan => return,
            Alive::AtArrival if !reach => return,
            _ => {}
        }
    }
    answer_heartbeat(cfg, s, d, c, sent, alive, answered);
}

fn answer_heartbeat(
    cfg: &Config,
    s: &mut State,
    d: usize,
    c: usize,
    sent: u8,
    alive: bool,
    timeout: u8,
) {
    if cfg.async_answers() {
        s.send(Body::HeartbeatAnswer {
            client: c as u8,
            coord: d as u8,
            sent,
            alive,
            timeout,
        });
    } else {
        crate::client::on_heartbeat_answer(cfg, s, c, sent, alive, timeout);
    }
}

/// Held `alive` answers go once the coordinator proves it hears the quorum
/// again, answered as things stand then.
pub fn release_held(cfg: &Config, s: &mut State, d: usize) {
    if s.coords[d].held.is_empty() || !net::coord_reaches_stream(cfg, s, d) {
        return;
    }
    // Copies a split keeps from a coordinator are lost with it; that
    // coordinator cannot prove it hears the quorum, so it acts on no death.
    let in_flight = |s: &State, c: u8, at: u8| {
        s.net.iter().any(|m| {
            matches!(m.body, Body::Heartbeat { client, sent, .. } if client == c && sent == at)
                && net::deliverable(cfg, s, &m.body)
        })
    };
    let held = std::mem::take(&mut s.coords[d].held);
    let (ready, waiting): (Vec<_>, Vec<_>) = held
        .into_iter()
        .partition(|&(c, sent)| cfg.fixes.alive != Alive::InSpan || !in_flight(s, c, sent));
    s.coords[d].held = waiting;
    for (c, sent) in ready {
        let Some(sess) = &s.coords[d].sessions[c as usize] else {
            continue;
        };
        let (alive, timeout) = (!sess.dead, sess.timeout);
        answer_heartbeat(cfg, s, d, c as usize, sent, alive, timeout);
    }
}

pub fn on_client_closed(cfg: &Config, s: &mut State, d: usize, c: usize, conn: u8) {
    let now = s.now;
    let Some(sess) = &mut s.coords[d].sessions[c] else {
        return;
    };
    if sess.dead || sess.conn != conn {
        return;
    }
    if cfg.fixes.c2_reconnect_grace {
        if sess.closing_since.is_none() {
            sess.closing_since = Some(now);
        }
        s.send(Body::Probe {
            client: c as u8,
            coord: d as u8,
        });
    } else {
        sess.dead = true;
    }
}

/// Reads the next request of the stream. A request is a sign of life; C1:
/// it never sets a timeout, and a session first seen through one gets the
/// longest timeout a client could have been told.
///
/// Partitioned, it reads only the requests of the keys it owns (its
/// consumer's filter): the others pass it by.
pub fn read_request(cfg: &Config, s: &mut State, d: usize) {
    let r = s.coords[d].read + 1;
    let req = s.requests[r as usize - 1];
    s.coords[d].read = r;
    if req.deleted || req.unstored {
        // Gone from the stream (a replay does not see it), or never in it.
        return;
    }
    if cfg.partitioned && !net::owns(s, d, key_of(req.op) as usize) {
        return;
    }
    learn(cfg, s, d, r);
}

/// A copy of unstored release `r` reaches coordinator `d`: taken if it
/// acts on the key (the code: it owns the key and has caught up) and the
/// key holds the client's hold under the release's token, else dropped. A
/// coordinator that cannot write keeps it until it can, as the code keeps
/// a write it could not make.
pub fn on_unstored(cfg: &Config, s: &mut State, d: usize, r: u8) {
    let req = s.requests[r as usize - 1];
    let k = key_of(req.op) as usize;
    let held = s.keys[k]
        .record
        .as_ref()
        .is_some_and(|rec| rec.holder == req.client && rec.token == req.token);
    if held && net::acts_on(cfg, s, d, k) {
        learn(cfg, s, d, r);
    }
}

/// Request `r` is read: known to the coordinator's queue, and a sign of
/// life of its session.
fn learn(cfg: &Config, s: &mut State, d: usize, r: u8) {
    let now = s.now;
    let req = s.requests[r as usize - 1];
    s.coords[d].known |= 1 << r;
    let sess = &mut s.coords[d].sessions[req.client as usize];
    match sess {
        Some(sess) if !sess.dead => sess.last_seen = sess.last_seen.max(now),
        Some(_) => {}
        None => {
            let timeout = if cfg.fixes.c1_request_gets_max {
                cfg.max_timeout[d]
            } else {
                cfg.default_timeout
            };
            *sess = Some(Session {
                last_seen: now,
                timeout,
                conn: 0,
                closing_since: None,
                dead: false,
            });
        }
    }
}

/// Coordinator `d` takes key `k` over (a ring change): it reads the key's
/// requests still in the stream, as a restart replays them, before it acts
/// on the key.
pub fn take_over(cfg: &Config, s: &mut State, d: usize, k: usize) {
    if !cfg.fixes.catch_up {
        return;
    }
    for r in 1..=s.coords[d].read {
        let req = s.requests[r as usize - 1];
        let in_stream = !req.deleted && !req.unstored;
        if in_stream && key_of(req.op) == k as u8 && s.coords[d].known & (1 << r) == 0 {
            learn(cfg, s, d, r);
        }
    }
}

/// Whether coordinator `d` may declare session `c` dead now.
pub fn may_judge(cfg: &Config, s: &State, d: usize, c: usize) -> bool {
    let co = &s.coords[d];
    let Some(sess) = &co.sessions[c] else {
        return false;
    };
    if sess.dead || !overdue(cfg, s.now, sess) {
        return false;
    }
    match cfg.fixes.guard {
        Guard::Proof => co.proof_since.is_some_and(|p| p <= sess.last_seen),
        Guard::EchoCutoff { cutoff } => {
            let cut_off = co
                .echo_lost_since
                .is_some_and(|since| s.now - since >= cutoff);
            !cut_off && s.now >= co.hold_off_until
        }
        Guard::None => true,
    }
}

/// Past its deadline: silent for longer than its timeout, or closed for
/// longer than the reconnect grace (C2).
fn overdue(cfg: &Config, now: u8, sess: &Session) -> bool {
    let silent = now > sess.last_seen + sess.timeout;
    let closed = sess
        .closing_since
        .is_some_and(|since| now > since + cfg.reconnect_grace);
    silent || closed
}

/// Fix 8, what coordinator `e` answers when asked about session `c`: when
/// it last heard it, if it still counts it alive and has heard a heartbeat
/// of it (a session known only from requests was never answered `alive`
/// there, so nothing the client believes rests on it); nothing for one it
/// counts overdue, dead or does not know.
fn heard(cfg: &Config, s: &State, e: usize, c: usize) -> Option<u8> {
    let sess = s.coords[e].sessions[c].as_ref()?;
    // A session learned from a request has connection 0 until it beats.
    let beat = sess.conn > 0;
    (!sess.dead && beat && !overdue(cfg, s.now, sess)).then_some(sess.last_seen)
}

/// Fix 8: whether the death of session `c`, which coordinator `d` may
/// judge, stands. `d` asks the other coordinators; one that still counts
/// the session alive makes it revive the session from when that one last
/// heard it, and the death does not stand (it is judged again when overdue
/// again). The question and its answers are one atomic step here (see
/// docs/RELIABILITY.md, "Model check"): an answer is never older than the
/// asker's decision. A coordinator the asker cannot hear is not asked: the
/// model has no ring membership beats, and counts a coordinator it cannot
/// hear out of the ring at once, as `net::acts_on` does for keys (the code
/// holds the death back until the ring drops it, a later death).
pub fn agree(cfg: &Config, s: &mut State, d: usize, c: usize) -> bool {
    // The runs have at most two coordinators: whether all hear each other
    // is whether the one asked hears the asker.
    if !cfg.fixes.agreement || !net::coords_hear_each_other(cfg, s) {
        return true;
    }
    let latest = (0..cfg.coordinators)
        .filter(|&e| e != d)
        .filter_map(|e| heard(cfg, s, e, c))
        .max();
    let Some(at) = latest else {
        return true;
    };
    let sess = s.coords[d].sessions[c].as_mut().expect("judged");
    sess.last_seen = sess.last_seen.max(at);
    if sess.closing_since.is_some_and(|since| since < at) {
        sess.closing_since = None;
    }
    false
}

/// Every tick: the proof beat is acked when the quorum is reachable (C4);
/// after a gap, sessions count as seen at its end.
pub fn tick(cfg: &Config, s: &mut State, d: usize) {
    let now = s.now;
    let reach = net::coord_reaches_stream(cfg, s, d);
    let co = &mut s.coords[d];
    if !reach {
        co.proof_since = None;
    } else if co.proof_since.is_none() {
        co.proof_since = Some(now);
        if cfg.fixes.guard == Guard::Proof {
            for sess in co.sessions.iter_mut().flatten() {
                if !sess.dead {
                    sess.last_seen = sess.last_seen.max(now);
                }
            }
        }
    }
}

/// The old guard's hold-off once the coordinator hears its own beat again.
pub fn echo_back(cfg: &Config, s: &mut State, d: usize) {
    let now = s.now;
    let co = &mut s.coords[d];
    if let (Guard::EchoCutoff { cutoff }, Some(since)) = (cfg.fixes.guard, co.echo_lost_since) {
        if now - since >= cutoff {
            co.hold_off_until = now + cfg.longest_timeout();
        }
    }
    co.echo_lost_since = None;
}

/// A write: the key's new record (none: a release marker) and the
/// requests it applies, as (session, request sequence).
pub type Write = (Option<Record>, Vec<(u8, u8)>);

/// What one step on a key does.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Requests this step finishes, with the answer each gets.
    pub finish: Vec<(u8, Option<Outcome>)>,
    /// The key's new content, when the step writes (a CAS on the current
    /// revision, so it lands: a coordinator with a stale view conflicts,
    /// reads and plans again, which the model folds into this step).
    pub write: Option<Write>,
}

fn dead(co: &Coordinator, c: u8) -> bool {
    co.sessions[c as usize]
        .as_ref()
        .is_some_and(|sess| sess.dead)
}

fn key_of(op: Op) -> u8 {
    match op {
        Op::Acquire(k) | Op::Release(k) => k,
    }
}

pub fn plan(cfg: &Config, s: &State, d: usize, k: usize) -> Option<Plan> {
    let co = &s.coords[d];
    let key: &Key = &s.keys[k];
    let pending: Vec<u8> = (1..=co.read)
        .filter(|&r| {
            let req = &s.requests[r as usize - 1];
            !req.deleted
                && co.known & (1 << r) != 0
                && co.finished & (1 << r) == 0
                && key_of(req.op) == k as u8
        })
        .collect();
    let req = |r: u8| s.requests[r as usize - 1];
    let lease_end = s.now + cfg.lease;
    let token = s.seq + 1;

    // C3: a request whose write is the key's last one is done; answer it
    // again (the client ignores a repeat).
    if cfg.fixes.c3_recognise_landed {
        for &r in &pending {
            let c = req(r).client;
            // No write names an unstored release; the mutation reads its
            // missing sequence as 0.
            if req(r).unstored && cfg.fixes.unstored_unnamed {
                continue;
            }
            let seq = if req(r).unstored { 0 } else { r };
            if key.applied.iter().any(|&(ac, ar)| ac == c && ar >= seq) {
                let outcome = match (req(r).op, &key.record) {
                    (Op::Acquire(_), Some(rec)) if rec.holder == c => {
                        Some(Outcome::Granted { token: rec.token })
                    }
                    (Op::Acquire(_), _) => None,
                    (Op::Release(_), _) => Some(Outcome::Released),
                };
                return Some(Plan {
                    finish: vec![(r, outcome)],
                    write: None,
                });
            }
        }
    }

    // The next live waiter, granted in the write that ends a hold.
    let next_waiter = |except: Option<u8>| {
        pending.iter().copied().find(|&r| {
            let q = req(r);
            matches!(q.op, Op::Acquire(_)) && Some(q.client) != except && !dead(co, q.client)
        })
    };
    let hand_on = |ending: Vec<(u8, Option<Outcome>)>, holder: Option<u8>| {
        let mut finish = ending;
        let mut applied: Vec<(u8, u8)> = finish
            .iter()
            .filter(|&&(r, _)| !req(r).unstored)
            .map(|&(r, _)| (req(r).client, r))
            .collect();
        let record = next_waiter(holder).map(|w| {
            finish.push((w, Some(Outcome::Granted { token })));
            applied.push((req(w).client, w));
            Record {
                holder: req(w).client,
                token,
                count: 1,
                expires: lease_end,
            }
        });
        Plan {
            finish,
            write: Some((record, applied)),
        }
    };

    // Waiters of dead sessions leave without an answer; releases by a
    // session that does not hold the lock are refused.
    let holder = key.record.as_ref().map(|rec| rec.holder);
    for &r in &pending {
        let q = req(r);
        if Some(q.client) == holder {
            continue;
        }
        match q.op {
            Op::Acquire(_) if dead(co, q.client) => {
                return Some(Plan {
                    finish: vec![(r, None)],
                    write: None,
                })
            }
            Op::Release(_) => {
                return Some(Plan {
                    finish: vec![(r, Some(Outcome::NotHolder))],
                    write: None,
                })
            }
            Op::Acquire(_) => {}
        }
    }

    match &key.record {
        None => next_waiter(None).map(|_| hand_on(Vec::new(), None)),
        Some(rec) if dead(co, rec.holder) => {
            // The hold ends with its session; its own pending operations are
            // refused by the steps after this one.
            Some(hand_on(Vec::new(), Some(rec.holder)))
        }
        Some(rec) => {
            let r = pending
                .iter()
                .copied()
                .find(|&r| req(r).client == rec.holder)?;
            let applied = if req(r).unstored {
                Vec::new()
            } else {
                vec![(rec.holder, r)]
            };
            match req(r).op {
                Op::Acquire(_) => Some(Plan {
                    finish: vec![(r, Some(Outcome::Granted { token: rec.token }))],
                    write: Some((
                        Some(Record {
                            count: rec.count + 1,
                            expires: lease_end,
                            ..rec.clone()
                        }),
                        applied,
                    )),
                }),
                Op::Release(_) if rec.count > 1 => Some(Plan {
                    finish: vec![(r, Some(Outcome::Released))],
                    write: Some((
                        Some(Record {
                            count: rec.count - 1,
                            expires: lease_end,
                            ..rec.clone()
                        }),
                        applied,
                    )),
                }),
                Op::Release(_) => Some(hand_on(
                    vec![(r, Some(Outcome::Released))],
                    Some(rec.holder),
                )),
            }
        }
    }
}

/// Carries a plan out. With `ack_lost` the write lands but the coordinator
/// never learns it: it answers nothing and finishes nothing.
pub fn apply(
    s: &mut State,
    d: usize,
    k: usize,
    plan: Plan,
    ack_lost: bool,
    delete_before_answer: bool,
) {
    if plan.write.is_none() {
        let holds = |r: u8| {
            let q = s.requests[r as usize - 1];
            s.keys[k]
                .record
                .as_ref()
                .is_some_and(|rec| rec.token == q.token)
        };
        let wrongly = plan.finish.iter().any(|&(r, outcome)| {
            s.requests[r as usize - 1].unstored && outcome == Some(Outcome::Released) && holds(r)
        });
        s.ghost.released_while_held |= wrongly;
    }
    if let Some((record, applied)) = plan.write {
        s.seq += 1;
        let key = &mut s.keys[k];
        key.rev = s.seq;
        key.record = record;
        key.applied = applied;
        for &(r, _) in &plan.finish {
            let bit = 1u32 << r;
            if s.ghost.applied & bit != 0 && s.ghost.answered & bit != 0 {
                s.ghost.applied_twice = true;
            }
            s.ghost.applied |= bit;
        }
    }
    if ack_lost {
        return;
    }
    for (r, outcome) in plan.finish {
        s.coords[d].finished |= 1 << r;
        if delete_before_answer {
            // C3 as the model needs it: the request is deleted (acked)
            // before it is answered, so no restart replays an answered one.
            s.requests[r as usize - 1].deleted = true;
        } else {
            s.coords[d].to_delete |= 1 << r;
        }
        if let Some(outcome) = outcome {
            let client = s.requests[r as usize - 1].client;
            s.send(Body::Answer {
                client,
                coord: d as u8,
                req: r,
                outcome,
            });
        }
    }
}
