//! docker-compose.yml cannot run here (no Docker engine), so check what can
//! be checked without one: every file it mounts or builds from exists,
//! every variable the mounted NATS config reads is set for each node, the
//! passwords come from the environment (never from the repository), each
//! service logs in as its role's user, one image is built once, start-up
//! waits on healthchecks, and Prometheus and Grafana find what they are
//! pointed at. The same `nats/cluster.conf` is started for real by
//! `crates/jetlock/tests/cluster.rs` and `tests/auth.rs`, and with the
//! compose demo's command by `tests/demo_cluster.rs`; `tests/monitoring.rs`
//! asks a live coordinator the endpoints and series these files name.

mod common;

use common::compose::{healthcheck_url, root, service, services, strings, yaml};
use std::collections::BTreeSet;
use std::path::Path;
use yaml_rust2::Yaml;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");

#[test]
fn every_mounted_file_exists() {
    let mut mounts = 0;
    for line in COMPOSE.lines() {
        let item = line.trim().trim_start_matches("- ");
        if let Some(path) = item.strip_prefix("./") {
            let host = path.split(':').next().unwrap();
            assert!(
                root().join(host).is_file(),
                "compose mounts missing ./{host}"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 3, "expected the three node configs to be mounted");
    assert!(COMPOSE.contains("build: ."));
    assert!(root().join("Dockerfile").is_file());
}

/// The variables `nats/cluster.conf` reads from the environment.
fn cluster_config_variables() -> BTreeSet<String> {
    let conf = std::fs::read_to_string(root().join("nats/cluster.conf")).unwrap();
    conf.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        // Quoted strings are not interpolated (`"$SYS.ACCOUNT..."`).
        .map(|l| l.split('"').step_by(2).collect::<Vec<_>>().join(" "))
        .flat_map(|l| l.split('$').skip(1).map(str::to_owned).collect::<Vec<_>>())
        .map(|v| {
            v.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn compose_sets_every_variable_the_cluster_config_reads() {
    let wanted = cluster_config_variables();
    assert!(wanted.contains("NATS_ROUTE_3") && wanted.contains("NATS_STORE_DIR"));
    // Each node gets the shared block plus its own server name.
    for var in &wanted {
        assert!(
            COMPOSE.contains(&format!("{var}:")),
            "docker-compose.yml never sets {var}"
        );
    }
    assert_eq!(COMPOSE.matches("NATS_SERVER_NAME: n").count(), 3);
    assert_eq!(COMPOSE.matches("<<: *nats-env").count(), 3);
}

/// The password variables: every user of the cluster config has one.
fn password_variables() -> Vec<String> {
    let vars: Vec<String> = cluster_config_variables()
        .into_iter()
        .filter(|v| v.ends_with("_PASSWORD"))
        .collect();
    for role in jetlock_testkit::server::Role::ALL {
        assert!(
            vars.iter().any(|v| v == role.password_var()),
            "cluster.conf reads no {}",
            role.password_var()
        );
    }
    vars
}

#[test]
fn passwords_come_from_the_environment_and_never_from_the_repository() {
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    for var in password_variables() {
        // Required from the environment (or .env), no default: compose
        // refuses to start without it.
        let required = format!("${{{var}:?");
        for line in COMPOSE.lines().filter(|l| l.contains(&var)) {
            assert!(
                line.contains(&required),
                "docker-compose.yml sets {var} other than from the environment: {line:?}"
            );
        }
        assert!(
            COMPOSE.contains(&format!("{var}: {required}")),
            "docker-compose.yml does not pass {var} to the nodes"
        );
        let placeholder = example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!(".env.example does not show {var}"));
        assert!(placeholder.starts_with("REPLACE_ME"), "{var}={placeholder}");
    }
    let ignored = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l.trim() == ".env"),
        ".env is not git-ignored"
    );
    assert!(
        !root().join(".env").exists() || !tracked(".env"),
        ".env is committed"
    );
}

/// Whether git tracks `path` (false where git is not available).
fn tracked(path: &str) -> bool {
    std::process::Command::new("git")
        .args(["ls-files", "--error-unmatch", path])
        .current_dir(root())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The lines under `head` (a line of the file) that are indented deeper.
fn block(head: &str) -> String {
    let mut lines = COMPOSE.lines().skip_while(|l| *l != head);
    let first = lines.next().unwrap_or_else(|| panic!("no line {head:?}"));
    let indent = |l: &str| l.len() - l.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || indent(l) > indent(first))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn each_service_logs_in_as_its_role() {
    let coordinator = block("x-as-coordinator: &as-coordinator");
    assert!(coordinator.contains("JETLOCK_USER: coordinator"));
    assert!(coordinator.contains("JETLOCK_PASSWORD: ${JETLOCK_COORDINATOR_PASSWORD:?"));
    for name in ["setup", "coordinator-1", "coordinator-2"] {
        assert!(
            block(&format!("  {name}:")).contains("<<: *as-coordinator"),
            "{name} does not log in as coordinator"
        );
    }
    let tools = block("  jetlock:");
    assert!(tools.contains("JETLOCK_USER: operator"), "{tools}");
    assert!(tools.contains("JETLOCK_PASSWORD: ${JETLOCK_OPERATOR_PASSWORD:?"));
    let demo = block("  demo:");
    assert!(demo.contains("JETLOCK_USER: demo"), "{demo}");
    assert!(demo.contains("JETLOCK_PASSWORD: ${JETLOCK_DEMO_PASSWORD:?"));
}

/// `docker compose --profile demo run --rm demo`, as the header says: the
/// demo on all three nodes, after the coordinators (the run needs one
/// serving), with the session prefix its user's permissions name (the user
/// name, the default).
#[test]
fn the_demo_service_runs_on_the_cluster_after_the_coordinators() {
    assert!(COMPOSE.contains("docker compose --profile demo run --rm demo"));
    let demo = block("  demo:");
    assert!(demo.contains(r#"profiles: ["demo"]"#), "{demo}");
    assert!(
        demo.contains(r#"["demo", "--url", "nats://n1:4222,nats://n2:4222,nats://n3:4222","#),
        "{demo}"
    );
    let demo = service("demo");
    for coordinator in ["coordinator-1", "coordinator-2"] {
        assert_eq!(
            demo["depends_on"][coordinator]["condition"].as_str(),
            Some("service_healthy"),
            "the demo waits for {coordinator} to be ready"
        );
    }
    let demo = block("  demo:");
    assert!(!demo.contains("--session-prefix"), "{demo}");
    let conf = std::fs::read_to_string(root().join("nats/cluster.conf")).unwrap();
    assert!(conf.contains(r#""jetlock.hb.demo.>""#) && conf.contains(r#""_INBOX.demo.>""#));
}

/// One image: the one service that builds it tags it `jetlock:local`, and
/// every other jetlock service runs that tag and never pulls it.
#[test]
fn one_image_is_built_once_and_shared() {
    let all = services();
    let builders: Vec<&String> = all
        .iter()
        .filter(|(_, s)| !s["build"].is_badvalue())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(builders, ["setup"], "services that build an image");
    let jetlock: Vec<&(String, Yaml)> = all
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some("jetlock:local"))
        .collect();
    let names: Vec<&str> = jetlock.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["setup", "coordinator-1", "coordinator-2", "jetlock", "demo"]
    );
    for (name, s) in jetlock.iter().filter(|(n, _)| n != "setup") {
        assert_eq!(s["pull_policy"].as_str(), Some("never"), "{name}");
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("FROM ").next().unwrap();
    for package in ["ca-certificates", "curl"] {
        assert!(
            runtime.contains(package),
            "the runtime image lacks {package}"
        );
    }
}

/// Start-up waits on health, not on a container start: every dependency
/// names a condition, each one waited for as healthy has a healthcheck,
/// and the coordinators start only after setup exited 0.
#[test]
fn start_up_waits_on_healthchecks_and_on_setup() {
    let all = services();
    for (name, s) in &all {
        let Some(deps) = s["depends_on"].as_hash() else {
            assert!(
                s["depends_on"].is_badvalue(),
                "{name}: depends_on is a list"
            );
            continue;
        };
        for (dep, how) in deps {
            let dep = dep.as_str().unwrap();
            let condition = how["condition"].as_str();
            match condition {
                Some("service_healthy") => assert!(
                    !service(dep)["healthcheck"].is_badvalue(),
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                ),
                Some("service_completed_successfully") => {
                    assert!(service(dep)["restart"].is_badvalue(), "{dep} is one-shot")
                }
                other => panic!("{name} depends on {dep} with condition {other:?}"),
            }
        }
    }
    for node in ["n1", "n2", "n3"] {
        assert_eq!(
            service("setup")["depends_on"][node]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    for coordinator in ["coordinator-1", "coordinator-2"] {
        assert_eq!(
            service(coordinator)["depends_on"]["setup"]["condition"].as_str(),
            Some("service_completed_successfully")
        );
    }
}

/// The port and path of an `http://host:port/path` URL.
fn port_and_path(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http://");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let port = authority.rsplit(':').next().unwrap().to_owned();
    (port, format!("/{path}"))
}

/// Each node serves `/healthz?js-enabled-only=true` on the monitoring port
/// cluster.conf reads from `NATS_HTTP_PORT`, which compose does not publish.
#[test]
fn nats_nodes_are_probed_on_their_monitoring_port() {
    let conf = std::fs::read_to_string(root().join("nats/cluster.conf")).unwrap();
    assert!(conf
        .lines()
        .any(|l| l.trim() == "http_port: $NATS_HTTP_PORT"));
    for node in ["n1", "n2", "n3"] {
        let s = service(node);
        let (port, path) = port_and_path(&healthcheck_url(&s));
        assert_eq!(path, "/healthz?js-enabled-only=true", "{node}");
        assert_eq!(
            s["environment"]["NATS_HTTP_PORT"].as_str(),
            Some(port.as_str()),
            "{node}"
        );
        for published in strings(&s["ports"]) {
            assert!(
                !published.ends_with(&format!(":{port}")),
                "{node} publishes {published}"
            );
        }
    }
}

/// Where `service` mounts the repository's file `host` (`./host:target`).
fn mounted_at(service: &Yaml, host: &str) -> String {
    strings(&service["volumes"])
        .iter()
        .find_map(|m| m.strip_prefix(&format!("./{host}:")))
        .map(|m| m.trim_end_matches(":ro").to_owned())
        .unwrap_or_else(|| panic!("the service does not mount {host}"))
}

/// The coordinators serve metrics on every interface of the compose
/// network, are probed on `/readyz` there, and Prometheus scrapes exactly
/// them, with the rules file compose mounts where its config reads it.
#[test]
fn prometheus_scrapes_the_coordinators_and_loads_the_alert_rules() {
    let mut targets = Vec::new();
    for name in ["coordinator-1", "coordinator-2"] {
        let s = service(name);
        let addr = s["environment"]["JETLOCK_METRICS_ADDR"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} sets no JETLOCK_METRICS_ADDR"));
        let port = addr.strip_prefix("0.0.0.0:").expect("all interfaces");
        let (probed, path) = port_and_path(&healthcheck_url(&s));
        assert_eq!(
            (probed.as_str(), path.as_str()),
            (port, "/readyz"),
            "{name}"
        );
        assert!(strings(&s["expose"]).iter().any(|p| p == port), "{name}");
        targets.push(format!("{name}:{port}"));
    }
    let config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"].as_vec().unwrap();
    let jetlock = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("jetlock"))
        .expect("a jetlock job (the alert rules select job=\"jetlock\")");
    let scraped: Vec<String> = jetlock["static_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|c| strings(&c["targets"]))
        .collect();
    assert_eq!(scraped, targets);

    let prometheus = service("prometheus");
    assert_eq!(strings(&prometheus["profiles"]), ["monitoring"]);
    let mounted = |host: &str| mounted_at(&prometheus, host);
    let config_at = mounted("deploy/prometheus/prometheus.yml");
    assert!(strings(&prometheus["command"]).contains(&format!("--config.file={config_at}")));
    assert_eq!(
        strings(&config["rule_files"]),
        [mounted("deploy/prometheus/alerts.yml")]
    );
}

/// Grafana is provisioned with the data source the dashboard asks for and
/// loads the dashboard from where compose mounts it.
#[test]
fn grafana_loads_the_dashboard_with_its_data_source() {
    let grafana = service("grafana");
    assert_eq!(strings(&grafana["profiles"]), ["monitoring"]);
    let target = |host: &str| mounted_at(&grafana, host);
    let dashboard_at = target("deploy/grafana/jetlock.json");
    let providers = yaml("deploy/grafana/provisioning/dashboards.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(Path::new(&dashboard_at).parent(), Some(Path::new(path)));
    assert!(target("deploy/grafana/provisioning/dashboards.yml")
        .starts_with("/etc/grafana/provisioning/dashboards/"));
    assert!(target("deploy/grafana/provisioning/datasources.yml")
        .starts_with("/etc/grafana/provisioning/datasources/"));

    let sources = yaml("deploy/grafana/provisioning/datasources.yml");
    let source = &sources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/jetlock.json")).unwrap(),
    )
    .unwrap();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(variable["query"], "prometheus");
    assert_eq!(
        variable["current"]["value"].as_str(),
        source["uid"].as_str()
    );
}
