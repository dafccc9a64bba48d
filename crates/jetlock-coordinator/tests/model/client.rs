//! The client's side: heartbeats, its deadline (C5), the reconnect rule
//! (C2), its script of lock operations and what it believes.

use crate::config::{Config, Op};
use crate::state::{Body, Client, Hold, Key, Outcome, Request, State};

pub fn fresh(cfg: &Config, c: usize) -> Client {
    Client {
        ended: false,
        conn: 1,
        disconnected_at: None,
        first_beat: None,
        silent: false,
        alive_base: None,
        applied_timeout: cfg.client_timeout[c],
        answered_once: false,
        pc: 0,
        waiting: None,
        holds: vec![None; cfg.keys],
        seen_token: vec![0; cfg.keys],
    }
}

pub fn beat(cfg: &Config, s: &mut State, c: usize) {
    let now = s.now;
    let cl = &mut s.clients[c];
    cl.first_beat.get_or_insert(now);
    let conn = cl.conn;
    for d in 0..cfg.coordinators {
        s.send(Body::Heartbeat {
            client: c as u8,
            coord: d as u8,
            conn,
            sent: now,
            timeout: cfg.client_timeout[c],
        });
    }
}

fn end_session(cl: &mut Client) {
    cl.ended = true;
    cl.holds.iter_mut().for_each(|h| *h = None);
}

pub fn on_heartbeat_answer(
    cfg: &Config,
    s: &mut State,
    c: usize,
    sent: u8,
    alive: bool,
    timeout: u8,
) {
    let cl = &mut s.clients[c];
    if cl.ended {
        return;
    }
    if !alive {
        end_session(cl);
        return;
    }
    cl.alive_base = Some(cl.alive_base.map_or(sent, |b| b.max(sent)));
    if cfg.fixes.c5_min_timeout {
        cl.applied_timeout = cl.applied_timeout.min(timeout);
    } else if !cl.answered_once {
        cl.applied_timeout = timeout;
    }
    cl.answered_once = true;
    if cl.disconnected_at.is_some_and(|t| sent >= t) {
        cl.disconnected_at = None;
    }
}

pub fn on_answer(s: &mut State, c: usize, req: u8, outcome: Outcome) {
    let ghost = &mut s.ghost;
    let bit = 1u32 << req;
    if ghost.answered & bit == 0 {
        ghost.answered |= bit;
        ghost.first_outcome[req as usize] = Some(outcome);
    } else if ghost.first_outcome[req as usize] != Some(outcome) {
        ghost.answered_twice = true;
    }
    let request = s.requests[req as usize - 1];
    let cl = &mut s.clients[c];
    if cl.ended || cl.waiting != Some(req) {
        return;
    }
    cl.waiting = None;
    cl.pc += 1;
    let (Op::Acquire(k), Outcome::Granted { token }) = (request.op, outcome) else {
        return;
    };
    let k = k as usize;
    match &mut cl.holds[k] {
        Some(hold) if hold.token == token => {
            hold.count += 1;
            hold.lease_from = hold.lease_from.max(request.sent);
        }
        _ if token > cl.seen_token[k] => {
            cl.holds[k] = Some(Hold {
                token,
                count: 1,
                lease_from: request.sent,
            });
            cl.seen_token[k] = token;
            if token <= s.ghost.believed_token[k] {
                s.ghost.token_went_back = true;
            }
            s.ghost.believed_token[k] = token;
            s.ghost.grants[k] = s.ghost.grants[k].saturating_add(1).min(2);
        }
        // A late copy of a grant it already gave up: not believed.
        _ => {}
    }
}

/// Starts the next operation of its script. A release starts by no longer
/// believing in that hold.
pub fn request(cfg: &Config, s: &mut State, c: usize) {
    let now = s.now;
    let cl = &mut s.clients[c];
    let op = cfg.scripts[c][cl.pc as usize];
    let mut unstored = None;
    if let Op::Release(k) = op {
        let Some(hold) = &mut cl.holds[k as usize] else {
            // The hold was lost: the script stops here.
            cl.pc = cfg.scripts[c].len() as u8;
            return;
        };
        hold.count -= 1;
        if hold.count == 0 {
            unstored = cfg.unstored.then_some(hold.token);
            cl.holds[k as usize] = None;
        }
    }
    s.requests.push(Request {
        client: c as u8,
        op,
        sent: now,
        deleted: false,
        unstored: unstored.is_some(),
        token: unstored.unwrap_or(0),
    });
    let req = s.requests.len() as u8;
    s.clients[c].waiting = Some(req);
    if unstored.is_some() {
        for d in 0..cfg.coordinators {
            s.send(Body::Unstored {
                client: c as u8,
                coord: d as u8,
                req,
            });
        }
    }
}

/// An unstored release unanswered by the tick after it was sent: the
/// client releases in the bucket itself, by a CAS on its hold (nothing if
/// the key moved on: the release was carried out).
fn release_unanswered(s: &mut State, c: usize) {
    let Some(r) = s.clients[c].waiting else {
        return;
    };
    let req = s.requests[r as usize - 1];
    if !req.unstored || req.sent >= s.now {
        return;
    }
    let Op::Release(k) = req.op else {
        return;
    };
    let key = &mut s.keys[k as usize];
    if key
        .record
        .as_ref()
        .is_some_and(|rec| rec.holder == c as u8 && rec.token == req.token)
    {
        s.seq += 1;
        *key = Key {
            rev: s.seq,
            record: None,
            applied: Vec::new(),
        };
    }
    s.clients[c].waiting = None;
    s.clients[c].pc += 1;
}

/// A renewal: the client's own CAS on the hold's record, which lands while
/// the record is still its grant and otherwise reports the hold lost.
pub fn renew(cfg: &Config, s: &mut State, c: usize, k: usize) {
    let now = s.now;
    let hold = s.clients[c].holds[k].clone().expect("renew needs a hold");
    match &mut s.keys[k].record {
        Some(rec) if rec.holder == c as u8 && rec.token == hold.token => {
            rec.expires = now + cfg.lease;
            s.seq += 1;
            s.keys[k].rev = s.seq;
            s.clients[c].holds[k].as_mut().expect("checked").lease_from = now;
        }
        _ => s.clients[c].holds[k] = None,
    }
}

pub fn reconnect(cfg: &Config, s: &mut State, c: usize) {
    let now = s.now;
    let cl = &mut s.clients[c];
    let old = cl.conn;
    cl.conn += 1;
    cl.disconnected_at = Some(now);
    for d in 0..cfg.coordinators {
        s.send(Body::ClientClosed {
            client: c as u8,
            coord: d as u8,
            conn: old,
        });
    }
    beat(cfg, s, c);
}

/// The client's clocks, at each tick: lease ends, its session deadline
/// (C5), the reconnect rule (C2).
pub fn tick(cfg: &Config, s: &mut State, c: usize) {
    if !s.clients[c].ended {
        release_unanswered(s, c);
    }
    let now = s.now;
    let cl = &mut s.clients[c];
    if cl.ended {
        return;
    }
    for hold in cl.holds.iter_mut() {
        if hold
            .as_ref()
            .is_some_and(|h| now >= h.lease_from + cfg.lease)
        {
            *hold = None;
        }
    }
    let base = if cfg.fixes.c5_deadline_from_first_beat {
        cl.alive_base.or(cl.first_beat)
    } else {
        cl.alive_base
    };
    if base.is_some_and(|b| now >= b + cl.applied_timeout) {
        end_session(cl);
        return;
    }
    if cl
        .disconnected_at
        .is_some_and(|t| now >= t + cfg.reconnect_grace)
    {
        cl.holds.iter_mut().for_each(|h| *h = None);
        cl.disconnected_at = None;
    }
}
