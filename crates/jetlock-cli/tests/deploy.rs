//! docker-compose.yml cannot run here (no Docker engine), so check what can
//! be checked without one: every file it mounts or builds from exists,
//! every variable the mounted NATS config reads is set for each node, the
//! passwords come from the environment (never from the repository), and
//! each service logs in as its role's user. The same `nats/cluster.conf` is
//! started for real by `crates/jetlock/tests/cluster.rs` and `tests/auth.rs`, and with the
//! compose demo's command by `tests/demo_cluster.rs`.

use std::collections::BTreeSet;
use std::path::Path;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");

/// The workspace root, where docker-compose.yml and nats/ are.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

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
    assert!(
        demo.contains("depends_on: [coordinator-1, coordinator-2]"),
        "{demo}"
    );
    assert!(!demo.contains("--session-prefix"), "{demo}");
    let conf = std::fs::read_to_string(root().join("nats/cluster.conf")).unwrap();
    assert!(conf.contains(r#""jetlock.hb.demo.>""#) && conf.contains(r#""_INBOX.demo.>""#));
}
