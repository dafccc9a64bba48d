//! The `jetlock` command: argument parsing and dispatch. One file per
//! subcommand; `src/main.rs` only calls [`main`]. The locks themselves are
//! the `jetlock` crate's, `jetlock serve` runs `jetlock-coordinator`, and
//! `jetlock dev` and the demo start nats-server through `jetlock-testkit`.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's, and a lock
//! name or setting that cannot be), 3 not found (`release --force` of a
//! lock nobody holds, `leader` of an election nobody leads), 4 a `doctor`
//! check failed or `hold` lost its lock (`elect` its leadership), 5 no
//! coordinator answered; `elect` otherwise exits with its command's
//! status. A subcommand chooses its code by returning [`Exit`].

mod admin;
mod auth;
pub mod bench;
mod demo;
mod dev;
mod docs;
mod doctor;
mod elect;
mod history;
mod hold;
mod http;
mod leader;
mod locks;
mod members;
mod release;
mod serve;
mod settings;
mod setup;
mod table;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Errors of the command line, printed for a person.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// An error that ends the process with its own exit code. `message` is
/// printed like any error unless it is empty (the command said it all).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn with(code: u8, message: impl Into<String>) -> CliError {
        Box::new(Exit {
            code,
            message: message.into(),
        })
    }
}

pub use auth::AuthArgs;

/// Where to reach NATS, shared by every subcommand that connects.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// NATS server URL(s), comma-separated; `nats://user:password@host:4222`
    /// carries credentials [default: NATS_URL, else the context's url, else
    /// nats://127.0.0.1:4222].
    #[arg(long, global = true, env = "JETLOCK_URL")]
    url: Option<String>,
    /// The locks bucket.
    #[arg(long, global = true, env = "JETLOCK_BUCKET", default_value = jetlock_bucket())]
    pub bucket: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl Connection {
    /// The servers and how to log in, from flags, environment and context.
    pub fn target(&self) -> Result<(String, jetlock::connect::Auth), CliError> {
        let target = self.auth.resolve(self.url.as_deref())?;
        let url = target.url.unwrap_or_else(|| auth::DEFAULT_URL.to_owned());
        Ok((url, target.auth))
    }

    /// A plain NATS connection to the configured servers.
    pub async fn nats(&self) -> Result<async_nats::Client, CliError> {
        let (url, auth) = self.target()?;
        let options = async_nats::ConnectOptions::new().name("jetlock");
        Ok(jetlock::connect::nats(&url, &auth, options).await?)
    }
}

/// clap's parser for a duration flag: `250ms`, `10s`, or an integer of ms.
fn duration_ms(text: &str) -> Result<u64, String> {
    jetlock_coordinator::duration::parse_ms(text)
}

const fn jetlock_bucket() -> &'static str {
    jetlock::bucket::DEFAULT_BUCKET
}

#[derive(Debug, Parser)]
#[command(
    name = "jetlock",
    version,
    about = "Distributed locks with fencing tokens on NATS JetStream"
)]
struct Cli {
    /// Log format on stderr: `text` or `json` (the level comes from
    /// `JETLOCK_LOG`, e.g. `info` or `jetlock=debug`).
    #[arg(
        long,
        global = true,
        env = "JETLOCK_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local nats-server with JetStream, create the locks bucket and
    /// show locks being taken, waited for, expired and fenced.
    Dev(dev::DevArgs),
    /// Create the locks bucket, or check that an existing one is safe.
    Setup(setup::SetupArgs),
    /// List held locks: name, owner, session, token, held for, lease
    /// left, waiters.
    Locks(locks::LocksArgs),
    /// Follow lock and membership events live, one line each.
    Watch(watch::WatchArgs),
    /// Who held a lock when, from the event stream.
    History(history::HistoryArgs),
    /// Live coordinators and sessions: last heartbeat, locks held.
    Members(members::MembersArgs),
    /// Take a lock away from its holder (an operator revocation, kept in
    /// the event stream). Exit 3 when the lock is not held.
    Release(release::ReleaseArgs),
    /// Read and change the live settings coordinators apply without a
    /// restart.
    Config(settings::ConfigArgs),
    /// Run a coordinator: FIFO queues, sessions, failover, the JSON
    /// protocol for any NATS client.
    Serve(serve::ServeArgs),
    /// Take a lock and hold it until stdin closes or Ctrl-C; prints the
    /// fencing token as JSON.
    Hold(hold::HoldArgs),
    /// Run a command only while leader of an election: campaign, run it
    /// once elected (the term in JETLOCK_TERM), stop it (SIGTERM, then
    /// SIGKILL after --grace) and exit 4 if the leadership is lost; exit
    /// with its status when it ends.
    Elect(elect::ElectArgs),
    /// Who leads an election: candidate, session, term, since. Exit 3 when
    /// nobody leads; --watch follows each change.
    Leader(leader::LeaderArgs),
    /// Measure lock latency and throughput beside the raw NATS floor.
    Bench(bench::BenchArgs),
    /// Payment workers (child processes) move money between accounts under
    /// locks, with fencing and process-once, optionally under chaos; ends
    /// with invariant checks.
    Demo(demo::DemoArgs),
    /// Check a deployment (server versions, fsync, bucket and streams,
    /// coordinators, clocks) and say what to fix. Exit code 4 when a check
    /// fails; warnings alone exit 0.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script: `jetlock completions bash >
    /// /etc/bash_completion.d/jetlock`.
    Completions(docs::CompletionsArgs),
    /// Print a man page (roff): `jetlock man | man -l -`, or one command's,
    /// `jetlock man hold`.
    Man(docs::ManArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let mut builder = match &cli.command {
        Command::Serve(args) if args.threads == 1 => tokio::runtime::Builder::new_current_thread(),
        Command::Serve(args) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(args.threads));
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Setup(args) => setup::run(args).await,
            Command::Locks(args) => locks::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::History(args) => history::run(args).await,
            Command::Members(args) => members::run(args).await,
            Command::Release(args) => release::run(args).await,
            Command::Config(args) => settings::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Hold(args) => hold::run(args).await,
            Command::Elect(args) => elect::run(args).await,
            Command::Leader(args) => leader::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Completions(args) => docs::completions::<Cli>(args),
            Command::Man(args) => docs::man::<Cli>(args),
        }
    });
    // Do not wait for blocking reads still in flight (`hold` reads stdin on
    // a blocking thread until it closes): the command is over.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("jetlock: {}", exit.message);
                }
                return ExitCode::from(exit.code);
            }
            for line in error_lines(e.as_ref()) {
                eprintln!("{line}");
            }
            if is_usage_error(e.as_ref()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A lock name that cannot be is the caller's mistake, as clap's are.
fn is_usage_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<jetlock::name::NameError>().is_some()
        || matches!(
            e.downcast_ref::<jetlock::LockError>(),
            Some(jetlock::LockError::InvalidName(_))
        )
}

/// The error and its causes, one line each, leaving out a cause whose text
/// its parent already shows (wrappers that print their source, like
/// `#[error(transparent)]` or `"...: {source}"`, would repeat it).
fn error_lines(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut lines = vec![format!("jetlock: {e}")];
    let mut shown = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !shown.contains(&text) {
            lines.push(format!("  caused by: {text}"));
            shown = text;
        }
        source = s.source();
    }
    lines
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETLOCK_LOG")
        .unwrap_or_else(|_| "warn".into());
    // Colour only for a person at a terminal: not in a pipe or a log file,
    // and not when NO_COLOR (no-color.org) is set to anything.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // One JSON object per line, with the request span's fields.
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not connect: {0}")]
    struct Wrapper(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the bucket")]
    struct Terse(#[source] std::io::Error);

    #[test]
    fn a_cause_its_parent_already_shows_is_not_repeated() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let lines = error_lines(&Wrapper(refused));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let lines = error_lines(&Terse(std::io::Error::other("disk full")));
        assert_eq!(
            lines,
            ["jetlock: cannot open the bucket", "  caused by: disk full"]
        );
    }
}
