//! `jetlock hold NAME`: take a lock (or with `--read`, `--write`,
//! `--permits N` a read/write lock or a semaphore's permit) and hold it (renewing) until stdin
//! closes or the process is told to stop (SIGINT, SIGTERM); then release it
//! and exit 0. A lock lost while held ends it at once with exit code 4. For scripts
//! (`jetlock hold job:nightly < fifo`) and for tests that need a lock
//! holder in another process to kill or pause.

use super::{CliError, Connection, Exit};
use jetlock::ClientOptions;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The exit code when the lock was lost while held (revoked, its lease or
/// session over): a script must stop what the lock guarded.
pub const LOST: u8 = 4;

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    connection: Connection,
    /// The lock to hold.
    name: String,
    #[command(flatten)]
    lease: LeaseArgs,
    /// How long to wait for the lock: `30s` (`0`: fail at once if held).
    #[arg(long, visible_alias = "wait-ms", default_value = "30s", value_parser = super::duration_ms)]
    wait: u64,
    /// Hold NAME as a read/write lock, for reading (shared).
    #[arg(long, conflicts_with_all = ["write", "permits"])]
    read: bool,
    /// Hold NAME as a read/write lock, for writing (exclusive).
    #[arg(long, conflicts_with = "permits")]
    write: bool,
    /// Hold one permit of NAME as a semaphore of this many permits.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=jetlock::client::MAX_PERMITS as i64))]
    permits: Option<u32>,
}

/// What `hold` holds, behind one face.
enum Held {
    Lock(jetlock::LockGuard),
    Rw(jetlock::RwLockGuard),
    Permit(jetlock::Permit),
}

impl Held {
    fn token(&self) -> u64 {
        match self {
            Held::Lock(g) => g.token().get(),
            Held::Rw(g) => g.token().get(),
            Held::Permit(p) => p.token().get(),
        }
    }

    async fn lost(&self) {
        match self {
            Held::Lock(g) => g.lost().await,
            Held::Rw(g) => g.lost().await,
            Held::Permit(p) => p.lost().await,
        }
    }

    fn lost_reason(&self) -> Option<jetlock::LostReason> {
        match self {
            Held::Lock(g) => g.lost_reason(),
            Held::Rw(g) => g.lost_reason(),
            Held::Permit(p) => p.lost_reason(),
        }
    }

    async fn release(self) -> Result<(), jetlock::LockError> {
        match self {
            Held::Lock(g) => g.release().await,
            Held::Rw(g) => g.release().await,
            Held::Permit(p) => p.release().await,
        }
    }
}

/// Takes what `args` asks for, waiting `wait` (`None`: not at all).
async fn take(
    client: &jetlock::Client,
    args: &HoldArgs,
    owner: String,
    wait: Option<Duration>,
) -> Result<Held, jetlock::LockError> {
    let ttl = Duration::from_millis(args.lease.ttl);
    if let Some(permits) = args.permits {
        let request = client.semaphore(&args.name, permits).ttl(ttl);
        return Ok(Held::Permit(match wait {
            None => request.try_acquire().await?,
            Some(w) => request.wait(w).acquire().await?,
        }));
    }
    if args.read || args.write {
        let request = match args.read {
            true => client.read_lock(&args.name),
            false => client.write_lock(&args.name),
        }
        .owner(owner)
        .ttl(ttl);
        return Ok(Held::Rw(match wait {
            None => request.try_acquire().await?,
            Some(w) => request.wait(w).acquire().await?,
        }));
    }
    let request = client.lock(&args.name).owner(owner).ttl(ttl);
    Ok(Held::Lock(match wait {
        None => request.try_acquire().await?,
        Some(w) => request.wait(w).acquire().await?,
    }))
}

/// How a command that holds a lock (`hold`, `elect`) holds it.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// Lease, renewed while held: `10s`, `1m` (an integer is ms).
    #[arg(long, visible_alias = "ttl-ms", default_value = "10s", value_parser = super::duration_ms)]
    pub ttl: u64,
    /// Session timeout, how soon the coordinators notice a hung holder:
    /// `900ms`, `5s`.
    #[arg(long, visible_alias = "session-timeout-ms", default_value = "900ms",
          value_parser = super::duration_ms)]
    session_timeout: u64,
    /// The owner named in the lock record and the views [default:
    /// <command>@<host>:<pid>].
    #[arg(long)]
    owner: Option<String>,
    /// Session ids start with this (`<prefix>.<random>`): the prefix the
    /// NATS user's permissions allow (see docs/OPERATIONS.md).
    #[arg(long, env = "JETLOCK_SESSION_PREFIX")]
    session_prefix: Option<String>,
}

impl LeaseArgs {
    /// A client for `command` (`hold`, `elect`) on `connection`.
    pub async fn connect(
        &self,
        connection: &Connection,
        command: &str,
    ) -> Result<jetlock::Client, CliError> {
        let (url, auth) = connection.target()?;
        let mut options = ClientOptions::new()
            .name(format!("jetlock-{command}"))
            .auth(auth)
            .bucket(&connection.bucket)
            .session_timeout(Duration::from_millis(self.session_timeout));
        if let Some(prefix) = &self.session_prefix {
            options = options.session_prefix(prefix);
        }
        Ok(options.connect(&url).await?)
    }

    /// The owner to name: `--owner`, or `<command>@<host>:<pid>`.
    pub fn owner(&self, command: &str) -> String {
        self.owner.clone().unwrap_or_else(|| {
            let host = jetlock::protocol::host_name().unwrap_or_else(|| "unknown".into());
            format!("{command}@{host}:{}", std::process::id())
        })
    }
}

pub async fn run(args: HoldArgs) -> Result<(), CliError> {
    // A bad name is a usage error, found before connecting.
    jetlock::name::LockName::new(&args.name).map_err(|e| Exit::with(2, e.to_string()))?;
    let client = args.lease.connect(&args.connection, "hold").await?;
    let owner = args.lease.owner("hold");
    let wait = (args.wait > 0).then(|| Duration::from_millis(args.wait));
    let guard = take(&client, &args, owner, wait).await?;
    // Before the line that tells a script it holds the lock: a SIGINT or
    // SIGTERM sent as soon as it reads that line must release, not kill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // One JSON line: what a script (or a test) needs to fence its writes.
    println!(
        "{}",
        serde_json::json!({"name": args.name, "token": guard.token(),
                           "session": client.session(), "pid": std::process::id()})
    );
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    let stdin_closed = async {
        loop {
            match stdin.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = guard.lost() => {
            let why = guard.lost_reason().map(|r| r.to_string()).unwrap_or_default();
            return Err(Exit::with(LOST, format!("lost lock {}: {why}", args.name)));
        }
    }
    guard.release().await?;
    Ok(())
}
