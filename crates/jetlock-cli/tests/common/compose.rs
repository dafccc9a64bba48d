//! docker-compose.yml and the monitoring configs it mounts, read as YAML
//! for the tests that check them without Docker (`tests/deploy.rs`,
//! `tests/monitoring.rs`).

use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

/// The workspace root, where docker-compose.yml, nats/ and deploy/ are.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A YAML file of the repository, its merge keys (`<<: *anchor`) applied
/// as compose applies them: the mapping's own keys win.
pub fn yaml(path: &str) -> Yaml {
    let text =
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    merged(docs.remove(0))
}

fn merged(node: Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            let merge_key = Yaml::String("<<".into());
            let mut bases = Vec::new();
            for (k, v) in hash {
                if k == merge_key {
                    match v {
                        Yaml::Array(list) => bases.extend(list),
                        other => bases.push(other),
                    }
                } else {
                    out.insert(k, merged(v));
                }
            }
            for base in bases {
                if let Yaml::Hash(base) = merged(base) {
                    for (k, v) in base {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(list) => Yaml::Array(list.into_iter().map(merged).collect()),
        other => other,
    }
}

/// docker-compose.yml's services, by name.
pub fn services() -> Vec<(String, Yaml)> {
    let compose = yaml("docker-compose.yml");
    compose["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("a name").to_owned(), v.clone()))
        .collect()
}

/// Service `name`.
pub fn service(name: &str) -> Yaml {
    services()
        .into_iter()
        .find_map(|(n, s)| (n == name).then_some(s))
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The strings of a YAML list (an empty list for anything else).
pub fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The URL a service's healthcheck asks (its command's `http://` word).
pub fn healthcheck_url(service: &Yaml) -> String {
    strings(&service["healthcheck"]["test"])
        .into_iter()
        .find(|w| w.starts_with("http://"))
        .expect("a healthcheck on an http:// URL")
}
