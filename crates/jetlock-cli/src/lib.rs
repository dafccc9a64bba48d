//! The `jetlock` command: argument parsing and dispatch. One file per
//! subcommand; `src/main.rs` only calls [`main`]. The locks themselves are
//! the `jetlock` crate's, `jetlock serve` runs `jetlock-coordinator`, and
//! `jetlock dev` and the demo start nats-server through `jetlock-testkit`.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's), 3 not found
//! (`release --force` of a lock nobody holds), 4 a `doctor` check failed,
//! 5 no coordinator answered. A subcommand chooses its code by returning
//! [`Exit`].

mod admin;
mod auth;
pub mod bench;
mod demo;
mod dev;
mod doctor;
mod history;
mod hold;
mod http;
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
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
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
            Command::Demo(args) => demo::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
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
            eprintln!("jetlock: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETLOCK_LOG")
        .unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // One JSON object per line, with the request span's fields.
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
