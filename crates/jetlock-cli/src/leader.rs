//! `jetlock leader NAME`: who leads election NAME (`jetlock::Election`):
//! candidate, session, term, since. Read from the locks bucket, so it
//! works with no coordinator running. `--watch` follows each change of
//! term until interrupted. Exit 3 when nobody leads (without `--watch`).

use super::{table, CliError, Connection, Exit};
use futures::StreamExt;
use jetlock::bucket::open_bucket;
use jetlock::clock::unix_ms;
use jetlock::recipes::Leader;
use jetlock::store::LockStore;
use jetlock::Election;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    conn: Connection,
    /// The election's name (its lock is `election:NAME`).
    name: String,
    /// Follow the leadership: one line per new term or vacancy, until
    /// interrupted.
    #[arg(long)]
    watch: bool,
    /// One JSON object per line (`{"election", "leader": null | {...}}`).
    #[arg(long)]
    json: bool,
}

/// Who leads, as printed (`--json` field names are a stable contract).
#[derive(Debug, Serialize)]
struct LeaderView<'a> {
    election: &'a str,
    /// `null` when nobody leads.
    leader: Option<LeaderFields>,
}

#[derive(Debug, Serialize)]
struct LeaderFields {
    candidate: String,
    session: String,
    term: u64,
    /// When it was elected (ms since the Unix epoch, the electing clock).
    since_ms: u64,
    lease_ms: u64,
}

pub async fn run(args: LeaderArgs) -> Result<(), CliError> {
    // A name that cannot be is a usage error, found before connecting.
    jetlock::recipes::election_lock(&args.name).map_err(|e| Exit::with(2, e.to_string()))?;
    let js = async_nats::jetstream::new(args.conn.nats().await?);
    let kv = open_bucket(&js, &args.conn.bucket).await?;
    let store = LockStore::new(js, kv).await?;
    if !args.watch {
        let leader = Election::leader_in(&store, &args.name).await?;
        let nobody = leader.is_none();
        print(&args, leader);
        if nobody {
            return Err(Exit::with(3, ""));
        }
        return Ok(());
    }
    let mut changes = Election::observe_in(&store, &args.name).await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(leader)) => print(&args, leader),
                Some(Err(e)) => eprintln!("jetlock: {e} (watching again)"),
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

fn print(args: &LeaderArgs, leader: Option<Leader>) {
    if args.json {
        let view = LeaderView {
            election: &args.name,
            leader: leader.map(|l| LeaderFields {
                candidate: l.candidate,
                session: l.session,
                term: l.term.get(),
                since_ms: l.since_ms,
                lease_ms: l.lease.as_millis() as u64,
            }),
        };
        println!(
            "{}",
            serde_json::to_string(&view).expect("a view serialises")
        );
        return;
    }
    match leader {
        None => println!("{}: no leader", args.name),
        Some(l) => println!(
            "{}: led by {} (session {}), term {}, since {} ({} ago)",
            args.name,
            l.candidate,
            l.session,
            l.term,
            table::time(l.since_ms),
            table::secs(unix_ms().saturating_sub(l.since_ms)),
        ),
    }
}
