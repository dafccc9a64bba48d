//! The `jetlock` command: argument parsing and dispatch. One file per
//! subcommand; `src/main.rs` only calls [`main`].
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's).

pub mod bench;
mod dev;
mod hold;
mod locks;
mod serve;
mod setup;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Errors of the command line, printed for a person.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Where to reach NATS, shared by every subcommand that connects.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// NATS server URL(s), comma-separated; `nats://user:password@host:4222`
    /// carries credentials.
    #[arg(long, env = "JETLOCK_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The locks bucket.
    #[arg(long, env = "JETLOCK_BUCKET", default_value = jetlock_bucket())]
    pub bucket: String,
    #[command(flatten)]
    pub login: LoginArgs,
}

impl Connection {
    /// A plain NATS connection to the configured servers.
    pub async fn nats(&self) -> Result<async_nats::Client, CliError> {
        let options = async_nats::ConnectOptions::new().name("jetlock");
        Ok(crate::connect::nats(&self.url, self.login.login()?, options).await?)
    }
}

/// Who to connect as, when the URL does not say.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// NATS user; the password is read from JETLOCK_PASSWORD (never a flag:
    /// other users of the machine can read command lines).
    #[arg(long, env = "JETLOCK_USER")]
    pub user: Option<String>,
}

impl LoginArgs {
    /// The user with its password from `JETLOCK_PASSWORD`.
    pub fn login(&self) -> Result<Option<crate::connect::Login>, CliError> {
        let password = std::env::var("JETLOCK_PASSWORD").ok();
        match (&self.user, password) {
            (Some(user), Some(password)) => Ok(Some(crate::connect::Login::new(user, password))),
            (Some(user), None) => Err(format!(
                "--user {user} (JETLOCK_USER) needs its password in JETLOCK_PASSWORD"
            )
            .into()),
            (None, Some(_)) => {
                Err("JETLOCK_PASSWORD is set but no user is: set JETLOCK_USER or --user".into())
            }
            (None, None) => Ok(None),
        }
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
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
