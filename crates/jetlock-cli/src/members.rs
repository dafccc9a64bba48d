//! `jetlock members`: live coordinators and sessions, as a coordinator
//! sees them (`jetlock.admin.members`), with who each session's client
//! says it is (name, host, pid) where it says.

use super::{admin, table, CliError, Connection};
use jetlock_coordinator::admin::MembersView;

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    #[command(flatten)]
    conn: Connection,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: MembersArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let view: MembersView =
        admin::ask(&nats, jetlock_coordinator::admin::MEMBERS, Vec::new()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("coordinators (answered by {}):", view.coordinator);
    let rows: Vec<Vec<String>> = view
        .coordinators
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                format!("{}ms ago", c.last_seen_ms),
                c.locks.to_string(),
            ]
        })
        .collect();
    table::print(&["ID", "LAST HEARTBEAT", "LOCKS SERVED"], &rows);
    println!();
    println!("sessions ({}):", view.sessions.len());
    let rows: Vec<Vec<String>> = view
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.session.clone(),
                format!("{}ms ago", s.last_seen_ms),
                format!("{}ms", s.timeout_ms),
                s.locks_held.to_string(),
                s.waiting.to_string(),
                s.served_by.clone(),
                client(s.client.as_ref()),
            ]
        })
        .collect();
    table::print(
        &[
            "SESSION",
            "LAST HEARTBEAT",
            "TIMEOUT",
            "HELD",
            "WAITING",
            "SERVED BY",
            "CLIENT",
        ],
        &rows,
    );
    Ok(())
}

/// `name host:pid`, as much of it as the session said (older clients say
/// nothing: `-`).
fn client(info: Option<&jetlock::protocol::ClientInfo>) -> String {
    let Some(info) = info else {
        return "-".into();
    };
    let place = match (&info.host, info.pid) {
        (Some(host), Some(pid)) => format!("{host}:{pid}"),
        (Some(host), None) => host.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => String::new(),
    };
    let text = [info.name.clone().unwrap_or_default(), place]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}
