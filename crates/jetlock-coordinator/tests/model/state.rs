//! The state of the whole system: bucket, request stream, clients,
//! coordinators, messages in flight, fault budgets and ghost variables that
//! the properties read. Small integers throughout: the checker hashes and
//! stores every state.

use crate::config::Op;

/// A held lock's record in the bucket.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Record {
    pub holder: u8,
    pub token: u8,
    pub count: u8,
    /// Tick after which the server expires it (`Nats-TTL`).
    pub expires: u8,
}

/// One key of the bucket: its last message (a record or a marker).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct Key {
    pub rev: u8,
    pub record: Option<Record>,
    /// The requests a coordinator applied with the key's last message, as
    /// (session, request sequence): what C3 reads back (a release that hands
    /// the lock on applies two). Renewals carry them over; a marker the
    /// server writes on expiry carries none.
    pub applied: Vec<(u8, u8)>,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Request {
    pub client: u8,
    pub op: Op,
    pub sent: u8,
    pub deleted: bool,
    /// An unstored release (`Config::unstored`): never in the stream, and
    /// the token of the hold it releases.
    pub unstored: bool,
    pub token: u8,
}

/// What a client believes about one key.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Hold {
    pub token: u8,
    pub count: u8,
    /// Send time of the write that last started the lease: the client counts
    /// its lease from there, so it never runs past the server's expiry.
    pub lease_from: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Client {
    /// The session ended (declared dead to it, or given up on its own).
    pub ended: bool,
    pub conn: u8,
    pub disconnected_at: Option<u8>,
    pub first_beat: Option<u8>,
    pub silent: bool,
    /// Send time of the newest heartbeat answered alive.
    pub alive_base: Option<u8>,
    /// Timeout its deadline uses (C5: the smallest answered, never above its own).
    pub applied_timeout: u8,
    pub answered_once: bool,
    pub pc: u8,
    /// Request sequence it waits on.
    pub waiting: Option<u8>,
    pub holds: Vec<Option<Hold>>,
    /// Highest token it has believed per key: a late copy of an old grant
    /// is not a new grant.
    pub seen_token: Vec<u8>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Session {
    pub last_seen: u8,
    pub timeout: u8,
    pub conn: u8,
    pub closing_since: Option<u8>,
    pub dead: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Coordinator {
    /// Requests (by sequence) it has read from the stream.
    pub read: u8,
    /// Bit per request sequence: read as a request of a key it owns (all of
    /// them when coordinators are not partitioned).
    pub known: u32,
    pub sessions: Vec<Option<Session>>,
    /// Bit per request sequence: finished as far as it knows.
    pub finished: u32,
    /// Bit per request sequence: finished, message not yet deleted.
    pub to_delete: u32,
    /// Start of its current unbroken run of quorum-acked proof beats (C4).
    pub proof_since: Option<u8>,
    /// Old guard: since when its own beat has not echoed, and until when it
    /// holds off after hearing again.
    pub echo_lost_since: Option<u8>,
    pub hold_off_until: u8,
    /// `alive` answers waiting for proof of hearing, as (client, send time
    /// of the heartbeat).
    pub held: Vec<(u8, u8)>,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Granted { token: u8 },
    Released,
    NotHolder,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
/// Ordered so that, where the model fixes the delivery order (after the
/// fault horizon), a lock answer goes before a heartbeat sent in the same
/// tick: the order in which a grant races a death.
pub enum Body {
    Answer {
        client: u8,
        coord: u8,
        req: u8,
        outcome: Outcome,
    },
    Heartbeat {
        client: u8,
        coord: u8,
        conn: u8,
        sent: u8,
        timeout: u8,
    },
    HeartbeatAnswer {
        client: u8,
        coord: u8,
        sent: u8,
        alive: bool,
        timeout: u8,
    },
    /// The server's disconnect advisory, reason `Client Closed`.
    ClientClosed {
        client: u8,
        coord: u8,
        conn: u8,
    },
    Probe {
        client: u8,
        coord: u8,
    },
    /// A copy of unstored release `req` on its way to a coordinator.
    Unstored {
        client: u8,
        coord: u8,
        req: u8,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    /// Tick it was sent in: it is delivered or lost before the next tick ends.
    pub at: u8,
    pub body: Body,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Budget {
    pub losses: u8,
    pub dups: u8,
    pub lost_acks: u8,
    pub restarts: u8,
    pub reconnects: u8,
    pub silences: u8,
    pub reorders: u8,
    pub moves: u8,
    /// The split may still start (`true`), and whether it is on now.
    pub split_left: bool,
    pub split_on: Option<u8>,
}

/// What the properties judge, recorded as it happens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct Ghost {
    /// Highest token any client believed per key.
    pub believed_token: Vec<u8>,
    pub token_went_back: bool,
    /// Grants believed per key, counted up to 2 (for the `sometimes` check
    /// that a handoff is reachable at all).
    pub grants: Vec<u8>,
    /// Bit per request: a final answer reached its client; and whether a
    /// second, different one did.
    pub answered: u32,
    pub first_outcome: Vec<Option<Outcome>>,
    pub answered_twice: bool,
    /// Bit per request: its write landed; and whether a second one did.
    pub applied: u32,
    pub applied_twice: bool,
    /// An unstored release was answered `released` by a step that wrote
    /// nothing while the key still held its token.
    pub released_while_held: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub now: u8,
    /// The bucket's stream sequence: every write takes the next one.
    pub seq: u8,
    pub keys: Vec<Key>,
    /// Each key's owner, and the owner it moved from in this tick, which
    /// still acts on it (the hand-over).
    pub owner: Vec<u8>,
    pub handing: Vec<Option<u8>>,
    /// The request stream, request sequence n at index n - 1.
    pub requests: Vec<Request>,
    pub clients: Vec<Client>,
    pub coords: Vec<Coordinator>,
    /// Messages in flight, sorted (a multiset).
    pub net: Vec<Msg>,
    pub budget: Budget,
    pub ghost: Ghost,
}

impl State {
    pub fn send(&mut self, body: Body) {
        let msg = Msg { at: self.now, body };
        let at = self.net.partition_point(|m| *m < msg);
        self.net.insert(at, msg);
    }
}
