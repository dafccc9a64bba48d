//! `jetlock config list|get|set|unset`: the live settings. `list` and
//! `get` show what the running coordinators apply and where each value
//! comes from (their file, env or flags, the config bucket, or the
//! compiled default), asking every coordinator (`jetlock.admin.settings`)
//! and saying when they disagree. `set` and `unset` write the config
//! bucket (`jetlock_config`), which every coordinator watches and applies
//! without a restart. Values are JSON (`5000`, `{"max_ttl_ms": 60000}`);
//! a duration may be written with units (`10s`). `set` checks the value
//! against the defaults before writing; a coordinator whose file sets
//! other values checks again and refuses a change that does not fit (see
//! the `config.changed` event).

use super::{admin, table, CliError, Connection, Exit};
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use jetlock::bucket::CONFIG_BUCKET;
use jetlock::name::LockName;
use jetlock_coordinator::admin::{SettingSource, SettingsView, SETTINGS};
use jetlock_coordinator::config::{Config, LiveSettings, LIVE_KEYS, POLICY_PREFIX};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Every live setting as the coordinators apply it, and its source.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One setting's applied value (`policy.PREFIX` for a prefix's policy).
    Get { key: String },
    /// Sets a live setting; coordinators apply it at once.
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Removes a setting from the bucket: back to the coordinators' own.
    Unset { key: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Row {
    key: String,
    value: serde_json::Value,
    source: SettingSource,
    /// Every coordinator's value and source, when they are not all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disagree: Vec<Applied>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Applied {
    coordinator: String,
    /// `null` when this coordinator has no such setting (a policy).
    value: serde_json::Value,
    source: Option<SettingSource>,
}

/// The setting `key` names: a live key (`default_ttl` is `default_ttl_ms`)
/// or `policy.<prefix>`. Returns the key as the coordinators show it and
/// as the config bucket stores it.
fn setting_key(key: &str) -> Result<(String, String), CliError> {
    match key.strip_prefix(POLICY_PREFIX) {
        Some(prefix) => {
            let name = LockName::new(prefix.trim_end_matches(':'))
                .map_err(|e| Exit::with(2, format!("{key}: {e}")))?;
            Ok((
                format!("{POLICY_PREFIX}{}", name.as_str()),
                format!("{POLICY_PREFIX}{}", name.key()),
            ))
        }
        None if LIVE_KEYS.contains(&key) => Ok((key.to_owned(), key.to_owned())),
        None if LIVE_KEYS.contains(&format!("{key}_ms").as_str()) => {
            Ok((format!("{key}_ms"), format!("{key}_ms")))
        }
        None => Err(Exit::with(
            2,
            format!(
                "{key:?} is not a live setting (one of: {}, or policy.<prefix>)",
                LIVE_KEYS.join(", ")
            ),
        )),
    }
}

async fn entries(store: &kv::Store) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.try_collect().await?,
        Err(e) => return Err(format!("cannot list {CONFIG_BUCKET}: {e}").into()),
    };
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(value) = store.get(&key).await? {
            out.insert(key, value.to_vec());
        }
    }
    Ok(out)
}

/// One row per setting any coordinator applies, in the order they list
/// them; `disagree` filled where their values or sources differ.
fn rows(mut views: Vec<SettingsView>) -> Vec<Row> {
    views.sort_by(|a, b| a.coordinator.cmp(&b.coordinator));
    let mut keys: Vec<&str> = Vec::new();
    for view in &views {
        for s in &view.settings {
            if !keys.contains(&s.key.as_str()) {
                keys.push(&s.key);
            }
        }
    }
    keys.iter()
        .map(|&key| {
            let applied: Vec<Applied> = views
                .iter()
                .map(|v| {
                    let s = v.settings.iter().find(|s| s.key == key);
                    Applied {
                        coordinator: v.coordinator.clone(),
                        value: s.map_or(serde_json::Value::Null, |s| s.value.clone()),
                        source: s.map(|s| s.source),
                    }
                })
                .collect();
            let first = applied
                .iter()
                .find(|a| a.source.is_some())
                .expect("some coordinator lists the key");
            let agree = applied
                .iter()
                .all(|a| a.value == first.value && a.source == first.source);
            Row {
                key: key.to_owned(),
                value: first.value.clone(),
                source: first.source.expect("found by its source"),
                disagree: if agree { Vec::new() } else { applied.clone() },
            }
        })
        .collect()
}

/// What the config bucket says over the compiled defaults, for when no
/// coordinator answers. Reads only: a missing bucket is not created.
async fn unapplied(js: &jetstream::Context) -> Result<Vec<Row>, CliError> {
    let set = match js.get_key_value(CONFIG_BUCKET).await {
        Ok(store) => entries(&store).await?,
        Err(_) => BTreeMap::new(),
    };
    let defaults = serde_json::to_value(Config::default().live())?;
    let json = |v: &[u8]| serde_json::from_slice(v).unwrap_or(serde_json::Value::Null);
    let mut rows: Vec<Row> = LIVE_KEYS
        .iter()
        .map(|&k| {
            let (value, source) = match set.get(k) {
                Some(v) => (json(v), SettingSource::Bucket),
                None => (defaults[k].clone(), SettingSource::Default),
            };
            Row {
                key: k.to_owned(),
                value,
                source,
                disagree: Vec::new(),
            }
        })
        .collect();
    for (k, v) in set.iter() {
        let Some(key) = k.strip_prefix(POLICY_PREFIX) else {
            continue;
        };
        let Ok(name) = LockName::from_key(key) else {
            continue;
        };
        rows.push(Row {
            key: format!("{POLICY_PREFIX}{}", name.as_str()),
            value: json(v),
            source: SettingSource::Bucket,
            disagree: Vec::new(),
        });
    }
    Ok(rows)
}

/// The settings as applied, or (with a note) as the bucket would make them.
async fn applied(nats: &async_nats::Client) -> Result<Vec<Row>, CliError> {
    let views: Vec<SettingsView> = admin::ask_every(nats, SETTINGS).await?;
    if views.is_empty() {
        eprintln!(
            "jetlock: no coordinator answered: showing the config bucket over the \
             compiled defaults, not what a coordinator applies"
        );
        return unapplied(&jetstream::new(nats.clone())).await;
    }
    let rows = rows(views);
    for row in rows.iter().filter(|r| !r.disagree.is_empty()) {
        let each: Vec<String> = row
            .disagree
            .iter()
            .map(|a| match a.source {
                Some(source) => format!("{} {} ({})", a.coordinator, a.value, source.as_str()),
                None => format!("{} unset", a.coordinator),
            })
            .collect();
        eprintln!(
            "jetlock: coordinators disagree on {}: {}",
            row.key,
            each.join(", ")
        );
    }
    Ok(rows)
}

/// A duration setting's value with units (`10s`) as the JSON number of ms
/// coordinators read; other values unchanged.
fn json_value(key: &str, value: &str) -> Result<String, CliError> {
    if key.ends_with("_ms") && serde_json::from_str::<serde_json::Value>(value).is_err() {
        let ms = jetlock_coordinator::duration::parse_ms(value)
            .map_err(|e| Exit::with(2, format!("{key}: {e}")))?;
        return Ok(ms.to_string());
    }
    Ok(value.to_owned())
}

pub async fn run(args: ConfigArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    match args.action {
        Action::List { json } => {
            let rows = applied(&nats).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let source = if r.disagree.is_empty() {
                            r.source.as_str()
                        } else {
                            "(coordinators disagree)"
                        };
                        vec![r.key.clone(), r.value.to_string(), source.to_owned()]
                    })
                    .collect();
                table::print(&["SETTING", "VALUE", "SOURCE"], &rows);
            }
        }
        Action::Get { key } => {
            let (shown, _) = setting_key(&key)?;
            let rows = applied(&nats).await?;
            match rows.iter().find(|r| r.key == shown) {
                Some(row) => println!("{}", row.value),
                None => return Err(Exit::with(3, format!("{key} is not set"))),
            }
        }
        Action::Set { key, value } => {
            let (shown, bucket_key) = setting_key(&key)?;
            let value = json_value(&bucket_key, &value)?;
            let store = config_bucket(&nats).await?;
            let mut set = entries(&store).await?;
            set.insert(bucket_key.clone(), value.clone().into_bytes());
            check(&Config::default().live(), &set)?;
            store.put(&bucket_key, value.clone().into()).await?;
            println!("{shown} = {value}");
        }
        Action::Unset { key } => {
            let (shown, bucket_key) = setting_key(&key)?;
            let store = config_bucket(&nats).await?;
            store.delete(&bucket_key).await?;
            println!("{shown} unset");
        }
    }
    Ok(())
}

/// The config bucket, created if missing: only a write needs it.
async fn config_bucket(nats: &async_nats::Client) -> Result<kv::Store, CliError> {
    let js = jetstream::new(nats.clone());
    jetlock::bucket::ensure_config_bucket(&js, 1)
        .await
        .map_err(|e| {
            format!(
                "cannot open the config bucket {CONFIG_BUCKET} (start `jetlock serve` once): {e}"
            )
            .into()
        })
}

/// The settings `entries` make, checked; nothing is written when they do
/// not fit.
fn check(base: &LiveSettings, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), CliError> {
    base.with_overlay(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map(|_| ())
        .map_err(|e| Exit::with(1, format!("refused, nothing written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetlock_coordinator::admin::SettingView;
    use serde_json::json;

    fn view(id: &str, ttl: u64, source: SettingSource) -> SettingsView {
        SettingsView {
            coordinator: id.into(),
            settings: vec![
                SettingView {
                    key: "default_ttl_ms".into(),
                    value: json!(ttl),
                    source,
                },
                SettingView {
                    key: "max_waiters".into(),
                    value: json!(5),
                    source: SettingSource::Bucket,
                },
            ],
        }
    }

    #[test]
    fn coordinators_that_differ_are_named_and_those_that_agree_are_not() {
        let rows = rows(vec![
            view("c-2", 10_000, SettingSource::Default),
            view("c-1", 20_000, SettingSource::File),
        ]);
        assert_eq!(rows[0].key, "default_ttl_ms");
        assert_eq!(rows[0].value, json!(20_000), "the first by id");
        assert_eq!(rows[0].disagree.len(), 2);
        assert_eq!(rows[0].disagree[1].source, Some(SettingSource::Default));
        assert!(rows[1].disagree.is_empty());
    }

    #[test]
    fn durations_with_units_are_written_as_ms() {
        assert_eq!(json_value("default_ttl_ms", "10s").unwrap(), "10000");
        assert_eq!(json_value("default_ttl_ms", "3000").unwrap(), "3000");
        assert_eq!(json_value("max_waiters", "7").unwrap(), "7");
        assert_eq!(setting_key("default_ttl").unwrap().0, "default_ttl_ms");
    }
}
