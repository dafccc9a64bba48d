//! PostgreSQL advisory locks: `pg_advisory_lock(id)` waits in the server's
//! lock manager (first come, first served) and `pg_advisory_unlock(id)`
//! gives the lock back; the id is a 64-bit hash of the lock name. A lock
//! lives as long as its session, in shared memory: nothing goes to the WAL.
//! `initdb` and `postgres` refuse to run as root, so as root both run as
//! the `postgres` user the Debian package creates.

use super::service::Service;
use super::{CliError, Contender};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Initialises a cluster in a temp dir and starts `postgres` on a free
/// loopback port, with trust authentication for the `postgres` user.
pub(super) async fn start(binary: &std::path::Path) -> Result<Service, CliError> {
    let (dir, port) = Service::prepare("postgres")?;
    let user = run_as()?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    }
    let data = dir.path().join("data");
    let initdb = binary.with_file_name("initdb");
    let mut cmd = Command::new(&initdb);
    cmd.arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {}: {e}", initdb.display()))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let mut cmd = Command::new(binary);
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir.path())
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=1100",
        ]);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let service = Service::start("postgres", cmd, dir, port).await?;
    // It listens before it takes sessions ("the database system is
    // starting up").
    service
        .wait_serving("took no session", async || {
            AdvisoryLock::connect(port).await
        })
        .await?;
    Ok(service)
}

/// The `postgres` user's uid and gid when running as root (`None`
/// otherwise: the servers run as this user).
fn run_as() -> Result<Option<(u32, u32)>, CliError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the entry is read before any other
    // getpw* call in this process could overwrite it.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if entry.is_null() {
        return Err("running as root and there is no postgres user to run PostgreSQL as".into());
    }
    // SAFETY: non-null, points to the static passwd entry.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// One session, with the two statements prepared.
pub(super) struct AdvisoryLock {
    client: tokio_postgres::Client,
    lock: tokio_postgres::Statement,
    unlock: tokio_postgres::Statement,
    /// Drives the connection; ends when `client` is dropped.
    _connection: tokio::task::JoinHandle<()>,
}

impl AdvisoryLock {
    pub(super) async fn connect(port: u16) -> Result<AdvisoryLock, CliError> {
        let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(AdvisoryLock {
            lock: client.prepare("SELECT pg_advisory_lock($1)").await?,
            unlock: client.prepare("SELECT pg_advisory_unlock($1)").await?,
            client,
            _connection: connection,
        })
    }
}

/// The advisory lock id of `name`.
fn id(name: &str) -> i64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as i64
}

impl Contender for AdvisoryLock {
    type Held = ();

    async fn take(&mut self, name: &str) -> Result<(), CliError> {
        self.client.query_one(&self.lock, &[&id(name)]).await?;
        Ok(())
    }

    async fn give_back(&mut self, name: &str, (): ()) -> Result<(), CliError> {
        let row = self.client.query_one(&self.unlock, &[&id(name)]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Err(format!("postgres: the session did not hold {name} at unlock").into());
        }
        Ok(())
    }
}

/// One session taking an advisory lock shared (`pg_advisory_lock_shared`)
/// or exclusive: PostgreSQL's read/write lock, for the lock-kinds mix.
pub(super) struct AdvisoryRw {
    client: tokio_postgres::Client,
    read: tokio_postgres::Statement,
    read_done: tokio_postgres::Statement,
    write: tokio_postgres::Statement,
    write_done: tokio_postgres::Statement,
    _connection: tokio::task::JoinHandle<()>,
}

impl AdvisoryRw {
    pub(super) async fn connect(port: u16) -> Result<AdvisoryRw, CliError> {
        let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(AdvisoryRw {
            read: client.prepare("SELECT pg_advisory_lock_shared($1)").await?,
            read_done: client
                .prepare("SELECT pg_advisory_unlock_shared($1)")
                .await?,
            write: client.prepare("SELECT pg_advisory_lock($1)").await?,
            write_done: client.prepare("SELECT pg_advisory_unlock($1)").await?,
            client,
            _connection: connection,
        })
    }
}

impl super::super::kinds::RwContender for AdvisoryRw {
    async fn lock(&mut self, name: &str, write: bool) -> Result<(), CliError> {
        let statement = if write { &self.write } else { &self.read };
        self.client.query_one(statement, &[&id(name)]).await?;
        Ok(())
    }

    async fn unlock(&mut self, name: &str, write: bool) -> Result<(), CliError> {
        let statement = if write {
            &self.write_done
        } else {
            &self.read_done
        };
        let row = self.client.query_one(statement, &[&id(name)]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Err(format!("postgres: the session did not hold {name} at unlock").into());
        }
        Ok(())
    }
}
