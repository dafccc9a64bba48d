//! An exhaustive model check of the rule read/write locks rest on
//! (`client/shared.rs`, docs/ARCHITECTURE.md "Read/write locks and
//! semaphores"), with `stateright`.
//!
//! The bucket is one linearizable store: a reader's key write, the gate's
//! grant and release and every read are atomic steps, in one order, as
//! writes to one stream and reads from its leader are. The gate is a mutex
//! (an ordinary lock: its own exclusion is proven elsewhere, so its queue
//! order is not modelled). A process may crash at any step: it stops
//! believing at once, and its keys stay until a later expiry step, as a
//! lease outlives its holder's belief. The writer's watch of the reader keys
//! is modelled as a read of the current keys (it shows the stream in order,
//! from after its grant).
//!
//! Checked: no writer believes beside a reader or another writer. Each
//! mechanism is shown needed by a mutation the checker must catch: a reader
//! that reads the gate before writing its key, and a writer that does not
//! wait for reader keys.

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
    Writing,
    Done,
    Crashed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    gate: Option<usize>,
    reader_keys: BTreeSet<usize>,
    pcs: Vec<Pc>,
    rounds: Vec<u8>,
    crashes: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Step(usize),
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
}

impl RwRule {
    fn step(&self, s: &mut State, p: usize) -> bool {
        let pc = s.pcs[p];
        let next = match (self.roles[p], pc) {
            (_, Pc::Done | Pc::Crashed) => return false,
            (Role::Reader, Pc::Start) if self.key_first => {
                s.reader_keys.insert(p);
                Pc::CheckGate
            }
            (Role::Reader, Pc::Start) => match s.gate {
                None => Pc::WriteKeyLate,
                Some(_) => Pc::WaitGate,
            },
            (Role::Reader, Pc::WriteKeyLate) => {
                s.reader_keys.insert(p);
                Pc::Reading
            }
            (Role::Reader, Pc::CheckGate) => match s.gate {
                None => Pc::Reading,
                Some(_) => Pc::BackOff,
            },
            (Role::Reader, Pc::BackOff) => {
                s.reader_keys.remove(&p);
                Pc::WaitGate
            }
            (_, Pc::WaitGate) | (Role::Writer, Pc::Start) => {
                if s.gate.is_some() {
                    return false;
                }
                s.gate = Some(p);
                match self.roles[p] {
                    Role::Reader => Pc::TransitKey,
                    Role::Writer => Pc::Drain,
                }
            }
            (Role::Reader, Pc::TransitKey) => {
                s.reader_keys.insert(p);
                Pc::PassGate
            }
            (Role::Reader, Pc::PassGate) => {
                s.gate = None;
                Pc::Reading
            }
            (Role::Reader, Pc::Reading) => {
                s.reader_keys.remove(&p);
                self.finish(s, p)
            }
            (Role::Writer, Pc::Drain) => {
                if self.drain && !s.reader_keys.is_empty() {
                    return false;
                }
                Pc::Writing
            }
            (Role::Writer, Pc::Writing) => {
                s.gate = None;
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
            pcs: vec![Pc::Start; self.roles.len()],
            rounds: vec![0; self.roles.len()],
            crashes: 0,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        for p in 0..self.roles.len() {
            let mut probe = s.clone();
            if self.step(&mut probe, p) {
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
            Action::Crash(p) => {
                s.pcs[p] = Pc::Crashed;
                s.crashes += 1;
            }
            Action::Expire(p) => {
                if s.gate == Some(p) {
                    s.gate = None;
                }
                s.reader_keys.remove(&p);
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
    }
}

#[test]
fn readers_and_writers_never_overlap_in_any_order_of_steps_or_crash() {
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
