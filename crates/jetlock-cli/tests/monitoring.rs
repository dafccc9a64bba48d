//! What operators and orchestrators read from a coordinator, against real
//! nats-server and `jetlock serve`: `/readyz` follows the NATS connection
//! and the engine's catching up, a fresh coordinator exports every series
//! before any event, and every metric the alert rules and the Grafana
//! dashboard use (`deploy/`) is one a live coordinator exports.

mod common;

use common::compose::{healthcheck_url, root, service, yaml};
use common::promql::{scraped, selectors, selects};
use common::{http_get, named_client as client, single, spawn_serve, PATIENCE};
use jetlock_testkit::server::{free_ports, NatsServer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::timeout;

/// Polls `GET path` until `done` holds for its (status, response), up to
/// [`PATIENCE`]; that answer.
async fn get_until(
    addr: SocketAddr,
    path: &str,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let mut last = None;
    let found = timeout(PATIENCE, async {
        loop {
            if let Ok((status, body)) = http_get(addr, path).await {
                if done(status, &body) {
                    return (status, body);
                }
                last = Some((status, body));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("GET {path} never answered as expected; last: {last:?}"))
}

/// The body of a response (after the headers).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_503_until_serving_and_again_when_nats_goes_away() {
    let ports = free_ports(2).unwrap();
    let (nats_port, http_port) = (ports[0], ports[1]);
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let metrics_addr = addr.to_string();
    // The coordinator first, while nothing listens on the NATS port; on
    // two threads, where every other test's `serve` runs on one.
    let mut serving = spawn_serve(
        &format!("nats://127.0.0.1:{nats_port}"),
        &["--metrics-addr", &metrics_addr, "--threads", "2"],
    );
    let (status, response) = get_until(addr, "/readyz", |_, _| true).await;
    assert_eq!(status, 503, "{response}");
    assert_eq!(body(&response), "not connected to NATS yet\n");
    // Alive all the same: an orchestrator must not restart it for this.
    let (status, response) = http_get(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{response}");

    let mut server = NatsServer::start_single(Some(nats_port)).expect("start nats-server");
    serving.wait_ready(PATIENCE);
    let (status, response) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!((status, body(&response)), (200, "ready\n"), "{response}");

    server.kill();
    let (_, response) = get_until(addr, "/readyz", |status, _| status == 503).await;
    assert_eq!(body(&response), "disconnected from NATS; reconnecting\n");
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);

    // Back once the server is: the coordinator reconnects and serves on.
    server.restart().expect("restart nats-server");
    get_until(addr, "/readyz", |status, _| status == 200).await;

    serving.signal(libc::SIGTERM);
    serving.exited().await;
}

/// The series a fresh coordinator must export before any event: labelled
/// counters at 0 for each known label value (so `increase()` sees the
/// first event after a restart), the build and the process.
const AT_START: &[&str] = &[
    "jetlock_expiries_total{cause=\"lease\"} 0",
    "jetlock_expiries_total{cause=\"session\"} 0",
    "jetlock_grants_total{handoff=\"true\"} 0",
    "jetlock_grants_total{handoff=\"false\"} 0",
    "jetlock_request_errors_total{code=\"internal\"} 0",
    "jetlock_request_errors_total{code=\"queue_full\"} 0",
    "jetlock_renew_failures_total{cause=\"stale_token\"} 0",
    "jetlock_releases_total 0",
    "jetlock_build_info{version=\"0.1.0\",protocol=\"1\"} 1",
    "process_resident_memory_bytes ",
    "process_virtual_memory_bytes ",
    "process_cpu_seconds_total ",
    "process_open_fds ",
    "process_max_fds ",
    "process_start_time_seconds ",
    "jetlock_nats_messages_total{direction=\"received\"} ",
    "jetlock_nats_messages_total{direction=\"sent\"} ",
    "jetlock_nats_bytes_total{direction=\"received\"} ",
    "jetlock_nats_bytes_total{direction=\"sent\"} ",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_coordinator_exports_every_series_before_any_event() {
    let server = single();
    let serving = common::serve(&server.url(), &[]);
    let addr = metrics_addr(&serving);
    let text = common::scrape(addr).await;
    for series in AT_START {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "no {series} in:\n{text}"
        );
    }
    let start: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a start time");
    // It read the streams and heard heartbeats before it said ready.
    let received: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("jetlock_nats_messages_total{direction=\"received\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a count of messages received");
    assert!(received > 0, "no message received:\n{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - PATIENCE.as_secs_f64()..=now + 1.0).contains(&start),
        "started at {start}, now {now}"
    );
}

/// The `host:port` of a `jetlock serve` child's endpoint.
fn metrics_addr(serving: &common::Serving) -> SocketAddr {
    serving
        .metrics_url()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|u| u.strip_suffix("/metrics"))
        .expect("metrics are served")
        .parse()
        .unwrap()
}

/// Every PromQL expression of the alert rules and the dashboard, with
/// where it is.
fn monitoring_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let rules = yaml("deploy/prometheus/alerts.yml");
    for group in rules["groups"].as_vec().expect("rule groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            let expr = rule["expr"].as_str().expect("an expr");
            exprs.push((format!("alerts.yml {name}"), expr.to_owned()));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/jetlock.json")).unwrap(),
    )
    .unwrap();
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let at = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .map_or(at.to_owned(), |t| format!("jetlock.json {t:?}"));
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(expr)) => out.push((at.clone(), expr.to_owned())),
                        _ => walk(v, &at, out),
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    walk(&dashboard, "jetlock.json", &mut exprs);
    exprs
}

/// Series Prometheus makes itself for every target.
const PROMETHEUS_OWN: &[&str] = &["up"];
/// Labels Prometheus attaches to every series of a target.
const TARGET_LABELS: &[&str] = &["job", "instance"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_alert_rules_and_the_dashboard_is_exported() {
    let exprs = monitoring_exprs();
    assert!(exprs.len() > 20, "{exprs:#?}");
    let server = single();
    let url = server.url();
    let serving = common::serve(&url, &[]);
    let addr = metrics_addr(&serving);
    // One holder and one waiter: `jetlock_queue_depth` exists only while
    // someone waits.
    let holder = client(&url, "holder").await;
    let waiter = client(&url, "waiter").await;
    let guard = holder.lock("pay:1").acquire().await.unwrap();
    let waiting = tokio::spawn(async move { waiter.lock("pay:1").wait(PATIENCE).acquire().await });
    let (_, text) = get_until(addr, "/metrics", |_, text| {
        text.contains("jetlock_queue_depth{prefix=\"pay\"} 1")
    })
    .await;
    let series = scraped(&text);

    let mut missing = Vec::new();
    for (at, expr) in &exprs {
        let found = selectors(expr);
        assert!(!found.is_empty(), "{at}: no metric in {expr:?}");
        for mut selector in found {
            selector
                .equal
                .retain(|(label, _)| !TARGET_LABELS.contains(&label.as_str()));
            let own = PROMETHEUS_OWN.contains(&selector.name.as_str());
            if !own && !selects(&series, &selector) {
                missing.push(format!("{at}: {selector:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series the rules or the dashboard use but no coordinator exports:\n{}\n\nexported:\n{text}",
        missing.join("\n")
    );

    // The endpoints compose probes answer on a live coordinator.
    for name in ["coordinator-1", "coordinator-2"] {
        let url = healthcheck_url(&service(name));
        let path = &url[url.find("/readyz").expect("probes /readyz")..];
        let (status, response) = http_get(addr, path).await.unwrap();
        assert_eq!(status, 200, "{name} probes {path}: {response}");
    }

    guard.release().await.unwrap();
    let next = timeout(PATIENCE, waiting).await.unwrap().unwrap().unwrap();
    next.release().await.unwrap();
}
#[test]
fn promql_selectors_skip_functions_aggregations_clauses_and_ranges() {
    let expr = r#"sum by (code) (rate(jetlock_request_errors_total{code!~"busy|timeout", job="jetlock"}[5m])) > 0
        and on (instance) histogram_quantile(0.99, sum(rate(jetlock_wait_seconds_bucket[$__rate_interval])) by (le)) > 1.5e3
        or absent(up{job="jetlock"} == bool 1) unless process_open_fds / process_max_fds > 0.8"#;
    let names: Vec<String> = selectors(expr).into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "jetlock_request_errors_total",
            "jetlock_wait_seconds_bucket",
            "up",
            "process_open_fds",
            "process_max_fds"
        ]
    );
    let first = &selectors(expr)[0];
    assert_eq!(first.equal, [("job".to_owned(), "jetlock".to_owned())]);
}
