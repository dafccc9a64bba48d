//! The `jetlock` command: argument parsing and dispatch. One file per
//! subcommand; `src/main.rs` only calls [`main`].
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's); a subcommand
//! may choose another by returning [`Exit`] (`jetlock doctor`: 4 when a
//! check failed).

pub mod bench;
mod dev;
mod doctor;
mod hold;
mod locks;
mod serve;
mod setup;

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

/// Where to reach NATS, shared by every subcommand that connects.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "JETLOCK_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The locks bucket.
    #[arg(long, env = "JETLOCK_BUCKET", default_value = jetlock_bucket())]
    pub bucket: String,
}

impl Connection {
    /// A plain NATS connection to the configured servers.
    pub async fn nats(&self) -> Result<async_nats::Client, CliError> {
        let servers = crate::client::server_list(&self.url);
        async_nats::connect(servers)
            .await
            .map_err(|e| format!("could not connect to NATS at {}: {e}", self.url).into())
    }
}

const fn jetlock_bucket() -> &'static str {
    crate::bucket::DEFAULT_BUCKET
}

#[derive(Debug, Parser)]
#[command(
    name = "jetlock",
    version,
    about = "Distributed locks with fencing tokens on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local nats-server with JetStream, create the locks bucket and
    /// show locks being taken, waited for, expired and fenced.
    Dev(dev::DevArgs),
    /// Create the locks bucket, or check that an existing one is safe.
    Setup(setup::SetupArgs),
    /// List held locks (name, owner, session, token, holds, lease).
    Locks(locks::LocksArgs),
    /// Run a coordinator: FIFO queues, sessions, failover, the JSON
    /// protocol for any NATS client.
    Serve(serve::ServeArgs),
    /// Take a lock and hold it until stdin closes or Ctrl-C; prints the
    /// fencing token as JSON.
    Hold(hold::HoldArgs),
    /// Measure lock latency and throughput beside the raw NATS floor.
    Bench(bench::BenchArgs),
    /// Check a deployment (server versions, fsync, bucket and streams,
    /// coordinators, clocks) and say what to fix. Exit code 4 when a check
    /// fails; warnings alone exit 0.
    Doctor(doctor::DoctorArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Setup(args) => setup::run(args).await,
            Command::Locks(args) => locks::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Hold(args) => hold::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
        }
    });
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETLOCK_LOG")
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
