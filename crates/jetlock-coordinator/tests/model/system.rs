//! The `stateright::Model`: every step any process, the bucket, the network
//! or a fault can take, and the properties.

use stateright::{Model, Property};

use crate::config::{Alive, Config, Op, SplitKind};
use crate::state::{Body, Budget, Ghost, Key, State};
use crate::{client, coord, net};

pub struct System {
    pub cfg: Config,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time passes one tick (clocks: see the module doc of `main.rs`).
    Tick,
    /// Message `.0` of the network (sorted) is delivered; `Duplicate`
    /// delivers it and keeps a copy; `Lose` drops it.
    Deliver(usize),
    Duplicate(usize),
    Lose(usize),
    /// Client `.0`'s heartbeats stop (a stalled heartbeat task, or a beat
    /// interval longer than a coordinator's timeout); `Speak` ends that.
    Silence(usize),
    Speak(usize),
    /// A message that is not the oldest on its channel overtakes it.
    Reorder(usize),
    Request(usize),
    Reconnect(usize),
    /// Coordinator `.0` takes its next step on key `.1`; with `.2` its
    /// write lands and the ack is lost.
    Step(usize, usize, bool),
    /// Coordinator `.0` restarts: it loses everything it knew and replays
    /// the request stream from its first message.
    Restart(usize),
    SplitStart,
    SplitHeal,
    /// Key `.0` moves to the other coordinator (a ring change while both
    /// are up). The old owner acts on it to the end of the tick (until the
    /// new owner's heartbeat says it is ready).
    Move(usize),
}

impl System {
    fn faults_on(&self, s: &State) -> bool {
        s.now < self.cfg.horizon
    }

    /// Ends the split. Core NATS does not buffer across a broken route: what
    /// could not be delivered while it lasted is lost.
    fn heal(&self, s: &mut State) {
        let cfg = &self.cfg;
        let lost: Vec<bool> = s
            .net
            .iter()
            .map(|m| !net::deliverable(cfg, s, &m.body))
            .collect();
        let mut lost = lost.into_iter();
        s.net
            .retain(|_| !lost.next().expect("one flag per message"));
        s.budget.split_on = None;
        if matches!(self.cfg.split, Some((SplitKind::CutCoordinator0, _))) {
            coord::echo_back(&self.cfg, s, 0);
        }
    }

    /// Steps whose timing within a tick does not matter to the properties,
    /// taken at once to keep the state space small: a coordinator reads new
    /// requests as soon as they are stored (the order against heartbeats in
    /// flight still varies), and declares a session dead as soon as it may
    /// (the earliest death is the one that races the client's deadline).
    fn eager_steps(&self, s: &mut State) {
        let cfg = &self.cfg;
        for d in 0..cfg.coordinators {
            if net::coord_reaches_stream(cfg, s, d) {
                while (s.coords[d].read as usize) < s.requests.len() {
                    coord::read_request(cfg, s, d);
                }
            }
            coord::release_held(cfg, s, d);
            for c in 0..cfg.clients() {
                if coord::may_judge(cfg, s, d, c) && coord::agree(cfg, s, d, c) {
                    s.coords[d].sessions[c].as_mut().expect("judged").dead = true;
                }
            }
        }
    }

    /// Quiescent at the end: the bounded liveness check looks here.
    pub fn is_final(&self, s: &State) -> bool {
        if s.now < self.cfg.end() {
            return false;
        }
        let mut actions = Vec::new();
        self.actions(s, &mut actions);
        actions.is_empty()
    }
}

impl Model for System {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let cfg = &self.cfg;
        let mut s = State {
            now: 0,
            seq: 0,
            keys: vec![Key::default(); cfg.keys],
            owner: cfg.home.clone(),
            handing: vec![None; cfg.keys],
            requests: Vec::new(),
            clients: (0..cfg.clients()).map(|c| client::fresh(cfg, c)).collect(),
            coords: (0..cfg.coordinators)
                .map(|_| crate::state::Coordinator {
                    proof_since: Some(0),
                    ..coord::fresh(cfg)
                })
                .collect(),
            net: Vec::new(),
            budget: Budget {
                losses: cfg.losses,
                dups: cfg.dups,
                lost_acks: cfg.lost_acks,
                restarts: cfg.restarts,
                reconnects: cfg.reconnects,
                silences: cfg.silences,
                reorders: cfg.reorders,
                moves: cfg.moves,
                split_left: cfg.split.is_some(),
                split_on: None,
            },
            ghost: Ghost {
                believed_token: vec![0; cfg.keys],
                grants: vec![0; cfg.keys],
                first_outcome: vec![None; 32],
                ..Ghost::default()
            },
        };
        for c in 0..cfg.clients() {
            client::beat(cfg, &mut s, c);
        }
        vec![s]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let cfg = &self.cfg;
        let faults = self.faults_on(s);
        // A coordinator with a step to take takes it before anything else
        // happens (its loop is fast next to the ticks); only whether its
        // ack is lost varies.
        for d in 0..cfg.coordinators {
            for k in 0..cfg.keys {
                if net::coord_reaches_stream(cfg, s, d) && net::acts_on(cfg, s, d, k) {
                    if let Some(plan) = coord::plan(cfg, s, d, k) {
                        out.push(Action::Step(d, k, false));
                        if plan.write.is_some() && faults && s.budget.lost_acks > 0 {
                            out.push(Action::Step(d, k, true));
                        }
                        return;
                    }
                }
            }
        }
        let old_deliverable = s
            .net
            .iter()
            .any(|m| m.at < s.now && net::deliverable(cfg, s, &m.body));
        if s.now < cfg.end() && !old_deliverable {
            out.push(Action::Tick);
        }
        for (i, m) in s.net.iter().enumerate() {
            if i > 0 && s.net[i - 1] == *m {
                continue;
            }
            // Each channel is FIFO unless a reordering fault says otherwise.
            let oldest = !s.net[..i]
                .iter()
                .any(|o| net::channel(&o.body) == net::channel(&m.body));
            if net::deliverable(cfg, s, &m.body) && !oldest && faults && s.budget.reorders > 0 {
                out.push(Action::Reorder(i));
            }
            if net::deliverable(cfg, s, &m.body) && oldest {
                out.push(Action::Deliver(i));
                // After the horizon, one fixed delivery order (the oldest
                // deliverable message first) keeps the settling phase small.
                if !faults {
                    break;
                }
                if faults && s.budget.dups > 0 && cfg.dup_kinds & net::kind(&m.body) != 0 {
                    out.push(Action::Duplicate(i));
                }
            }
            if faults && s.budget.losses > 0 && cfg.loss_kinds & net::kind(&m.body) != 0 {
                out.push(Action::Lose(i));
            }
        }
        for (c, cl) in s.clients.iter().enumerate() {
            if cl.ended {
                continue;
            }
            if cl.silent {
                out.push(Action::Speak(c));
            } else if faults && s.budget.silences > 0 {
                out.push(Action::Silence(c));
            }
            let script_left = (cl.pc as usize) < cfg.scripts[c].len();
            if cl.first_beat.is_some()
                && cl.waiting.is_none()
                && script_left
                && net::client_reaches_stream(cfg, s, c)
            {
                out.push(Action::Request(c));
            }
            if faults && s.budget.reconnects > 0 && cl.first_beat.is_some() {
                out.push(Action::Reconnect(c));
            }
        }
        for d in 0..cfg.coordinators {
            if faults && s.budget.restarts > 0 {
                out.push(Action::Restart(d));
            }
        }
        if faults && s.budget.split_left {
            out.push(Action::SplitStart);
        }
        if s.budget.split_on.is_some() {
            out.push(Action::SplitHeal);
        }
        for k in 0..cfg.keys {
            if faults
                && s.budget.moves > 0
                && s.handing[k].is_none()
                && net::coords_hear_each_other(cfg, s)
            {
                out.push(Action::Move(k));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let cfg = &self.cfg;
        let mut s = last.clone();
        match action {
            Action::Tick => {
                let now = s.now;
                s.net.retain(|m| m.at >= now);
                s.now += 1;
                // Hand-overs end: the new owners' heartbeats say they are ready.
                s.handing.iter_mut().for_each(|h| *h = None);
                if s.now == cfg.horizon && s.budget.split_on.is_some() {
                    self.heal(&mut s);
                }
                if let Some((_, max_len)) = cfg.split {
                    if s.budget
                        .split_on
                        .is_some_and(|since| s.now - since >= max_len)
                    {
                        self.heal(&mut s);
                    }
                }
                for k in 0..cfg.keys {
                    if s.keys[k].record.as_ref().is_some_and(|r| s.now > r.expires) {
                        s.seq += 1;
                        s.keys[k] = Key {
                            rev: s.seq,
                            record: None,
                            applied: Vec::new(),
                        };
                    }
                }
                // Finished requests are deleted by the next tick: a restart
                // before it replays them.
                for d in 0..cfg.coordinators {
                    if net::coord_reaches_stream(cfg, &s, d) {
                        for r in 1..=s.requests.len() {
                            if s.coords[d].to_delete & (1 << r) != 0 {
                                s.requests[r - 1].deleted = true;
                            }
                        }
                        s.coords[d].to_delete = 0;
                    }
                }
                for c in 0..cfg.clients() {
                    if s.now == cfg.horizon {
                        s.clients[c].silent = false;
                    }
                    client::tick(cfg, &mut s, c);
                    // Every quarter of the timeout, rounded to ticks.
                    let beat_due = s.now.is_multiple_of((cfg.client_timeout[c] / 4).max(1));
                    if !s.clients[c].ended && !s.clients[c].silent && beat_due {
                        client::beat(cfg, &mut s, c);
                    }
                    // The renewer renews every third of the lease.
                    for k in 0..cfg.keys {
                        let due = s.clients[c].holds[k]
                            .as_ref()
                            .is_some_and(|h| s.now >= h.lease_from + cfg.lease / 3);
                        if due && net::client_reaches_stream(cfg, &s, c) {
                            client::renew(cfg, &mut s, c, k);
                        }
                    }
                }
                for d in 0..cfg.coordinators {
                    coord::tick(cfg, &mut s, d);
                }
            }
            Action::Deliver(i) | Action::Duplicate(i) | Action::Reorder(i) => {
                let msg = s.net[i];
                match action {
                    Action::Duplicate(_) => s.budget.dups -= 1,
                    Action::Reorder(_) => {
                        s.budget.reorders -= 1;
                        s.net.remove(i);
                    }
                    _ => {
                        s.net.remove(i);
                    }
                }
                match msg.body {
                    Body::Heartbeat {
                        client,
                        coord,
                        conn,
                        sent,
                        timeout,
                    } => coord::on_heartbeat(
                        cfg,
                        &mut s,
                        coord as usize,
                        client as usize,
                        conn,
                        sent,
                        timeout,
                    ),
                    Body::HeartbeatAnswer {
                        client,
                        sent,
                        alive,
                        timeout,
                        ..
                    } => client::on_heartbeat_answer(
                        cfg,
                        &mut s,
                        client as usize,
                        sent,
                        alive,
                        timeout,
                    ),
                    Body::ClientClosed {
                        client,
                        coord,
                        conn,
                    } => {
                        coord::on_client_closed(cfg, &mut s, coord as usize, client as usize, conn)
                    }
                    Body::Probe { client, .. } => {
                        if !s.clients[client as usize].ended {
                            client::beat(cfg, &mut s, client as usize);
                        }
                    }
                    Body::Answer {
                        client,
                        req,
                        outcome,
                        ..
                    } => client::on_answer(&mut s, client as usize, req, outcome),
                    Body::Unstored { coord, req, .. } => {
                        coord::on_unstored(cfg, &mut s, coord as usize, req)
                    }
                }
            }
            Action::Lose(i) => {
                s.net.remove(i);
                s.budget.losses -= 1;
            }
            Action::Silence(c) => {
                s.budget.silences -= 1;
                s.clients[c].silent = true;
            }
            Action::Speak(c) => s.clients[c].silent = false,
            Action::Request(c) => client::request(cfg, &mut s, c),
            Action::Reconnect(c) => {
                s.budget.reconnects -= 1;
                client::reconnect(cfg, &mut s, c);
            }
            Action::Step(d, k, ack_lost) => {
                let plan = coord::plan(cfg, &s, d, k).expect("step has a plan");
                if ack_lost {
                    s.budget.lost_acks -= 1;
                }
                coord::apply(&mut s, d, k, plan, ack_lost, cfg.fixes.c3_recognise_landed);
            }
            Action::Restart(d) => {
                s.budget.restarts -= 1;
                let reach = net::coord_reaches_stream(cfg, &s, d);
                s.coords[d] = coord::fresh(cfg);
                s.coords[d].proof_since = reach.then_some(s.now);
            }
            Action::SplitStart => {
                s.budget.split_left = false;
                s.budget.split_on = Some(s.now);
                // Proof beats go every 50 ms, far more often than ticks: a
                // coordinator cut from the quorum loses its proof at once,
                // however soon the split heals.
                for d in 0..cfg.coordinators {
                    if !net::coord_reaches_stream(cfg, &s, d) {
                        s.coords[d].proof_since = None;
                        // C4: its answers waiting for proof get none.
                        if cfg.fixes.alive == Alive::InSpan {
                            s.coords[d].held.clear();
                        }
                    }
                }
                if matches!(cfg.split, Some((SplitKind::CutCoordinator0, _))) {
                    s.coords[0].echo_lost_since = Some(s.now);
                }
            }
            Action::SplitHeal => self.heal(&mut s),
            Action::Move(k) => {
                s.budget.moves -= 1;
                let old = s.owner[k];
                let new = (old as usize + 1) % cfg.coordinators;
                s.owner[k] = new as u8;
                s.handing[k] = Some(old);
                coord::take_over(cfg, &mut s, new, k);
            }
        }
        self.eager_steps(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no two clients believe they hold one key",
                |_, s: &State| {
                    (0..s.keys.len())
                        .all(|k| s.clients.iter().filter(|c| c.holds[k].is_some()).count() <= 1)
                },
            ),
            Property::always("tokens strictly increase per key", |_, s: &State| {
                !s.ghost.token_went_back
            }),
            Property::always(
                "an unstored release is answered released only once its hold ended",
                |_, s: &State| !s.ghost.released_while_held,
            ),
            Property::always("every request answered at most once", |_, s: &State| {
                !s.ghost.answered_twice
            }),
            Property::always(
                "an answered request is never applied again",
                |_, s: &State| !s.ghost.applied_twice,
            ),
            Property::always(
                "a waiter is granted once faults stop",
                |m: &System, s: &State| {
                    !m.cfg.check_liveness
                        || !m.is_final(s)
                        || s.clients.iter().enumerate().all(|(c, cl)| {
                            cl.ended
                                || cl.waiting.is_none_or(|r| {
                                    !matches!(s.requests[r as usize - 1].op, Op::Acquire(_))
                                        || s.coords.iter().any(|co| {
                                            co.sessions[c].as_ref().is_some_and(|x| x.dead)
                                        })
                                })
                        })
                },
            ),
            Property::sometimes("a lock is handed to a second holder", |_, s: &State| {
                s.ghost.grants.iter().any(|g| *g >= 2)
            }),
        ]
    }
}
