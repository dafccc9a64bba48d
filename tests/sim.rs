//! Deterministic simulation of the real coordinator engine and the client's
//! session beliefs (issue 13, deliverable 3).
//!
//! Real code: `jetlock::coordinator::Engine` (every decision a coordinator
//! makes), the protocol's bodies and parsing (`jetlock::protocol`), the
//! record type. Simulated: the NATS network, the bucket and the request
//! stream, the clocks, the coordinator runtime's glue (`coord.rs`), and the
//! client's worker; the client's session rules are `belief.rs`.
//!
//! One seed is one run: 1–3 coordinators, 2–4 clients, 1–2 keys, faults
//! for 30 s of simulated time, then 60 s without faults in which every
//! client must get every key. After every step: no two clients believe
//! they hold one key, tokens believed strictly increase per key, no request
//! is answered twice with different outcomes. A failing seed is replayed
//! with a trace and reported with its last lines.
//!
//! `cargo test --features sim --test sim` runs a short seed range. The long
//! run: `JETLOCK_SIM_SEEDS=0..2000 JETLOCK_SIM_FAULTS=all cargo test
//! --release --features sim --test sim long_run -- --ignored --nocapture`
//! (`JETLOCK_SIM_STEPS` caps the steps of one seed).

#[path = "sim/belief.rs"]
mod belief;
#[path = "sim/bucket.rs"]
mod bucket;
#[path = "sim/check.rs"]
mod check;
#[path = "sim/client.rs"]
mod client;
#[path = "sim/coord.rs"]
mod coord;
#[path = "sim/world.rs"]
mod world;

use world::{Counts, Faults, SimConfig, World};

const STEPS_PER_SEED: u64 = 5_000_000;

/// Runs one seed; a failure carries the violations and the trace's tail.
fn run(seed: u64, faults: &Faults, max_steps: u64) -> Result<Counts, String> {
    let cfg = SimConfig::from_seed(seed, faults.clone());
    let mut w = World::new(cfg.clone(), false);
    if w.run(max_steps) {
        return Ok(w.counts);
    }
    let mut replay = World::new(cfg.clone(), true);
    replay.run(max_steps);
    Err(format!(
        "seed {seed} ({} coordinators, {} clients, {} keys) failed after {} steps:\n{}\n--- last lines of its trace ---\n{}",
        cfg.coordinators,
        cfg.clients,
        cfg.keys,
        w.counts.steps,
        w.checker.violations.join("\n"),
        replay.trace_tail(60)
    ))
}

fn run_range(
    seeds: std::ops::Range<u64>,
    faults: &Faults,
    max_steps: u64,
) -> (Counts, Vec<String>) {
    let mut total = Counts::default();
    let mut failures = Vec::new();
    for seed in seeds {
        match run(seed, faults, max_steps) {
            Ok(c) => add(&mut total, &c),
            Err(e) => failures.push(e),
        }
    }
    (total, failures)
}

fn add(t: &mut Counts, c: &Counts) {
    t.steps += c.steps;
    t.lost += c.lost;
    t.duplicated += c.duplicated;
    t.crashes += c.crashes;
    t.reconnects += c.reconnects;
    t.partitions += c.partitions;
    t.write_acks_lost += c.write_acks_lost;
    t.writes_lost += c.writes_lost;
    t.publish_acks_lost += c.publish_acks_lost;
    t.grants += c.grants;
    t.session_ends += c.session_ends;
}

fn faults_named(name: &str) -> Faults {
    match name {
        "network" => Faults::network(),
        "all" => Faults::all(),
        other => panic!("JETLOCK_SIM_FAULTS={other}: network or all"),
    }
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::from_seed(7, Faults::all());
    let mut a = World::new(cfg.clone(), true);
    let mut b = World::new(cfg, true);
    a.run(200_000);
    b.run(200_000);
    assert_eq!(a.counts.steps, b.counts.steps);
    // Records carry the wall clock of the grant (for people only).
    let strip = |w: &World| {
        let t = w.trace_tail(usize::MAX);
        t.split("acquired_ms: ")
            .map(|s| s.trim_start_matches(|c: char| c.is_ascii_digit()))
            .collect::<String>()
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn network_faults_short_seed_range() {
    let (total, failures) = run_range(0..20, &Faults::network(), STEPS_PER_SEED);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(total.grants > 0 && total.lost > 0, "{total:?}");
}

/// The long run (see the module docs); prints the totals.
#[test]
#[ignore]
fn long_run() {
    let seeds = std::env::var("JETLOCK_SIM_SEEDS").unwrap_or_else(|_| "0..200".into());
    let (a, b) = seeds.split_once("..").expect("JETLOCK_SIM_SEEDS=a..b");
    let seeds = a.parse().expect("a number")..b.parse().expect("a number");
    let steps =
        std::env::var("JETLOCK_SIM_STEPS").map_or(STEPS_PER_SEED, |s| s.parse().expect("a number"));
    let name = std::env::var("JETLOCK_SIM_FAULTS").unwrap_or_else(|_| "all".into());
    let started = std::time::Instant::now();
    let n = seeds.end - seeds.start;
    let (total, failures) = run_range(seeds.clone(), &faults_named(&name), steps);
    println!(
        "faults {name}, seeds {seeds:?}: {} failed of {n}, {:.1} s\n{total:#?}",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &failures {
        println!("\n{f}");
    }
    assert!(failures.is_empty(), "{} seeds failed", failures.len());
}

/// Prints the whole trace of `JETLOCK_SIM_SEED` (faults from
/// `JETLOCK_SIM_FAULTS`, default all).
#[test]
#[ignore]
fn trace_seed() {
    let seed = std::env::var("JETLOCK_SIM_SEED").map_or(0, |s| s.parse().expect("a number"));
    let name = std::env::var("JETLOCK_SIM_FAULTS").unwrap_or_else(|_| "all".into());
    let mut w = World::new(SimConfig::from_seed(seed, faults_named(&name)), true);
    let ok = w.run(STEPS_PER_SEED);
    println!("{}", w.trace_tail(usize::MAX));
    println!("{:?}\n{:?}", w.checker.violations, w.counts);
    assert!(ok);
}
