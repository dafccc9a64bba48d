//! What one model-check run explores: the fixes on or off, the processes,
//! the clock constants and how many faults of each kind may happen.

/// How a coordinator decides it may act on a session's death (C4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Guard {
    /// C4: only while its proof beats are acked by the JetStream quorum
    /// without a gap; a gap revives sessions (last seen := end of the gap).
    Proof,
    /// Case 5's old rule: it counts itself cut off once its own core-NATS
    /// beat has not echoed for `cutoff` ticks, and then holds off.
    EchoCutoff { cutoff: u8 },
    /// Case 4: deaths are acted on whatever it can hear.
    None,
}

/// When a coordinator may answer a heartbeat `alive` (C4, the confirmation
/// half of proof of hearing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alive {
    /// The answer waits for a proof beat sent after the heartbeat arrived
    /// and acked in time; the beat crossed the routes after the heartbeat's
    /// copies to the other coordinators (routes are in order), so the model
    /// sends the answer once those copies are delivered, and drops it when
    /// the coordinator loses the quorum first. And the span of proof must
    /// cover the heartbeat's send, not only its reading.
    InSpan,
    /// Only while it can reach the quorum when it reads the heartbeat (an
    /// answer held through a loss of the quorum is dropped), whenever the
    /// heartbeat was sent.
    AtArrival,
    /// The answer waits for a proof beat sent after the heartbeat arrived;
    /// answers held through a loss of the quorum go with the first proof
    /// after it.
    HeldUntilProof,
    /// Whatever it can hear (the rule before the proof for confirmations).
    Always,
}

/// Each flag set to `false` reverts one fix of issue 13.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fixes {
    /// C1: a session first learned from a request gets the longest timeout
    /// (false: the default, case 1).
    pub c1_request_gets_max: bool,
    /// C2: `Client Closed` starts a reconnect grace (false: dead at once, case 2).
    pub c2_reconnect_grace: bool,
    /// C3: a coordinator recognises its landed write from the key, and
    /// deletes a finished request before it answers it (false: a write whose
    /// ack was lost, or a replayed answered request, is run again, case 3).
    pub c3_recognise_landed: bool,
    /// C4 (and the guard that case 5's third point is about).
    pub guard: Guard,
    /// C4: confirmations need proof of hearing too.
    pub alive: Alive,
    /// C5: the smallest answered timeout (false: the first answer's, case 5a).
    pub c5_min_timeout: bool,
    /// C5: a deadline from the first heartbeat sent (false: none before the
    /// first confirmation, case 5b).
    pub c5_deadline_from_first_beat: bool,
    /// Fix 8 of the simulation: a death stands only once the other
    /// coordinator, asked, counts the session overdue too; one that still
    /// counts it alive revives it from when it last heard it (false: each
    /// coordinator judges on its own view, and a heartbeat copy lost to it
    /// alone while another confirmed it ends a session the client still
    /// counts alive).
    pub agreement: bool,
    /// Partitioned coordinators: a coordinator that takes a key over reads
    /// the requests of the key it did not read before acting on it
    /// (false: it knows only the requests it reads from then on).
    pub catch_up: bool,
    /// Unstored releases (protocol 1.8): the engine never takes one for a
    /// request a write already applied (false: it does, as if its missing
    /// stream sequence were 0, below every sequence a write names).
    pub unstored_unnamed: bool,
}

impl Fixes {
    pub const ALL: Fixes = Fixes {
        c1_request_gets_max: true,
        c2_reconnect_grace: true,
        c3_recognise_landed: true,
        guard: Guard::Proof,
        alive: Alive::InSpan,
        c5_min_timeout: true,
        c5_deadline_from_first_beat: true,
        agreement: true,
        catch_up: true,
        unstored_unnamed: true,
    };
}

/// One lock operation of a client's script, on key `.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Acquire(u8),
    Release(u8),
}

/// How the network may be split once (C4's route partition, case 5's cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitKind {
    /// The servers lose their routes: processes on side 1 hear only each
    /// other (their own beats still echo) and cannot reach the JetStream
    /// quorum, which is on side 0.
    Route,
    /// Coordinator 0's connection to NATS stalls: it hears nothing, not even
    /// its own beat, and reaches no stream.
    CutCoordinator0,
}

/// Message kinds, for the mask of kinds the network may lose or duplicate.
pub const HB: u8 = 1;
pub const HB_ANSWER: u8 = 2;
pub const ANSWER: u8 = 4;
pub const ADVISORY: u8 = 8;
pub const PROBE: u8 = 16;
pub const UNSTORED: u8 = 32;

#[derive(Clone, Debug)]
pub struct Config {
    pub name: &'static str,
    pub fixes: Fixes,
    /// Each client's script, and its own session timeout in ticks.
    pub scripts: Vec<Vec<Op>>,
    pub client_timeout: Vec<u8>,
    pub coordinators: usize,
    pub keys: usize,
    /// Coordinator that owns each key at the start, while both hear each
    /// other.
    pub home: Vec<u8>,
    /// Partitioned coordinators (docs/SCALING.md): each reads only the
    /// requests of the keys it owns, so it learns sessions only from those.
    pub partitioned: bool,
    /// Times a key's ownership may move to the other coordinator (a ring
    /// change): the new owner catches up on the key's requests and acts at
    /// once, the old one acts on until the hand-over ends.
    pub moves: u8,
    /// A client's last release of a key goes unstored (protocol 1.8): a
    /// core message to every coordinator, taken only by one that acts on
    /// the key, lost with its copies, replayed by nobody. With no answer by
    /// the next tick the client releases in the bucket itself (a CAS on its
    /// hold: the Rust client's last resort, after a stored release).
    pub unstored: bool,
    /// Network side of each client, then of each coordinator (0 has the quorum).
    pub client_side: Vec<u8>,
    pub coord_side: Vec<u8>,
    /// Per coordinator: the clamp of a stated timeout (a live config change
    /// may leave them different for a while).
    pub max_timeout: Vec<u8>,
    pub min_timeout: u8,
    pub default_timeout: u8,
    pub reconnect_grace: u8,
    /// Lease (`Nats-TTL`) of a grant, in ticks.
    pub lease: u8,
    /// Faults happen before this tick; after it they stop.
    pub horizon: u8,
    /// Ticks after the horizon for the system to settle (liveness).
    pub settle: u8,
    pub losses: u8,
    pub loss_kinds: u8,
    pub dups: u8,
    pub dup_kinds: u8,
    pub lost_acks: u8,
    pub restarts: u8,
    pub reconnects: u8,
    /// Times a client's heartbeats may stop (until `Speak` or the horizon).
    pub silences: u8,
    /// Messages that may overtake an older one on their channel.
    pub reorders: u8,
    pub split: Option<(SplitKind, u8)>,
    /// Whether this run asserts that waiters are granted once faults stop
    /// (only where final answers are not lost: a lost grant answer leaves its
    /// waiter waiting until the client's own retry, which is not modelled).
    pub check_liveness: bool,
}

impl Config {
    pub fn clients(&self) -> usize {
        self.scripts.len()
    }

    pub fn end(&self) -> u8 {
        self.horizon + self.settle
    }

    /// A heartbeat's answer reaches the client in the same step as the
    /// heartbeat reaches the coordinator, unless this run may lose or
    /// duplicate answers (it only carries the send time of the beat it
    /// answers, so its own delay matters only as its loss).
    pub fn async_answers(&self) -> bool {
        (self.losses > 0 && self.loss_kinds & HB_ANSWER != 0)
            || (self.dups > 0 && self.dup_kinds & HB_ANSWER != 0)
    }

    pub fn longest_timeout(&self) -> u8 {
        *self
            .max_timeout
            .iter()
            .max()
            .expect("at least one coordinator")
    }
}
