//! Who can hear whom: the route partition and the stalled coordinator
//! (config `split`), for core NATS messages and for JetStream (which needs
//! the quorum, on side 0).

use crate::config::{Config, SplitKind};
use crate::state::{Body, State};

fn split(cfg: &Config, s: &State) -> Option<SplitKind> {
    s.budget.split_on.and(cfg.split.map(|(kind, _)| kind))
}

pub fn coord_reaches_stream(cfg: &Config, s: &State, d: usize) -> bool {
    match split(cfg, s) {
        Some(SplitKind::Route) => cfg.coord_side[d] == 0,
        Some(SplitKind::CutCoordinator0) => d != 0,
        None => true,
    }
}

pub fn client_reaches_stream(cfg: &Config, s: &State, c: usize) -> bool {
    match split(cfg, s) {
        Some(SplitKind::Route) => cfg.client_side[c] == 0,
        _ => true,
    }
}

pub fn client_hears_coord(cfg: &Config, s: &State, c: usize, d: usize) -> bool {
    match split(cfg, s) {
        Some(SplitKind::Route) => cfg.client_side[c] == cfg.coord_side[d],
        Some(SplitKind::CutCoordinator0) => d != 0,
        None => true,
    }
}

pub fn coords_hear_each_other(cfg: &Config, s: &State) -> bool {
    match split(cfg, s) {
        Some(SplitKind::Route) => cfg.coord_side.iter().all(|side| *side == cfg.coord_side[0]),
        Some(SplitKind::CutCoordinator0) => cfg.coordinators < 2,
        None => true,
    }
}

/// Whether a message can be delivered now (else it is dropped at the tick).
pub fn deliverable(cfg: &Config, s: &State, body: &Body) -> bool {
    let (c, d) = match *body {
        Body::Heartbeat { client, coord, .. }
        | Body::HeartbeatAnswer { client, coord, .. }
        | Body::ClientClosed { client, coord, .. }
        | Body::Probe { client, coord }
        | Body::Answer { client, coord, .. }
        | Body::Unstored { client, coord, .. } => (client as usize, coord as usize),
    };
    client_hears_coord(cfg, s, c, d)
}

pub fn kind(body: &Body) -> u8 {
    use crate::config::*;
    match body {
        Body::Heartbeat { .. } => HB,
        Body::HeartbeatAnswer { .. } => HB_ANSWER,
        Body::ClientClosed { .. } => ADVISORY,
        Body::Probe { .. } => PROBE,
        Body::Answer { .. } => ANSWER,
        Body::Unstored { .. } => UNSTORED,
    }
}

/// The coordinator that acts on key `k`: its owner, the owner it is moving
/// from during the hand-over, or any coordinator that cannot hear the owner
/// (each side of a split believes it owns it).
pub fn acts_on(cfg: &Config, s: &State, d: usize, k: usize) -> bool {
    owns(s, d, k) || !coords_hear_each_other(cfg, s)
}

/// Whether `d` reads key `k`'s requests: it owns the key, or hands it over.
pub fn owns(s: &State, d: usize, k: usize) -> bool {
    s.owner[k] as usize == d || s.handing[k] == Some(d as u8)
}

/// A message's channel (sender, receiver): FIFO unless reordered.
pub fn channel(body: &Body) -> (bool, u8, u8) {
    match *body {
        // One connection carries a client's heartbeats and releases.
        Body::Heartbeat { client, coord, .. } | Body::Unstored { client, coord, .. } => {
            (true, client, coord)
        }
        Body::HeartbeatAnswer { client, coord, .. }
        | Body::Probe { client, coord }
        | Body::Answer { client, coord, .. } => (false, client, coord),
        // The server's advisory comes on a channel of its own.
        Body::ClientClosed { client, coord, .. } => (true, client + 100, coord),
    }
}
