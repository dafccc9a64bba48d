//! An exhaustive model check of the session, lease, handoff and revocation
//! protocol (issue 13, the session contract C1–C5 of docs/ARCHITECTURE.md),
//! with `stateright`.
//!
//! Layout: `config` (fixes, scenario knobs), `state` (the system state),
//! `client` and `coord` (each process's steps), `net` (who hears whom),
//! `system` (the `stateright::Model` and its properties), `scenarios` (the
//! runs).
//!
//! Time is one global tick, advanced by the `Tick` action. Every timeout is
//! a whole number of ticks, and each process's timer fires at its tick. The
//! contract's clock-rate assumption (0.9 of a timeout on the client's clock
//! ends before the whole timeout on a coordinator's clock, both measured from
//! the same event) is encoded as an ordering: a client's deadline of T ticks
//! fires at the tick `base + T`, and a coordinator may declare the session
//! dead only at a tick `> last_seen + T`, where `base <= last_seen` (the
//! client counts from when it *sent*, the coordinator from when it heard).
//! A message is delivered or lost before the tick after the one it was sent
//! in ends. Bucket writes are atomic CAS steps; a stale coordinator's CAS
//! conflicts and does nothing, so the model lets a coordinator plan only on
//! the bucket's current content.
//!
//! `cargo test --test model` runs a bounded set (CI). The exhaustive runs and
//! the mutation runs are ignored tests:
//! `cargo test --release --test model -- --ignored --nocapture`.

mod client;
mod config;
mod coord;
mod net;
mod scenarios;
mod state;
mod system;

use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model};

use config::{Alive, Config, Fixes, Guard};
use system::{Action, System};

struct Run {
    states: usize,
    depth: usize,
    time: Duration,
    /// Property name and the counterexample's trace.
    failures: Vec<(&'static str, String)>,
}

fn threads() -> usize {
    std::env::var("MODEL_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
}

/// `MODEL_ONLY=<part of a run's name>` runs only the runs that match.
fn selected(cfg: &Config) -> bool {
    std::env::var("MODEL_ONLY").map_or(true, |only| cfg.name.contains(&only))
}

/// Explores `cfg` breadth first; with `stop_at`, only until that property
/// has a counterexample.
fn check(cfg: Config, stop_at: Option<&'static str>) -> Run {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let cfg = Config {
        horizon: env("MODEL_HORIZON").unwrap_or(cfg.horizon),
        settle: env("MODEL_SETTLE").unwrap_or(cfg.settle),
        ..cfg
    };
    let name = cfg.name;
    let started = Instant::now();
    let mut builder = System { cfg }.checker().threads(threads());
    if let Some(property) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf([property].into()));
    }
    let checker = builder.spawn_bfs().join();
    let time = started.elapsed();
    let model = checker.model();
    let mut failures = Vec::new();
    for property in model.properties() {
        if !property.expectation.discovery_is_failure() {
            continue;
        }
        if let Some(path) = checker.discovery(property.name) {
            failures.push((property.name, trace(model, path.into_vec())));
        }
    }
    let run = Run {
        states: checker.unique_state_count(),
        depth: checker.max_depth(),
        time,
        failures,
    };
    println!(
        "| {name} | {} | {} | {:.1} s | {} |",
        run.states,
        run.depth,
        run.time.as_secs_f64(),
        if run.failures.is_empty() {
            "none".to_string()
        } else {
            run.failures
                .iter()
                .map(|f| f.0)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for (property, trace) in &run.failures {
        println!("counterexample to \"{property}\":\n{trace}");
    }
    run
}

/// The counterexample's steps, one line each, with the tick.
fn trace(model: &System, path: Vec<(state::State, Option<Action>)>) -> String {
    let mut out = String::new();
    for (s, action) in path {
        let Some(action) = action else { continue };
        let what = match &action {
            Action::Deliver(i) | Action::Duplicate(i) | Action::Lose(i) => {
                format!("{action:?} {:?}", s.net[*i].body)
            }
            Action::Step(d, k, _) => {
                format!("{action:?} {:?}", coord::plan(&model.cfg, &s, *d, *k))
            }
            _ => format!("{action:?}"),
        };
        out.push_str(&format!("  t={} {what}\n", s.now));
    }
    out
}

const EXCLUSION: &str = "no two clients believe they hold one key";

fn mutated(cfg: Config, fixes: Fixes, what: &'static str) -> Config {
    Config {
        name: what,
        fixes,
        ..cfg
    }
}

/// Each fix reverted on the smallest scenario that shows its case. In the
/// scenarios of C1, C4b and C5a the other coordinator still counts the
/// session alive when the deciding one judges it dead, so fix 8's round
/// (`agreement`) covers those cases too: their runs turn it off as well.
/// It covers them only while that coordinator is in the ring and answers
/// when the death is judged (not after a crash, nor during a partition
/// between the coordinators), so each fix still stands on its own.
fn mutations() -> Vec<Config> {
    let all = Fixes::ALL;
    vec![
        mutated(
            scenarios::c1_small(),
            Fixes {
                c1_request_gets_max: false,
                agreement: false,
                ..all
            },
            "mutation C1 (case 1), agreement off",
        ),
        mutated(
            scenarios::c2_small(),
            Fixes {
                c2_reconnect_grace: false,
                ..all
            },
            "mutation C2 (case 2)",
        ),
        mutated(
            scenarios::c3_small(),
            Fixes {
                c3_recognise_landed: false,
                ..all
            },
            "mutation C3 (case 3)",
        ),
        mutated(
            scenarios::c4_small(),
            Fixes {
                guard: Guard::None,
                ..all
            },
            "mutation C4 (case 4)",
        ),
        mutated(
            scenarios::c4_confirm(),
            Fixes {
                alive: Alive::Always,
                agreement: false,
                ..all
            },
            "mutation C4b: a cut-off coordinator confirms, agreement off",
        ),
        mutated(
            scenarios::c5a_small(),
            Fixes {
                c5_min_timeout: false,
                agreement: false,
                ..all
            },
            "mutation C5a (case 5), agreement off",
        ),
        mutated(
            scenarios::c5b_small(),
            Fixes {
                c5_deadline_from_first_beat: false,
                ..all
            },
            "mutation C5b (case 5)",
        ),
        mutated(
            scenarios::c5c_small(),
            Fixes {
                guard: Guard::EchoCutoff { cutoff: 3 },
                ..all
            },
            "mutation C5c (case 5): echo cut-off 3 > min timeout 2",
        ),
        mutated(
            scenarios::c8_small(),
            Fixes {
                agreement: false,
                ..all
            },
            "mutation 8: no agreement on deaths",
        ),
        mutated(
            scenarios::partition_two_owners(),
            Fixes {
                agreement: false,
                ..all
            },
            "mutation 8, partitioned: each owner decides its holders' deaths alone",
        ),
    ]
}

/// The mutations' scenarios with every fix on.
fn small() -> Vec<Config> {
    vec![
        scenarios::c1_small(),
        scenarios::c2_small(),
        scenarios::c3_small(),
        scenarios::c4_small(),
        scenarios::c4_confirm(),
        scenarios::c5a_small(),
        scenarios::c5b_small(),
        scenarios::c5c_small(),
        scenarios::c8_small(),
    ]
}

fn fixed() -> Vec<Config> {
    vec![
        scenarios::c1_replay(),
        scenarios::c2_reconnect(),
        scenarios::c3_lost_ack(),
        scenarios::c4_route(),
        scenarios::c5_mixed_clamp(),
        scenarios::c5_unconfirmed(),
        scenarios::c5_cut(),
    ]
}

/// The CI run with every fix on: it must explore at least this many states
/// (a change that cuts the scenario short fails here, not silently).
const CI_FLOOR: usize = 20_000;

/// Runs in CI (debug build): the reconnect, the lost-ack and the lost
/// heartbeat copy scenarios of the mutation runs, with every fix on.
#[test]
fn ci_scenarios_hold() {
    hold_in_ci([
        scenarios::c2_small(),
        scenarios::c3_small(),
        scenarios::c8_small(),
    ]);
}

/// Every property holds in each of `runs`, and each explores at least
/// [`CI_FLOOR`] states.
fn hold_in_ci(runs: impl IntoIterator<Item = Config>) {
    header();
    for cfg in runs {
        let run = check(cfg, None);
        assert!(
            run.failures.is_empty(),
            "a property failed with every fix on"
        );
        assert!(
            run.states >= CI_FLOOR,
            "only {} states: the scenario no longer explores",
            run.states
        );
    }
}

/// Runs in CI (debug build): with C3 reverted, the checker finds the
/// overlap (the model still catches what it is for).
#[test]
fn ci_mutation_c3_is_caught() {
    assert_caught("mutation C3 (case 3)");
}

/// Runs in CI (debug build): with fix 8's agreement round off, a heartbeat
/// copy lost to one coordinator only ends a session its client still
/// counts alive.
#[test]
fn ci_mutation_agreement_is_caught() {
    assert_caught("mutation 8: no agreement on deaths");
}

/// Runs the mutation of that name and asserts that the overlap is found.
fn assert_caught(name: &str) {
    header();
    let cfg = mutations()
        .into_iter()
        .find(|m| m.name == name)
        .expect("a mutation of that name");
    let run = check(cfg, Some(EXCLUSION));
    assert!(
        run.failures.iter().any(|f| f.0 == EXCLUSION),
        "{name}: no overlap found"
    );
}

fn header() {
    println!("| run | states | depth | time | counterexamples |\n|---|---|---|---|---|");
}

/// Every scenario with all fixes on, with faults in the first tick. About
/// a minute per scenario in a release build and far longer in CI's debug
/// build, so it is run by hand like the others
/// (`cargo test --release --test model -- --ignored`).
#[test]
#[ignore = "minutes: run with --release -- --ignored"]
fn bounded_all_fixes_hold() {
    header();
    for cfg in fixed().into_iter().filter(selected) {
        let cfg = Config {
            horizon: 2,
            settle: 7,
            ..cfg
        };
        let run = check(cfg, None);
        assert!(
            run.failures.is_empty(),
            "a property failed with every fix on"
        );
    }
}

#[test]
#[ignore = "exhaustive: minutes; run with --release -- --ignored"]
fn exhaustive_all_fixes_hold() {
    header();
    for cfg in small()
        .into_iter()
        .chain(fixed())
        .chain([scenarios::everything(), scenarios::three_clients()])
        .filter(selected)
    {
        let run = check(cfg, None);
        assert!(
            run.failures.is_empty(),
            "a property failed with every fix on"
        );
    }
}

#[test]
#[ignore = "mutation runs: run with --release -- --ignored"]
fn every_mutation_is_caught() {
    header();
    let mut missed = Vec::new();
    for cfg in mutations().into_iter().filter(selected) {
        let name = cfg.name;
        let run = check(cfg, Some(EXCLUSION));
        if !run.failures.iter().any(|f| f.0 == EXCLUSION) {
            missed.push(name);
        }
    }
    assert!(missed.is_empty(), "no counterexample for {missed:?}");
}

/// Findings, not fixes: rules of the code (or of a config change) that the
/// model shows unsafe (docs/RELIABILITY.md, "Findings"). Each runs with fix
/// 8's round off: in these scenarios the coordinator that heard the client
/// is back in the ring and answers when the other judges, which covers
/// them here; in the code it covers them only while that coordinator is in
/// the ring when the death is judged (a crash, or a partition that lasts
/// past the death, takes it out).
fn findings() -> Vec<Config> {
    let no_agreement = Fixes {
        agreement: false,
        ..Fixes::ALL
    };
    vec![
        mutated(
            scenarios::c4_confirm(),
            Fixes {
                alive: Alive::HeldUntilProof,
                ..no_agreement
            },
            "finding: alive answers held through a partition go after it",
        ),
        mutated(
            scenarios::c4_confirm(),
            Fixes {
                alive: Alive::AtArrival,
                ..no_agreement
            },
            "finding: alive answers read after a partition go",
        ),
        Config {
            fixes: no_agreement,
            ..scenarios::c5_mixed_clamp_with_loss()
        },
    ]
}

#[test]
#[ignore = "known gaps: run with --release -- --ignored"]
fn every_finding_still_breaks_the_contract() {
    header();
    let mut closed = Vec::new();
    for cfg in findings().into_iter().filter(selected) {
        let name = cfg.name;
        let run = check(cfg, Some(EXCLUSION));
        if !run.failures.iter().any(|f| f.0 == EXCLUSION) {
            closed.push(name);
        }
    }
    assert!(
        closed.is_empty(),
        "closed: {closed:?}; move them to the fixed runs"
    );
}

const LIVENESS: &str = "a waiter is granted once faults stop";

/// Partitioned coordinators (docs/SCALING.md): each reads only its keys'
/// requests, keys move between them, and sessions stay global.
fn partitioned() -> Vec<Config> {
    vec![
        scenarios::partition_move(),
        scenarios::partition_move_restart(),
        scenarios::partition_two_owners(),
    ]
}

#[test]
#[ignore = "exhaustive: minutes; run with --release -- --ignored"]
fn partitioned_coordinators_hold() {
    header();
    for cfg in partitioned().into_iter().filter(selected) {
        let run = check(cfg, None);
        assert!(
            run.failures.is_empty(),
            "a property failed with every fix on"
        );
    }
}

/// Runs in CI (debug build): a move with a lost ack, and a handoff across
/// a move, with every fix on.
#[test]
fn ci_partitioned_coordinators_hold() {
    hold_in_ci([
        scenarios::partition_small(),
        scenarios::partition_handoff_small(),
    ]);
}

/// Runs in CI (debug build): a new owner that acts on a moved key knowing
/// only the requests it reads from then on never grants the waiter that
/// queued before the move.
#[test]
fn ci_mutation_no_catch_up_is_caught() {
    header();
    let cfg = mutated(
        scenarios::partition_handoff_small(),
        Fixes {
            catch_up: false,
            ..Fixes::ALL
        },
        "mutation: a new owner does not catch up",
    );
    let run = check(cfg, Some(LIVENESS));
    assert!(
        run.failures.iter().any(|f| f.0 == LIVENESS),
        "no stranded waiter found"
    );
}

const UNSTORED_HELD: &str = "an unstored release is answered released only once its hold ended";

#[test]
#[ignore = "exhaustive: minutes; run with --release -- --ignored"]
fn unstored_releases_hold() {
    let runs = [scenarios::unstored(), scenarios::unstored_restart()];
    hold_in_ci(runs.into_iter().filter(selected));
}

/// Runs in CI (debug build): unstored releases lost, or carried out across
/// a move, with every fix on; liveness is checked.
#[test]
fn ci_unstored_releases_hold() {
    hold_in_ci([scenarios::unstored_small()]);
}

/// Runs in CI (debug build): an engine that takes an unstored release for
/// one a write applied (its missing sequence read as 0) answers it
/// released while its hold goes on.
#[test]
fn ci_mutation_unstored_release_taken_for_applied_is_caught() {
    header();
    let cfg = mutated(
        scenarios::unstored_small(),
        Fixes {
            unstored_unnamed: false,
            ..Fixes::ALL
        },
        "mutation: an unstored release taken for applied",
    );
    let run = check(cfg, Some(UNSTORED_HELD));
    assert!(
        run.failures.iter().any(|f| f.0 == UNSTORED_HELD),
        "no wrong release found"
    );
}
