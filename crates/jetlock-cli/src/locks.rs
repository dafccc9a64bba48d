//! `jetlock locks [PREFIX]`: the held locks. A coordinator answers with
//! waiters and lease left (`jetlock.admin.locks`); without one, the records
//! are read from the bucket and those two columns stay empty.

use super::{admin, table, CliError, Connection};
use futures::TryStreamExt;
use jetlock::bucket::open_bucket;
use jetlock::clock::unix_ms;
use jetlock::name::{self, LockName};
use jetlock::store::{Current, LockStore};
use jetlock_coordinator::admin::{LocksQuery, LocksView};
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
    /// The name locked: a read/write lock's or semaphore's for their parts.
    pub name: String,
    /// `lock`, or a part of a read/write lock (`read`, `write`) or of a
    /// semaphore (`permit`, `queue`: its first waiter).
    pub kind: &'static str,
    /// The permit's number, for a semaphore's permits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permit: Option<u32>,
    pub key: String,
    pub owner: String,
    pub session: String,
    pub token: u64,
    pub holds: u32,
    pub lease_ms: u64,
    /// Since the grant, by the granting clock (informational).
    pub held_ms: u64,
    /// Lease left, as the serving coordinator saw it (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_left_ms: Option<u64>,
    /// Waiting sessions (absent without a coordinator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiters: Option<u32>,
}

pub async fn run(args: LocksArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let query = LocksQuery {
        prefix: args.prefix.clone(),
    };
    let body = serde_json::to_vec(&query)?;
    let views = match admin::ask::<LocksView>(&nats, jetlock_coordinator::admin::LOCKS, body).await
    {
        // The coordinators serve another bucket than the one asked for.
        Ok(view) if view.bucket.as_ref().is_some_and(|b| *b != args.conn.bucket) => {
            eprintln!(
                "jetlock: the coordinators serve bucket {}; reading bucket {} itself (no waiters, no lease left)",
                view.bucket.unwrap_or_default(),
                args.conn.bucket
            );
            from_bucket(&args, nats).await?
        }
        Ok(view) => from_coordinator(view),
        Err(e) if e.downcast_ref::<super::Exit>().is_some_and(|x| x.code == 5) => {
            eprintln!(
                "jetlock: no coordinator answered; reading the bucket (no waiters, no lease left)"
            );
            from_bucket(&args, nats).await?
        }
        Err(e) => return Err(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print_table(&views);
    }
    Ok(())
}

fn from_coordinator(view: LocksView) -> Vec<LockView> {
    view.locks
        .into_iter()
        .filter_map(|l| {
            let h = l.holder?;
            let (name, kind, permit) = held_as(&l.name);
            Some(LockView {
                name,
                kind,
                permit,
                key: l.key,
                owner: h.owner,
                session: h.session,
                token: h.token,
                holds: h.holds,
                lease_ms: h.lease_ms,
                held_ms: h.held_ms,
                lease_left_ms: Some(h.lease_left_ms),
                waiters: Some(l.waiters.len() as u32),
            })
        })
        .collect()
}

async fn from_bucket(
    args: &LocksArgs,
    nats: async_nats::Client,
) -> Result<Vec<LockView>, CliError> {
    let js = async_nats::jetstream::new(nats);
    let kv = open_bucket(&js, &args.conn.bucket).await?;
    let store = LockStore::new(js, kv).await?;
    let key_prefix = args
        .prefix
        .as_deref()
        .map(|p| name::encode(p.trim_end_matches(':')));
    let mut keys: Vec<String> = Vec::new();
    for kv in store.kvs() {
        let mut some: Vec<String> = kv.keys().await?.try_collect().await?;
        keys.append(&mut some);
    }
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
            Ok(Current::Held { revision, record }) => views.push({
                let (name, kind, permit) = held_as(name.as_str());
                LockView {
                    name,
                    kind,
                    permit,
                    key,
                    token: record.token_at(revision),
                    held_ms: now.saturating_sub(record.acquired_ms),
                    owner: record.owner,
                    session: record.session,
                    holds: record.holds,
                    lease_ms: record.lease_ms,
                    lease_left_ms: None,
                    waiters: None,
                }
            }),
            Ok(Current::Vacant { .. }) => {} // released since the listing
            Err(e) => eprintln!("jetlock: skipping lock {name}: {e}"),
        }
    }
    Ok(views)
}

/// The name a view shows, what the key is under it, and a permit's number.
fn held_as(full: &str) -> (String, &'static str, Option<u32>) {
    let held = jetlock::client::HeldAs::of(full);
    let permit = match held {
        jetlock::client::HeldAs::Permit { index, .. } => Some(index),
        _ => None,
    };
    (held.name(full).to_owned(), held.kind(), permit)
}

fn print_table(views: &[LockView]) {
    if views.is_empty() {
        println!("no locks held");
        return;
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                match v.permit {
                    Some(i) => format!("{} {i}", v.kind),
                    None => v.kind.to_owned(),
                },
                v.owner.clone(),
                v.session.clone(),
                v.token.to_string(),
                v.holds.to_string(),
                table::secs(v.held_ms),
                opt(v.lease_left_ms.map(table::secs)),
                opt(v.waiters.map(|w| w.to_string())),
            ]
        })
        .collect();
    table::print(
        &[
            "NAME",
            "KIND",
            "OWNER",
            "SESSION",
            "TOKEN",
            "HOLDS",
            "HELD FOR",
            "LEASE LEFT",
            "WAITERS",
        ],
        &rows,
    );
}
