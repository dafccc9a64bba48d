//! `jetlock demo --url` on the production-shaped deployment, wired as
//! `docker-compose.yml` wires it: a 3-node cluster from the real
//! `nats/cluster.conf`, the R3 bucket, two `jetlock serve` coordinators
//! logged in as `coordinator`, and the demo (its run, its ledger and every
//! worker process) logged in as `demo` through `JETLOCK_USER` and
//! `JETLOCK_PASSWORD`. The run must apply every transfer with every
//! invariant held, and the servers must have refused nobody anything: the
//! demo user's permissions cover all the demo does (a missing one shows as
//! the exact subject the server refused).

mod common;

use common::demo::{assert_no_process_of, count, invariant, INVARIANTS};
use jetlock_testkit::server::Role;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_the_cluster_as_the_demo_user_without_a_refusal() {
    let started = Instant::now();
    let cluster = common::cluster().await;
    common::setup_bucket(&cluster).await;
    let serve_url = cluster.url_as(Role::Coordinator);
    let _c1 = common::serve(&serve_url, &["--replicas", "3", "--id", "c1"]);
    let _c2 = common::serve(&serve_url, &["--replicas", "3", "--id", "c2"]);
    eprintln!("cluster and coordinators up after {:?}", started.elapsed());

    let url = cluster.url();
    let login = cluster.login(Role::Demo);
    let (user, password) = (login.user().to_owned(), login.password().to_owned());
    let demo_started = Instant::now();
    let run = tokio::task::spawn_blocking(move || {
        common::demo::run(
            &[
                "--url",
                &url,
                "--workers",
                "3",
                "--accounts",
                "20",
                "--transfers",
                "300",
            ],
            &[("JETLOCK_USER", &user), ("JETLOCK_PASSWORD", &password)],
        )
    })
    .await;
    eprintln!("demo took {:?}", demo_started.elapsed());
    // First: a refusal explains a failed run best.
    let refused = common::violations(&cluster);
    assert!(
        refused.is_empty(),
        "the servers refused:\n{}",
        refused.join("\n")
    );
    let run = run.expect("the demo ran to its end");

    let s = &run.summary;
    assert_eq!(run.code, Some(0), "stderr:\n{}\nsummary: {s:#}", run.stderr);
    assert_eq!(s["invariants_held"], true, "{s:#}");
    for name in INVARIANTS {
        assert!(invariant(s, name), "{name} failed: {s:#}");
    }
    assert_eq!(count(s, "applied"), 300, "{s:#}");
    assert_eq!(count(s, "worker_crashes"), 0, "{s:#}");
    let nats = s["nats"].as_str().expect("nats");
    assert!(nats.contains("as user demo, session prefix demo"), "{nats}");
    assert!(!nats.contains(login.password()), "{nats}");
    assert_no_process_of(s["run"].as_str().expect("run id"));
    eprintln!("test took {:?}", started.elapsed());
}
