//! `jetlock doctor` against real nats-servers: a healthy single node with a
//! coordinator, a deployment without coordinators (exit 4) and a clock
//! that is off, and a 3-node cluster from `nats/cluster.conf` whose
//! `sync_interval: always` is read from each node's VARZ. And a locks
//! bucket created before its first sequence came from the clock.

mod common;

use common::{single, PATIENCE};
use jetlock::bucket::{ensure_bucket, BucketSpec, DEFAULT_BUCKET};
use jetlock::protocol::{coordinator_subject, CoordinatorBeat, VERSION};
use jetlock_coordinator::{Coordinator, CoordinatorConfig};
use jetlock_testkit::server::{NatsServer, Role};
use serde::Deserialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One line of `jetlock doctor --json`.
#[derive(Debug, Deserialize)]
struct Finding {
    check: String,
    status: String,
    detail: String,
    fix: Option<String>,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn findings(&self) -> Vec<Finding> {
        let findings: Vec<Finding> = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json prints an array ({e}):\n{}", self.stdout));
        for f in &findings {
            assert_eq!(
                f.fix.is_some(),
                f.status != "ok",
                "a fix exactly for WARN and FAIL: {f:?}"
            );
        }
        findings
    }
}

/// `jetlock doctor <args>` with none of the test environment's settings.
async fn doctor(args: &[&str]) -> Run {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetlock"))
        .arg("doctor")
        .args(args)
        .env_remove("JETLOCK_URL")
        .env_remove("JETLOCK_BUCKET")
        .env_remove("JETLOCK_SYSTEM_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("jetlock doctor ends")
        .expect("run jetlock doctor");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The findings of one check.
fn of<'a>(findings: &'a [Finding], check: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.check == check).collect()
}

/// The statuses of one check, in order.
fn statuses(findings: &[Finding], check: &str) -> Vec<String> {
    of(findings, check)
        .iter()
        .map(|f| f.status.clone())
        .collect()
}

async fn coordinator(url: &str, id: &str, replicas: usize) -> Coordinator {
    let nats = common::nats_as(url, Role::Coordinator).await;
    Coordinator::start(
        nats,
        CoordinatorConfig {
            id: id.to_owned(),
            replicas,
            ..Default::default()
        },
    )
    .await
    .expect("start a coordinator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_dev_server_passes_with_the_fsync_warning() {
    common::init_tracing();
    let server = NatsServer::start_single_monitored().expect("start nats-server");
    let monitor = server.monitor_url().expect("a monitoring port");
    let coordinator = coordinator(&server.url(), "doctor-c1", 1).await;

    let run = doctor(&["--url", &server.url(), "--monitor", &monitor, "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let findings = run.findings();
    for check in [
        "server-version",
        "locks-bucket",
        "request-stream",
        "event-stream",
        "config-bucket",
        "coordinators",
    ] {
        assert_eq!(statuses(&findings, check), ["ok"], "{check}: {findings:#?}");
    }
    assert!(of(&findings, "server-version")[0]
        .detail
        .contains("jetlock-dev"));
    assert!(of(&findings, "coordinators")[0]
        .detail
        .contains("doctor-c1"));
    // The coordinator's clock was heard (this host's own: ok or not, it is
    // named).
    assert!(of(&findings, "clock-skew")[0].detail.contains("doctor-c1"));
    // dev.conf keeps JetStream's default fsync, read from VARZ.
    let sync = of(&findings, "sync-interval");
    assert_eq!(sync.len(), 1, "{sync:?}");
    assert_eq!(sync[0].status, "warn");
    assert!(sync[0]
        .detail
        .starts_with("jetlock-dev: JetStream fsyncs every 2m"));
    assert!(sync[0]
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("sync_interval: always")));

    // One replica and the default fsync: tokens can go back after a crash.
    let tokens = of(&findings, "fencing-tokens");
    assert_eq!(statuses(&findings, "fencing-tokens"), ["warn", "warn"]);
    assert!(tokens[0].detail.contains("1 replica"), "{tokens:?}");
    assert!(
        tokens[1].detail.contains("not on every write"),
        "{tokens:?}"
    );

    // The same run for a person: one line per finding, a fix under each
    // warning, and no failure.
    let text = doctor(&["--url", &server.url(), "--monitor", &monitor]).await;
    assert_eq!(text.code, Some(0), "stderr: {}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    let warn = lines
        .iter()
        .position(|l| l.starts_with("WARN  sync-interval"))
        .unwrap_or_else(|| panic!("a sync-interval warning:\n{}", text.stdout));
    assert!(lines[warn + 1]
        .trim_start()
        .starts_with("fix: production: set `sync_interval: always`"));
    assert!(lines.iter().any(|l| l.starts_with("OK    coordinators")));
    assert!(!text.stdout.contains("FAIL"), "{}", text.stdout);
    coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_coordinator_fails_with_exit_code_4_and_a_skewed_clock_warns() {
    let server = single();
    let nats = async_nats::connect(server.url()).await.expect("connect");
    // The bucket exists, so the coordinators are the one failure.
    let js = async_nats::jetstream::new(nats.clone());
    ensure_bucket(&js, &BucketSpec::new(DEFAULT_BUCKET, 1))
        .await
        .expect("create the locks bucket");
    // Heartbeats of a coordinator whose clock is 5 s ahead (no coordinator
    // runs, so nothing else reads them).
    let stop = CancellationToken::new();
    let beats = tokio::spawn({
        let (nats, stop) = (nats.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                let beat = CoordinatorBeat {
                    v: VERSION,
                    id: "skewed".into(),
                    conn: None,
                    now_ms: Some(jetlock::clock::unix_ms() + 5_000),
                    leaving: false,
                };
                let body = serde_json::to_vec(&beat).expect("beats serialize");
                let _ = nats
                    .publish(coordinator_subject("skewed"), body.into())
                    .await;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    });

    let run = doctor(&["--url", &server.url(), "--json"]).await;
    stop.cancel();
    beats.await.expect("the beat task ends");
    assert_eq!(run.code, Some(4), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("1 check(s) failed"), "{}", run.stderr);
    let findings = run.findings();
    let fails: Vec<&Finding> = findings.iter().filter(|f| f.status == "fail").collect();
    assert_eq!(fails.len(), 1, "{findings:#?}");
    assert_eq!(fails[0].check, "coordinators");
    assert_eq!(fails[0].detail, "no coordinator is running");
    assert!(fails[0]
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("jetlock serve")));
    assert_eq!(statuses(&findings, "locks-bucket"), ["ok"]);
    // Only a coordinator creates these.
    assert_eq!(statuses(&findings, "request-stream"), ["warn"]);
    // Without --monitor or --system-url, fsync cannot be checked.
    let sync = of(&findings, "sync-interval");
    assert_eq!(sync.len(), 1);
    assert_eq!(
        sync[0].detail,
        "cannot check sync_interval: pass --monitor or --system-url"
    );
    let skew = of(&findings, "clock-skew");
    assert_eq!(skew.len(), 1, "{findings:#?}");
    assert_eq!(skew[0].status, "warn");
    assert!(skew[0].detail.starts_with("skewed +"), "{}", skew[0].detail);
    assert!(skew[0].fix.as_deref().is_some_and(|f| f.contains("NTP")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_sync_always_passes() {
    let cluster = common::cluster().await;
    let monitors: Vec<String> = cluster
        .servers()
        .iter()
        .map(|s| s.monitor_url().expect("a monitoring port"))
        .collect();
    let monitors = monitors.join(",");
    let coordinator = coordinator(&cluster.url_as(Role::Coordinator), "doctor-c3", 3).await;
    let operator = cluster.url_as(Role::Operator);

    let run = doctor(&["--url", &operator, "--monitor", &monitors, "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let findings = run.findings();
    // Every node's VARZ, and cluster.conf's `sync_interval: always`.
    let sync: Vec<&str> = of(&findings, "sync-interval")
        .iter()
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(
        sync,
        ["n1: always", "n2: always", "n3: always"],
        "{findings:#?}"
    );
    assert_eq!(statuses(&findings, "sync-interval"), ["ok", "ok", "ok"]);
    assert_eq!(statuses(&findings, "server-version"), ["ok", "ok", "ok"]);
    for check in [
        "locks-bucket",
        "request-stream",
        "event-stream",
        "config-bucket",
    ] {
        assert_eq!(statuses(&findings, check), ["ok"], "{check}: {findings:#?}");
        assert!(of(&findings, check)[0].detail.contains(": 3 replica(s)"));
    }
    // A bucket the coordinator created, 3 replicas, fsync always.
    assert_eq!(
        statuses(&findings, "fencing-tokens"),
        ["ok"],
        "{findings:#?}"
    );

    // The same through cluster.conf's system-account user, from one node:
    // every server answers.
    let system = cluster.member_url_as(0, Role::System);
    let run = doctor(&["--url", &operator, "--system-url", &system, "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let findings = run.findings();
    assert_eq!(
        statuses(&findings, "sync-interval"),
        ["ok", "ok", "ok"],
        "{findings:#?}"
    );
    // And that user may ask for VARZ only: connections are not its business.
    let nats = common::nats_as(&system, Role::System).await;
    nats.publish("$SYS.REQ.SERVER.PING.CONNZ", bytes::Bytes::new())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            let refused = common::violations(&cluster);
            if refused
                .iter()
                .any(|l| l.contains("user:system") && l.contains("$SYS.REQ.SERVER.PING.CONNZ"))
            {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "{:#?}", common::violations(&cluster));

    coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r1_bucket_in_a_cluster_warns_and_no_coordinator_fails() {
    // A bucket with one replica in a cluster of three: a warning that
    // knows the cluster's size. (The shipped users may only create the
    // jetlock streams, so this cluster gets an R1 locks bucket and no
    // coordinator.)
    let cluster = common::cluster().await;
    let nats = common::nats_as(&cluster.url_as(Role::Coordinator), Role::Coordinator).await;
    let js = async_nats::jetstream::new(nats);
    ensure_bucket(&js, &BucketSpec::new(DEFAULT_BUCKET, 1))
        .await
        .expect("create an R1 bucket");
    let run = doctor(&["--url", &cluster.url_as(Role::Operator), "--json"]).await;
    assert_eq!(run.code, Some(4), "stderr: {}", run.stderr);
    let findings = run.findings();
    let bucket = of(&findings, "locks-bucket");
    assert_eq!(bucket.len(), 1, "{findings:#?}");
    assert_eq!(bucket[0].status, "warn");
    assert!(
        bucket[0].detail.contains("1 replica in a cluster of 3"),
        "{}",
        bucket[0].detail
    );
    let coordinators = of(&findings, "coordinators");
    assert_eq!(coordinators[0].status, "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_whose_tokens_started_at_1_warns_until_created_again() {
    let server = single();
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    // The bucket as jetlock created it before its first sequence came
    // from the clock: a plain KV bucket with TTL and markers.
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: DEFAULT_BUCKET.into(),
        history: 1,
        limit_markers: Some(Duration::from_secs(15 * 60)),
        ..Default::default()
    })
    .await
    .expect("an old-style bucket");
    let tokens = |run: Run| {
        let findings = run.findings();
        assert_eq!(statuses(&findings, "locks-bucket"), ["ok"], "{findings:#?}");
        of(&findings, "fencing-tokens")
            .iter()
            .map(|f| (f.detail.clone(), f.fix.clone()))
            .collect::<Vec<_>>()
    };
    let old = tokens(doctor(&["--url", &server.url(), "--json"]).await);
    assert_eq!(old.len(), 2, "{old:?}");
    assert!(
        old[0].0.contains("started at sequence 1, not at the clock"),
        "{old:?}"
    );
    assert!(old[0]
        .1
        .as_deref()
        .is_some_and(|f| f.contains("jetlock setup")));
    assert!(old[1].0.contains("1 replica"), "{old:?}");

    js.delete_key_value(DEFAULT_BUCKET)
        .await
        .expect("delete the bucket");
    ensure_bucket(&js, &BucketSpec::new(DEFAULT_BUCKET, 1))
        .await
        .expect("create the locks bucket");
    let new = tokens(doctor(&["--url", &server.url(), "--json"]).await);
    assert_eq!(new.len(), 1, "only the replica warning is left: {new:?}");
    assert!(new[0].0.contains("1 replica"), "{new:?}");
}
