//! docker-compose.yml cannot run here (no Docker engine), so check what can
//! be checked without one: every file it mounts or builds from exists, and
//! every variable the mounted NATS config reads is set for each node. The
//! same `nats/cluster.conf` is started for real by `tests/cluster.rs`.

use std::collections::BTreeSet;
use std::path::Path;

const COMPOSE: &str = include_str!("../docker-compose.yml");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

#[test]
fn compose_sets_every_variable_the_cluster_config_reads() {
    let conf = std::fs::read_to_string(root().join("nats/cluster.conf")).unwrap();
    let wanted: BTreeSet<String> = conf
        .lines()
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
        .collect();
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
