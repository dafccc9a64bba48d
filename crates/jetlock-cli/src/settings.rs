//! `jetlock config list|get|set|unset`: the live settings in the config
//! bucket (`jetlock_config`), which every coordinator watches and applies
//! without a restart. Values are JSON (`5000`, `{"max_ttl_ms": 60000}`).
//! `set` checks the value against the defaults before writing; a
//! coordinator whose file sets other values checks again and refuses a
//! change that does not fit (see the `config.changed` event).

use super::{table, CliError, Connection, Exit};
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use jetlock::bucket::CONFIG_BUCKET;
use jetlock::name::LockName;
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
    /// Every live setting: its value and whether the bucket sets it.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One setting's value (`policy.PREFIX` for a prefix's policy).
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

#[derive(Debug, Serialize)]
struct Row {
    key: String,
    value: serde_json::Value,
    /// `bucket` when the config bucket sets it, `default` otherwise.
    source: &'static str,
}

/// Turns `policy.account:eu` into the bucket key `policy.account.eu`.
fn bucket_key(key: &str) -> Result<String, CliError> {
    match key.strip_prefix(POLICY_PREFIX) {
        Some(prefix) => Ok(format!(
            "{POLICY_PREFIX}{}",
            LockName::new(prefix.trim_end_matches(':'))?.key()
        )),
        None if LIVE_KEYS.contains(&key) => Ok(key.to_owned()),
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

pub async fn run(args: ConfigArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let js = jetstream::new(nats);
    let store = jetlock::bucket::ensure_config_bucket(&js, 1)
        .await
        .map_err(|e| {
            format!(
                "cannot open the config bucket {CONFIG_BUCKET} (start `jetlock serve` once): {e}"
            )
        })?;
    let base = Config::default().live();
    match args.action {
        Action::List { json } => {
            let set = entries(&store).await?;
            let defaults = serde_json::to_value(&base)?;
            let mut rows: Vec<Row> = LIVE_KEYS
                .iter()
                .map(|k| match set.get(*k) {
                    Some(v) => Row {
                        key: (*k).to_owned(),
                        value: serde_json::from_slice(v).unwrap_or(serde_json::Value::Null),
                        source: "bucket",
                    },
                    None => Row {
                        key: (*k).to_owned(),
                        value: defaults[*k].clone(),
                        source: "default",
                    },
                })
                .collect();
            for (k, v) in set.iter().filter(|(k, _)| k.starts_with(POLICY_PREFIX)) {
                rows.push(Row {
                    key: k.clone(),
                    value: serde_json::from_slice(v).unwrap_or(serde_json::Value::Null),
                    source: "bucket",
                });
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| vec![r.key.clone(), r.value.to_string(), r.source.to_owned()])
                    .collect();
                table::print(&["SETTING", "VALUE", "SOURCE"], &rows);
            }
        }
        Action::Get { key } => {
            let bucket_key = bucket_key(&key)?;
            match store.get(&bucket_key).await? {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None if !key.starts_with(POLICY_PREFIX) => {
                    println!("{}", serde_json::to_value(&base)?[key.as_str()])
                }
                None => return Err(Exit::with(3, format!("{key} is not set"))),
            }
        }
        Action::Set { key, value } => {
            let bucket_key = bucket_key(&key)?;
            let mut set = entries(&store).await?;
            set.insert(bucket_key.clone(), value.clone().into_bytes());
            check(&base, &set)?;
            store.put(&bucket_key, value.clone().into()).await?;
            println!("{key} = {value}");
        }
        Action::Unset { key } => {
            let bucket_key = bucket_key(&key)?;
            store.delete(&bucket_key).await?;
            println!("{key} unset");
        }
    }
    Ok(())
}

/// The settings `entries` make, checked; nothing is written when they do
/// not fit.
fn check(base: &LiveSettings, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), CliError> {
    base.with_overlay(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map(|_| ())
        .map_err(|e| Exit::with(1, format!("refused, nothing written: {e}")))
}
