//! `jetlock locks [PREFIX]`: the held locks, decoded from their records.

use super::{CliError, Connection};
use crate::bucket::open_bucket;
use crate::client::unix_ms;
use crate::name::{self, LockName};
use crate::store::{Current, LockStore};
use futures::TryStreamExt;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct LocksArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only locks whose name starts with this segment prefix (`account`
    /// lists `account:42` and `account:7:eu`).
    prefix: Option<String>,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
}

/// One held lock, as printed (`--json` field names are a stable contract).
#[derive(Debug, Serialize)]
pub struct LockView {
    pub name: String,
    pub key: String,
    pub owner: String,
    pub session: String,
    pub token: u64,
    pub holds: u32,
    pub lease_ms: u64,
    /// Since the grant, by the holder's wall clock (informational).
    pub held_ms: u64,
}

pub async fn run(args: LocksArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let js = async_nats::jetstream::new(nats);
    let kv = open_bucket(&js, &args.conn.bucket).await?;
    let store = LockStore::new(js, kv.clone()).await?;
    let key_prefix = args
        .prefix
        .as_deref()
        .map(|p| name::encode(p.trim_end_matches(':')));
    let mut keys: Vec<String> = kv.keys().await?.try_collect().await?;
    keys.retain(|k| match &key_prefix {
        Some(p) => {
            k == p
                || k.strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        }
        None => true,
    });
    keys.sort();
    let now = unix_ms();
    let mut views = Vec::new();
    for key in keys {
        let name = match LockName::from_key(&key) {
            Ok(name) => name,
            Err(e) => {
                eprintln!("jetlock: skipping key {key:?}: {e}");
                continue;
            }
        };
        match store.read(&name).await {
            Ok(Current::Held { revision, record }) => views.push(LockView {
                name: name.as_str().to_owned(),
                key,
                token: record.token_at(revision),
                held_ms: now.saturating_sub(record.acquired_ms),
                owner: record.owner,
                session: record.session,
                holds: record.holds,
                lease_ms: record.lease_ms,
            }),
            Ok(Current::Vacant { .. }) => {} // released since the listing
            Err(e) => eprintln!("jetlock: skipping lock {name}: {e}"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print_table(&views);
    }
    Ok(())
}

fn print_table(views: &[LockView]) {
    if views.is_empty() {
        println!("no locks held");
        return;
    }
    let rows: Vec<[String; 7]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.owner.clone(),
                v.session.clone(),
                v.token.to_string(),
                v.holds.to_string(),
                format!("{:.1}s", v.lease_ms as f64 / 1000.0),
                format!("{:.1}s", v.held_ms as f64 / 1000.0),
            ]
        })
        .collect();
    let header = [
        "NAME", "OWNER", "SESSION", "TOKEN", "HOLDS", "LEASE", "HELD FOR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(&header.map(String::from)));
    for row in &rows {
        println!("{}", line(row));
    }
}
