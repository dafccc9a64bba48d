//! An exhaustive model check of the rule read/write locks rest on
//! (`client/shared.rs`, docs/ARCHITECTURE.md "Read/write locks and
//! semaphores"), with `stateright`.
//!
//! The bucket is one stream: a reader's key write, the gate's grant and
//! release, and an expiry are atomic steps in one order, each with the next
//! sequence number. Reads are not: a paused, deposed stream leader answers
//! with what it had (`tests/stale_reads.rs`), so a read may show the gate,
//! or the reader keys with their last sequence, as they were at any earlier
//! point. What lets someone in is therefore confirmed by a conditional write
//! (`LockStore::confirm`): it commits only if the last sequence of what was
//! read is still the one the read showed, checked at the commit, in the
//! stream's order. The gate is a mutex (an ordinary lock decided by
//! compare-and-swap: its own exclusion is proven elsewhere, so its queue
//! order is not modelled). A process may crash at any step: it stops
//! believing at once, and its keys stay until a later expiry step, as a
//! lease outlives its holder's belief. The writer's watch of the reader keys
//! is a read like the others (stale or not).
//!
//! Checked: no writer believes beside a reader or another writer. Each
//! mechanism is shown needed by a mutation the checker must catch: a reader
//! that reads the gate before writing its key, a writer that does not wait
//! for reader keys, and reads believed without their confirmation. The
//! confirmation mark's own write is left out: it changes neither the gate's
//! nor the reader keys' last sequence, which is all a confirmation compares.

use stateright::{Checker, Model, Property};
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Reader,
    Writer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pc {
    Start,
    /// Reader: its key is written; the gate is read next.
    CheckGate,
    /// Reader: the gate read vacant; confirmed next, which commits only if
    /// the gate's last sequence is still the one read (`true` until the
    /// gate is written).
    ConfirmGate(bool),
    /// Reader (mutation): the gate read vacant; its key is written next.
    WriteKeyLate,
    BackOff,
    WaitGate,
    /// Reader holding the gate: its key is written next.
    TransitKey,
    PassGate,
    Reading,
    /// Writer holding the gate, waiting for reader keys to go.
    Drain,
    /// Writer: the reader keys read as none; confirmed next (`true` until
    /// a reader key is written).
    ConfirmDrain(bool),
    Writing,
    Done,
    Crashed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    gate: Option<usize>,
    reader_keys: BTreeSet<usize>,
    /// Every gate and every set of reader keys there has been: what a
    /// stale read may show (kept only when reads may be stale).
    gates_seen: BTreeSet<Option<usize>>,
    keys_seen: BTreeSet<BTreeSet<usize>>,
    pcs: Vec<Pc>,
    rounds: Vec<u8>,
    crashes: u8,
}

/// What a read shows: a value, and whether its last sequence is the
/// current one (a stale view's sequence is older, since every write takes
/// the next sequence of the stream).
type View<T> = (T, bool);

impl State {
    fn set_gate(&mut self, gate: Option<usize>, stale: bool) {
        self.gate = gate;
        if stale {
            self.gates_seen.insert(gate);
        }
        // The gate's last sequence moved: a confirmation expecting the
        // one before is refused.
        for pc in &mut self.pcs {
            if let Pc::ConfirmGate(current) = pc {
                *current = false;
            }
        }
    }

    fn set_key(&mut self, p: usize, held: bool, stale: bool) {
        if held {
            self.reader_keys.insert(p);
        } else {
            self.reader_keys.remove(&p);
        }
        if stale {
            self.keys_seen.insert(self.reader_keys.clone());
        }
        for pc in &mut self.pcs {
            if let Pc::ConfirmDrain(current) = pc {
                *current = false;
            }
        }
    }

    /// What a read of the gate may show: the current gate, or with stale
    /// reads any gate there has been.
    fn gate_views(&self) -> Vec<View<Option<usize>>> {
        let mut views = vec![(self.gate, true)];
        views.extend(self.gates_seen.iter().map(|g| (*g, false)));
        views
    }

    fn keys_views(&self) -> Vec<View<BTreeSet<usize>>> {
        let mut views = vec![(self.reader_keys.clone(), true)];
        views.extend(self.keys_seen.iter().map(|k| (k.clone(), false)));
        views
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Step(usize),
    /// A read by a process, showing the `usize`-th view it may see.
    Read(usize, usize),
    Crash(usize),
    Expire(usize),
}

struct RwRule {
    roles: Vec<Role>,
    rounds: u8,
    crashes: u8,
    /// The reader writes its key before it reads the gate (the rule).
    key_first: bool,
    /// The writer waits for reader keys to go (the rule).
    drain: bool,
    /// Reads may be stale (a deposed leader's answer).
    stale: bool,
    /// What a read lets in is confirmed by a conditional write (the rule):
    /// a reader's vacant gate, and a writer's drained reader keys.
    confirm_gate: bool,
    confirm_drain: bool,
}

impl RwRule {
    /// Whether process `p`'s next step is a read.
    fn reads(&self, s: &State, p: usize) -> bool {
        matches!(
            (self.roles[p], s.pcs[p]),
            (Role::Reader, Pc::CheckGate) | (Role::Writer, Pc::Drain)
        ) || (self.roles[p] == Role::Reader && s.pcs[p] == Pc::Start && !self.key_first)
    }

    /// How many views `p`'s read may show.
    fn views(&self, s: &State, p: usize) -> usize {
        match self.roles[p] {
            Role::Reader => s.gate_views().len(),
            Role::Writer => s.keys_views().len(),
        }
    }

    /// `p`'s read, showing its `view`-th view.
    fn read(&self, s: &mut State, p: usize, view: usize) -> bool {
        let next = match (self.roles[p], s.pcs[p]) {
            (Role::Reader, Pc::Start) => match s.gate_views()[view] {
                (None, _) => Pc::WriteKeyLate,
                (Some(_), _) => Pc::WaitGate,
            },
            (Role::Reader, Pc::CheckGate) => match s.gate_views()[view] {
                (None, _) if !self.confirm_gate => Pc::Reading,
                (None, current) => Pc::ConfirmGate(current),
                (Some(_), _) => Pc::BackOff,
            },
            (Role::Writer, Pc::Drain) => {
                let (keys, current) = &s.keys_views()[view];
                if self.drain && !keys.is_empty() {
                    // Keys held: the writer waits for a later read.
                    return false;
                }
                if self.confirm_drain {
                    Pc::ConfirmDrain(*current)
                } else {
                    Pc::Writing
                }
            }
            _ => return false,
        };
        s.pcs[p] = next;
        true
    }

    fn step(&self, s: &mut State, p: usize) -> bool {
        let pc = s.pcs[p];
        let next = match (self.roles[p], pc) {
            (_, Pc::Done | Pc::Crashed) => return false,
            (Role::Reader, Pc::Start) if self.key_first => {
                s.set_key(p, true, self.stale);
                Pc::CheckGate
            }
            (Role::Reader, Pc::WriteKeyLate) => {
                s.set_key(p, true, self.stale);
                Pc::Reading
            }
            // The conditional write: it commits only if the gate's last
            // sequence is still the one read; refused, the gate is read
            // again.
            (Role::Reader, Pc::ConfirmGate(current)) => {
                if current {
                    Pc::Reading
                } else {
                    Pc::CheckGate
                }
            }
            (Role::Reader, Pc::BackOff) => {
                s.set_key(p, false, self.stale);
                Pc::WaitGate
            }
            (_, Pc::WaitGate) | (Role::Writer, Pc::Start) => {
                if s.gate.is_some() {
                    return false;
                }
                s.set_gate(Some(p), self.stale);
                match self.roles[p] {
                    Role::Reader => Pc::TransitKey,
                    Role::Writer => Pc::Drain,
                }
            }
            (Role::Reader, Pc::TransitKey) => {
                s.set_key(p, true, self.stale);
                Pc::PassGate
            }
            (Role::Reader, Pc::PassGate) => {
                s.set_gate(None, self.stale);
                Pc::Reading
            }
            (Role::Reader, Pc::Reading) => {
                s.set_key(p, false, self.stale);
                self.finish(s, p)
            }
            (Role::Writer, Pc::ConfirmDrain(current)) => {
                if current {
                    Pc::Writing
                } else {
                    Pc::Drain
                }
            }
            (Role::Writer, Pc::Writing) => {
                s.set_gate(None, self.stale);
                self.finish(s, p)
            }
            _ => return false,
        };
        s.pcs[p] = next;
        true
    }

    fn finish(&self, s: &mut State, p: usize) -> Pc {
        s.rounds[p] += 1;
        if s.rounds[p] == self.rounds {
            Pc::Done
        } else {
            Pc::Start
        }
    }
}

impl Model for RwRule {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            gate: None,
            reader_keys: BTreeSet::new(),
            gates_seen: if self.stale {
                BTreeSet::from([None])
            } else {
                BTreeSet::new()
            },
            keys_seen: if self.stale {
                BTreeSet::from([BTreeSet::new()])
            } else {
                BTreeSet::new()
            },
            pcs: vec![Pc::Start; self.roles.len()],
            rounds: vec![0; self.roles.len()],
            crashes: 0,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        for p in 0..self.roles.len() {
            if self.reads(s, p) {
                for view in 0..self.views(s, p) {
                    if self.read(&mut s.clone(), p, view) {
                        out.push(Action::Read(p, view));
                    }
                }
            } else if self.step(&mut s.clone(), p) {
                out.push(Action::Step(p));
            }
            if s.crashes < self.crashes && !matches!(s.pcs[p], Pc::Done | Pc::Crashed) {
                out.push(Action::Crash(p));
            }
            if s.pcs[p] == Pc::Crashed && (s.gate == Some(p) || s.reader_keys.contains(&p)) {
                out.push(Action::Expire(p));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Step(p) => {
                self.step(&mut s, p);
            }
            Action::Read(p, view) => {
                self.read(&mut s, p, view);
            }
            Action::Crash(p) => {
                s.pcs[p] = Pc::Crashed;
                s.crashes += 1;
            }
            // An expiry is a write too: the server's delete marker.
            Action::Expire(p) => {
                if s.gate == Some(p) {
                    s.set_gate(None, self.stale);
                }
                if s.reader_keys.contains(&p) {
                    s.set_key(p, false, self.stale);
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no writer beside anyone", |_, s: &State| {
                let writing = s.pcs.iter().filter(|pc| **pc == Pc::Writing).count();
                let reading = s.pcs.iter().filter(|pc| **pc == Pc::Reading).count();
                writing == 0 || (writing == 1 && reading == 0)
            }),
            Property::sometimes("a confirmation about to be refused", |_, s: &State| {
                s.pcs
                    .iter()
                    .any(|pc| matches!(pc, Pc::ConfirmGate(false) | Pc::ConfirmDrain(false)))
            }),
            Property::sometimes("two readers at once", |_, s: &State| {
                s.pcs.iter().filter(|pc| **pc == Pc::Reading).count() >= 2
            }),
            Property::sometimes("a write after a read", |m: &RwRule, s: &State| {
                s.pcs
                    .iter()
                    .zip(&m.roles)
                    .any(|(pc, r)| *r == Role::Writer && *pc == Pc::Writing)
                    && s.rounds
                        .iter()
                        .zip(&m.roles)
                        .any(|(n, r)| *r == Role::Reader && *n > 0)
            }),
        ]
    }
}

fn check(rule: RwRule) -> (usize, Option<String>) {
    let checker = rule.checker().spawn_bfs().join();
    let bad = checker
        .discovery("no writer beside anyone")
        .map(|path| format!("{:?}", path.into_actions()));
    let readers = checker
        .model()
        .roles
        .iter()
        .filter(|r| **r == Role::Reader)
        .count();
    let mut reachable = vec!["a write after a read"];
    if readers >= 2 {
        reachable.push("two readers at once");
    }
    let model = checker.model();
    if model.stale && model.confirm_gate && model.confirm_drain {
        reachable.push("a confirmation about to be refused");
    }
    for what in reachable {
        assert!(checker.discovery(what).is_some(), "{what} never happens");
    }
    (checker.unique_state_count(), bad)
}

fn rule(roles: Vec<Role>) -> RwRule {
    RwRule {
        roles,
        rounds: 2,
        crashes: 1,
        key_first: true,
        drain: true,
        stale: true,
        confirm_gate: true,
        confirm_drain: true,
    }
}

#[test]
fn readers_and_writers_never_overlap_in_any_order_of_steps_or_crash_or_stale_read() {
    use Role::*;
    for roles in [
        vec![Reader, Reader, Writer],
        vec![Reader, Writer, Writer],
        vec![Reader, Reader, Writer, Writer],
    ] {
        let (states, bad) = check(rule(roles.clone()));
        assert!(bad.is_none(), "{roles:?}: {}", bad.unwrap());
        println!("{roles:?}: {states} states, no overlap");
    }
}

#[test]
fn a_reader_that_reads_the_gate_before_writing_its_key_overlaps_a_writer() {
    use Role::*;
    let (_, bad) = check(RwRule {
        key_first: false,
        ..rule(vec![Reader, Reader, Writer])
    });
    assert!(bad.is_some(), "the mutation must be caught");
}

#[test]
fn a_writer_that_does_not_wait_for_reader_keys_overlaps_a_reader() {
    use Role::*;
    let (_, bad) = check(RwRule {
        drain: false,
        ..rule(vec![Reader, Reader, Writer])
    });
    assert!(bad.is_some(), "the mutation must be caught");
}

#[test]
fn stale_reads_believed_without_confirmation_let_a_writer_beside_a_reader() {
    use Role::*;
    let (_, bad) = check(RwRule {
        confirm_gate: false,
        confirm_drain: false,
        ..rule(vec![Reader, Reader, Writer])
    });
    println!("counterexample: {}", bad.as_deref().unwrap_or("none"));
    assert!(bad.is_some(), "the mutation must be caught");
}

/// The rule without confirmations holds when every read is current: what
/// the confirmations restore.
#[test]
fn current_reads_need_no_confirmation() {
    use Role::*;
    let (_, bad) = check(RwRule {
        stale: false,
        confirm_gate: false,
        confirm_drain: false,
        ..rule(vec![Reader, Reader, Writer])
    });
    assert!(bad.is_none(), "{}", bad.unwrap());
}

/// Each confirmation is needed on its own: the reader's of the gate, and
/// the writer's of the reader keys.
#[test]
fn each_confirmation_is_needed() {
    use Role::*;
    let (_, bad) = check(RwRule {
        confirm_gate: false,
        ..rule(vec![Reader, Writer])
    });
    assert!(bad.is_some(), "a reader believing a stale vacant gate");
    let (_, bad) = check(RwRule {
        confirm_drain: false,
        ..rule(vec![Reader, Writer])
    });
    assert!(bad.is_some(), "a writer believing stale reader keys");
}
