//! `jetlock elect NAME -- CMD ARGS...`: run a command only while leader of
//! election NAME (`jetlock::Election`). It campaigns (waiting in line with
//! the other candidates), runs the command once elected, with the term in
//! its environment (`JETLOCK_TERM`, to fence its writes), and:
//!
//! - when the command exits, resigns and exits with the command's status
//!   (128 + N when a signal N ended it);
//! - when the leadership is lost (revoked, session over, lease run out),
//!   sends the command SIGTERM, then SIGKILL after `--grace`, and exits 4;
//! - on SIGINT or SIGTERM, passes SIGTERM on to the command the same way,
//!   resigns and exits with the command's status.

use super::hold::{LeaseArgs, LOST};
use super::{CliError, Connection, Exit};
use std::process::ExitStatus;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    connection: Connection,
    /// The election (its lock is `election:NAME`).
    name: String,
    #[command(flatten)]
    lease: LeaseArgs,
    /// Give up campaigning after this long (exit 1): `10m` [default: wait
    /// until elected].
    #[arg(long, value_parser = super::duration_ms)]
    wait: Option<u64>,
    /// How long the command has between SIGTERM and SIGKILL once the
    /// leadership is lost: `5s`.
    #[arg(long, default_value = "5s", value_parser = super::duration_ms)]
    grace: u64,
    /// The command to run while leader, and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(args: ElectArgs) -> Result<(), CliError> {
    jetlock::recipes::election_lock(&args.name).map_err(|e| Exit::with(2, e.to_string()))?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let client = args.lease.connect(&args.connection, "elect").await?;
    let mut election = client
        .election(&args.name)
        .candidate(args.lease.owner("elect"))
        .ttl(Duration::from_millis(args.lease.ttl));
    if let Some(wait) = args.wait {
        election = election.wait(Duration::from_millis(wait));
    }
    let leadership = tokio::select! {
        leadership = election.campaign() => leadership?,
        // Not elected: nothing to stop.
        _ = int.recv() => return Err(Exit::with(130, "")),
        _ = term.recv() => return Err(Exit::with(143, "")),
    };
    eprintln!(
        "jetlock: leader of {}, term {} (session {}); running {}",
        args.name,
        leadership.term(),
        client.session(),
        args.command[0]
    );
    let spawned = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("JETLOCK_ELECTION", &args.name)
        .env("JETLOCK_TERM", leadership.term().to_string())
        .env("JETLOCK_SESSION", client.session())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = leadership.resign().await;
            return Err(format!("cannot run {}: {e}", args.command[0]).into());
        }
    };
    let grace = Duration::from_millis(args.grace);
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = leadership.lost() => {
            let status = stop(&mut child, grace).await?;
            let why = leadership.lost_reason().map(|r| r.to_string()).unwrap_or_default();
            return Err(Exit::with(LOST, format!(
                "lost the leadership of {}: {why}; {} stopped ({})",
                args.name, args.command[0], status
            )));
        }
        _ = int.recv() => stop(&mut child, grace).await?,
        _ = term.recv() => stop(&mut child, grace).await?,
    };
    // The command is over: step down for the next candidate. A leadership
    // lost meanwhile has nothing to release.
    let _ = leadership.resign().await;
    match exit_code(status) {
        0 => Ok(()),
        code => Err(Exit::with(code, "")),
    }
}

/// SIGTERM, then SIGKILL if the command has not exited within `grace`.
async fn stop(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which `child` has not
        // reaped yet (so the pid is still ours).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            child.kill().await?;
            child.wait().await
        }
    }
}

/// The exit code a shell would give: the status, or 128 + the signal.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
