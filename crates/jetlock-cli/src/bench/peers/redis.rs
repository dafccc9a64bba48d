//! Redis locks as the Redis docs describe them for one instance: `SET key
//! token NX PX ttl` takes, a script deletes the key only if it still holds
//! the token. Nothing queues a waiter: it tries again every
//! [`RETRY`]. The server runs in memory without persistence.

use super::service::Service;
use super::{CliError, Contender};
use std::process::Command;
use std::time::Duration;

/// How long a waiter sleeps between tries.
const RETRY: Duration = Duration::from_millis(1);
/// The lease of each lock.
const TTL_MS: u64 = 10_000;
/// Deletes KEYS[1] only if it holds ARGV[1].
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Starts `redis-server` in a temp dir on a free loopback port.
pub(super) async fn start(binary: &std::path::Path) -> Result<Service, CliError> {
    let (dir, port) = Service::prepare("redis")?;
    let mut cmd = Command::new(binary);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path());
    Service::start("redis-server", cmd, dir, port).await
}

/// One client connection.
pub(super) struct RedisLock {
    conn: redis::aio::MultiplexedConnection,
    release: redis::Script,
    next_token: u64,
    /// This client's part of every token.
    id: String,
}

impl RedisLock {
    pub(super) async fn connect(port: u16) -> Result<RedisLock, CliError> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        Ok(RedisLock {
            conn: client.get_multiplexed_async_connection().await?,
            release: redis::Script::new(RELEASE),
            next_token: 0,
            id: nuid::next().to_string(),
        })
    }
}

impl Contender for RedisLock {
    /// The token the key holds.
    type Held = String;

    async fn take(&mut self, key: &str) -> Result<String, CliError> {
        self.next_token += 1;
        let token = format!("{}-{}", self.id, self.next_token);
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(TTL_MS)
                .query_async(&mut self.conn)
                .await?;
            if set.is_some() {
                return Ok(token);
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn give_back(&mut self, key: &str, token: String) -> Result<(), CliError> {
        let deleted: i64 = self
            .release
            .key(key)
            .arg(token)
            .invoke_async(&mut self.conn)
            .await?;
        if deleted != 1 {
            return Err(format!("redis: {key} no longer held its token at release").into());
        }
        Ok(())
    }
}
