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

use config::{Config, Fixes, Guard};
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

fn check(cfg: Config, stop_at_first: bool) -> Run {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let cfg = Config {
        horizon: env("MODEL_HORIZON").unwrap_or(cfg.horizon),
        settle: env("MODEL_SETTLE").unwrap_or(cfg.settle),
        ..cfg
    };
    let name = cfg.name;
    let started = Instant::now();
    let mut builder = System { cfg }.checker().threads(threads());
    if stop_at_first {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
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

fn mutated(cfg: Config, fixes: Fixes, what: &'static str) -> Config {
    Config {
        name: what,
        fixes,
        ..cfg
    }
}

/// Each fix reverted on its own scenario.
fn mutations() -> Vec<Config> {
    let all = Fixes::ALL;
    vec![
        mutated(
            scenarios::c1_replay(),
            Fixes {
                c1_request_gets_max: false,
                ..all
            },
            "mutation C1 (case 1)",
        ),
        mutated(
            scenarios::c2_reconnect(),
            Fixes {
                c2_reconnect_grace: false,
                ..all
            },
            "mutation C2 (case 2)",
        ),
        mutated(
            scenarios::c3_lost_ack(),
            Fixes {
                c3_recognise_landed: false,
                ..all
            },
            "mutation C3 (case 3)",
        ),
        mutated(
            scenarios::c4_route(),
            Fixes {
                guard: Guard::None,
                ..all
            },
            "mutation C4 (case 4)",
        ),
        mutated(
            scenarios::c5_mixed_clamp(),
            Fixes {
                c5_min_timeout: false,
                ..all
            },
            "mutation C5a (case 5)",
        ),
        mutated(
            scenarios::c5_unconfirmed(),
            Fixes {
                c5_deadline_from_first_beat: false,
                ..all
            },
            "mutation C5b (case 5)",
        ),
        mutated(
            scenarios::c5_cut(),
            Fixes {
                guard: Guard::EchoCutoff { cutoff: 3 },
                ..all
            },
            "mutation C5c (case 5): echo cut-off 3 > min timeout 2",
        ),
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
        let run = check(cfg, false);
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
    for cfg in fixed()
        .into_iter()
        .chain([scenarios::everything(), scenarios::three_clients()])
        .filter(selected)
    {
        let run = check(cfg, false);
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
        if check(cfg, true).failures.is_empty() {
            missed.push(name);
        }
    }
    assert!(missed.is_empty(), "no counterexample for {missed:?}");
}

/// A finding, not a fix: coordinators that clamp timeouts differently are
/// unsafe when the lowering one's answer is lost (docs/RELIABILITY.md).
#[test]
#[ignore = "a known gap of the contract: run with --release -- --ignored"]
fn differing_clamps_with_a_lost_beat_break_the_contract() {
    header();
    let run = check(scenarios::c5_mixed_clamp_with_loss(), true);
    assert!(
        !run.failures.is_empty(),
        "the gap is closed: move this run to the fixed ones"
    );
}
