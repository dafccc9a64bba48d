//! `jetlock bench`, as short as it goes: its JSON report has the rows and
//! fields scripts read. No number is judged here (a loaded CI machine); the
//! full run is, in README.

mod common;

use common::jetlock;
use std::process::Stdio;
use std::sync::Mutex;

/// One bench at a time. Run side by side on two cores (the curve's three
/// servers and coordinators, the election's kills, the throughput's busy
/// clients), one starved the others' coordinators past the 900 ms default
/// session timeout, and a client rightly ended its session.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `jetlock bench --quick --json` with `args`: its JSON report, once it
/// exited 0.
fn quick_bench(args: &[&str]) -> serde_json::Value {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = jetlock()
        .args(["bench", "--quick", "--json"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run jetlock bench");
    assert!(out.status.success(), "jetlock bench failed");
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The bench's W2, sessions and memory workloads, as short as they go:
/// every W2 row has pairs and a ratio to its raw row, the sessions' beats
/// were answered, and the report names the machine. Its numbers are not
/// judged here (a loaded CI machine); the full run is.
#[test]
fn a_short_bench_reports_throughput_sessions_and_memory_as_json() {
    let report = quick_bench(&[
        "--only",
        "throughput,sessions,memory",
        "--durability",
        "default",
        "--throughput",
        "1s",
        "--clients",
        "4",
        "--max-held",
        "1000",
    ]);
    assert!(report["machine"]["cpus"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(report["durability"], serde_json::json!(["default"]));
    let rows = report["throughput"].as_array().expect("throughput rows");
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in rows {
        assert!(row["pairs"].as_u64().is_some_and(|n| n > 0), "{row}");
        assert_eq!(row["tasks"], 4);
        let raw = row["workload"] == "raw kv pair";
        assert_eq!(row["ratio_to_raw"].is_null(), raw, "{row}");
    }
    let sessions = report["sessions"].as_array().expect("sessions rows");
    let counts: Vec<_> = sessions.iter().map(|r| r["sessions"].clone()).collect();
    assert_eq!(counts, [100, 1000], "{sessions:?}");
    for row in sessions {
        assert!(row["beats_per_sec"].as_f64() > Some(0.0), "{row}");
        assert!(
            row["alive_pct"].as_f64() > Some(0.0),
            "beats answered: {row}"
        );
        assert!(row["server_cpu_pct"].is_number(), "a local server: {row}");
    }
    let held = report["memory"]["held"].as_array().expect("memory rows");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["held"], 1000);
    assert!(held[0]["rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(report["memory"]["waiters"]["waiters"].as_u64() > Some(0));
}

/// The bench's election workload, short: jetlock's candidates are elected,
/// killed and stopped, each way of leaving has its rows, and etcd has rows
/// too or a note saying why not (it may not be installed). Times are not
/// judged here.
#[test]
fn a_short_election_bench_reports_both_ways_of_leaving() {
    let report = quick_bench(&["--only", "election", "--durability", "default"]);
    let rows = report["election"].as_array().expect("election rows");
    let events = |service: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| {
                r["service"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(service))
            })
            .map(|r| {
                assert_eq!(r["samples_ms"].as_array().map(Vec::len), Some(5), "{r}");
                assert_eq!(r["candidates"], 3, "{r}");
                r["event"].as_str().expect("an event").to_owned()
            })
            .collect()
    };
    let both = [
        "leader crashed → new leader observed",
        "leader resigned → new leader observed",
    ];
    assert_eq!(events("jetlock"), both);
    let notes = report["notes"].to_string();
    if notes.contains("election, etcd") {
        assert!(events("etcd").is_empty(), "{notes}");
    } else {
        assert_eq!(events("etcd"), both, "{notes}");
    }
}

/// The coordinator curve, short: the bench starts the 3-node cluster of
/// `nats/cluster.conf`, adds coordinators one at a time, and every step
/// ran JSON pairs and read each coordinator's CPU. Numbers not judged here.
#[test]
fn a_short_coordinator_curve_adds_coordinators_one_at_a_time_over_one_and_three_buckets() {
    let report = quick_bench(&["--only", "coordinators", "--clients", "4"]);
    let rows = report["curve"].as_array().expect("curve rows");
    // One, two, three coordinators over one bucket, then over three.
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        let (buckets, i) = (if i < 3 { 1 } else { 3 }, i % 3);
        assert_eq!(row["buckets"], buckets, "{row}");
        // A new deployment's requests are partitioned.
        assert_eq!(row["partitions"], 64, "{row}");
        assert_eq!(row["coordinators"], i + 1, "{row}");
        assert!(row["pairs"].as_u64().is_some_and(|n| n > 0), "{row}");
        let each = row["coordinator_us_per_pair"]
            .as_array()
            .expect("per coordinator");
        assert_eq!(each.len(), i + 1, "{row}");
        assert!(row["servers_us_per_pair"].as_f64() > Some(0.0), "{row}");
    }
}

/// The takeover bench, short: on the 3-node cluster three coordinators,
/// one stopped and then one killed, with and without acquires queued; the
/// bench fails unless a try-lock in a partition the one gone had is
/// granted by a survivor. Times are not judged here.
#[test]
fn a_short_takeover_bench_serves_a_gone_coordinators_partitions_again() {
    let report = quick_bench(&["--only", "takeover"]);
    let rows = report["takeover"].as_array().expect("takeover rows");
    let queued: Vec<_> = rows.iter().map(|r| r["queued"].clone()).collect();
    assert_eq!(queued, [0, 1000, 0, 1000], "{rows:?}");
    for row in rows {
        assert_eq!(row["partitions"], 64, "{row}");
        assert_eq!(row["coordinators"], 3, "{row}");
        // Rendezvous hashing gave the one that went some, not all.
        let gained = row["gained"].as_u64().expect("partitions gained");
        assert!((1..64).contains(&gained), "{row}");
        assert_eq!(row["samples_ms"].as_array().map(Vec::len), Some(1), "{row}");
        assert!(row["p50_ms"].as_f64() > Some(0.0), "{row}");
    }
}
