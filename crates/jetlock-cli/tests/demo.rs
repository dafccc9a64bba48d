//! `jetlock demo` end to end, as a user runs it: the binary on the embedded
//! default, with chaos, judged by its JSON summary.

mod common;

use common::demo::{assert_no_process_of, count, invariant, DemoRun, INVARIANTS};

/// Runs `jetlock demo --workers 4 --accounts 50 --transfers <transfers>
/// --chaos <extra> --json` on the embedded default to its end.
fn chaos_demo(transfers: u64, extra: &[&str]) -> DemoRun {
    let transfers = transfers.to_string();
    let mut args = vec!["--workers", "4", "--accounts", "50"];
    args.extend(["--transfers", &transfers, "--chaos"]);
    args.extend(extra);
    common::demo::run(&args, &[])
}

#[test]
fn chaos_run_applies_every_transfer_exactly_once() {
    let run = chaos_demo(1000, &["--chaos-every", "1s"]);
    let s = &run.summary;
    assert_eq!(run.code, Some(0), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    assert_eq!(s["invariants_held"], true, "{s:#}");
    for name in INVARIANTS {
        assert!(invariant(s, name), "{name} failed: {s:#}");
    }
    assert_eq!(count(s, "applied"), 1000);
    // Chaos really struck, and each kind of strike exercised its defence.
    let kills = count(s, "kills");
    assert!(kills > 0 && count(s, "pauses") > 0, "{s:#}");
    // That strikes have no cap per run is shown without a clock in
    // `demo::service`'s tests: a count here would depend on how long the
    // run took.
    assert_eq!(count(s, "respawns"), kills, "every killed worker replaced");
    assert_eq!(count(s, "worker_crashes"), 0, "{s:#}");
    // A kill lands after the commit and before the ack: every one comes
    // back as a redelivery that the ledger must refuse.
    assert!(count(s, "duplicates_refused") >= kills, "{s:#}");
    // A pause outlasts the session: the sleeper's write meets the fence.
    assert!(count(s, "fenced_stale_writes") > 0, "{s:#}");
    // ... and its partitions go to the others while it sleeps.
    assert!(count(s, "partition_moves") > 0, "{s:#}");
    assert!(count(s, "acquisitions") >= 1000);
    assert_no_process_of(s["run"].as_str().expect("run id"));
}

/// Without chaos, the four workers end up owning the 8 partitions exactly
/// as rendezvous hashing over the four slots says, each working only its
/// own: every transfer applied once, each under its own partition.
#[test]
fn workers_own_the_partitions_rendezvous_hashing_gives_them() {
    let args = ["--workers", "4", "--accounts", "50", "--partitions", "8"];
    let run = common::demo::run(&[&args[..], &["--transfers", "1000"]].concat(), &[]);
    let s = &run.summary;
    assert_eq!(run.code, Some(0), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    for name in INVARIANTS {
        assert!(invariant(s, name), "{name} failed: {s:#}");
    }
    assert_eq!(count(s, "applied"), 1000);
    assert_eq!(count(s, "partitions"), 8);
    let slots = ["w0", "w1", "w2", "w3"];
    let mut expected = std::collections::BTreeMap::new();
    for p in 0..8 {
        let owner = jetlock::recipes::partitions::owner_of(p, slots).expect("members");
        *expected.entry(owner.to_owned()).or_insert(0u64) += 1;
    }
    let owners: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(s["partition_owners"].clone()).expect("owners by slot");
    assert_eq!(owners, expected, "{s:#}");
    assert!(owners.len() > 1, "{s:#}");
    assert_no_process_of(s["run"].as_str().expect("run id"));
}

/// The ledger's unique constraint on message ids is what keeps a transfer
/// whose worker was killed between the ledger's commit and its
/// `ProcessOnce` done-record from being applied again: without it, the run
/// fails.
#[test]
fn a_ledger_that_applies_redeliveries_fails_the_run() {
    let run = chaos_demo(500, &["--fault", "double-apply"]);
    let s = &run.summary;
    assert_eq!(run.code, Some(1), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    assert_eq!(s["invariants_held"], false);
    assert!(!invariant(s, "no transfer applied twice"), "{s:#}");
    assert!(
        run.stderr
            .contains("invariant failed: no transfer applied twice"),
        "stderr:\n{}",
        run.stderr
    );
    // The money still adds up: only process-once was broken.
    assert!(invariant(s, "total balance conserved"));
    assert_no_process_of(s["run"].as_str().expect("run id"));
}

#[test]
fn chaos_every_must_be_a_duration_of_at_least_10_ms() {
    for bad in ["1ms", "soon", "0s"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetlock"))
            .args(["demo", "--chaos", "--chaos-every", bad])
            .output()
            .expect("run jetlock demo");
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--chaos-every"), "{bad}: {stderr}");
    }
}
