//! Real nats-server processes: the embedded dev server, and the single node
//! and 3-node cluster the tests and benchmarks run against.
//!
//! Servers start from the configs in `nats/` (compiled in, so an installed
//! `jetlock` needs no source tree), with every per-run value (ports, names,
//! storage) passed through the environment the configs read. Each process
//! gets `PR_SET_PDEATHSIG`, so it dies with the process that started it even
//! when that process is killed with SIGKILL; a [`NatsServer`] kills and reaps
//! its child on drop, and its temp dir goes with it.
//!
//! The cluster config has no anonymous user: a [`NatsCluster`] generates a
//! password for each of its users ([`Role`]) at start, passes them in the
//! environment like the per-node values, and hands out URLs that log in as
//! a role ([`NatsCluster::url_as`]).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Makes the child started by `cmd` die (SIGKILL) when this process dies,
/// even by SIGKILL (Linux `PR_SET_PDEATHSIG`; elsewhere a no-op). The
/// signal fires when the spawning *thread* ends, so spawn from a thread that
/// lives as long as the process (the runtime's, or the main thread).
pub fn dies_with_this_process(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch
        // no memory of the parent; the documented use of pre_exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl: nobody would kill us.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// `nats/dev.conf`: the single-node config.
pub const DEV_CONF: &str = include_str!("../../../nats/dev.conf");
/// When a single node's JetStream fsyncs what it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncInterval {
    /// JetStream's default, as in `nats/dev.conf`: every 2 minutes.
    #[default]
    Default,
    /// Every write before it is acknowledged, as in `nats/cluster.conf`
    /// (production).
    Always,
}

impl SyncInterval {
    /// The value of `sync_interval` in a server config.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncInterval::Default => "default",
            SyncInterval::Always => "always",
        }
    }

    /// `nats/dev.conf` with this setting in its `jetstream` block.
    pub fn dev_conf(self) -> std::borrow::Cow<'static, str> {
        match self {
            SyncInterval::Default => DEV_CONF.into(),
            SyncInterval::Always => DEV_CONF
                .replacen("jetstream {", "jetstream {\n  sync_interval: always", 1)
                .into(),
        }
    }
}

/// `nats/cluster.conf`: the clustered node config.
pub const CLUSTER_CONF: &str = include_str!("../../../nats/cluster.conf");

/// Oldest nats-server jetlock runs on: per-message TTL and limit markers
/// came in 2.11, and 2.10.x/2.11.x up to 2.12.2 had KV CAS and stream-loss bugs.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 3);

/// Why a nats-server could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("nats-server not found (looked at $NATS_SERVER_BIN, .nats-bin/nats-server and PATH); install it with `bash nats/install.sh` or set NATS_SERVER_BIN")]
    NotFound,
    #[error("{path} is nats-server {found}; jetlock needs {}.{}.{} or newer: run `bash nats/install.sh` or set NATS_SERVER_BIN", MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1, MIN_SERVER_VERSION.2)]
    TooOld { path: String, found: String },
    #[error("could not start nats-server: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "nats-server {name} did not become ready within {waited:?}; its log ends with:\n{log}"
    )]
    NotReady {
        name: String,
        waited: Duration,
        log: String,
    },
}

/// Finds a nats-server binary that is new enough, once per process.
pub fn server_binary() -> Result<PathBuf, ServerError> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = FOUND.get() {
        return Ok(path.clone());
    }
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        candidates.push(PathBuf::from(path));
    }
    // `nats/install.sh` puts it at the workspace root.
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.nats-bin/nats-server"));
    candidates.push(PathBuf::from(".nats-bin/nats-server"));
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|p| p.join("nats-server")));
    }
    let mut too_old = None;
    for path in candidates.into_iter().filter(|p| p.is_file()) {
        match server_version(&path) {
            Some(v) if v >= MIN_SERVER_VERSION => {
                return Ok(FOUND.get_or_init(|| path).clone());
            }
            Some(v) => {
                too_old.get_or_insert(ServerError::TooOld {
                    path: path.display().to_string(),
                    found: format!("{}.{}.{}", v.0, v.1, v.2),
                });
            }
            None => {}
        }
    }
    Err(too_old.unwrap_or(ServerError::NotFound))
}

/// Runs `nats-server --version` and parses `nats-server: v2.14.6`.
pub fn server_version(path: &Path) -> Option<(u64, u64, u64)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// `n` distinct free loopback ports. All listeners are held until every
/// port is chosen, so the ports differ from each other.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// One nats-server child process.
pub struct NatsServer {
    name: String,
    bin: PathBuf,
    /// The address it listens on (clients and routes).
    host: String,
    /// Program and arguments that run the server binary (e.g. `ip netns
    /// exec n1`); empty: run it directly.
    launcher: Vec<String>,
    config: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    log: PathBuf,
    /// The HTTP monitoring port (`/varz`), when started with one.
    monitor_port: Option<u16>,
    child: Option<Child>,
    // Only a standalone server owns its dir; cluster members share the
    // cluster's, which outlives them.
    _dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream node from `nats/dev.conf` on `port` (a free
    /// loopback port when `None`), storing in a fresh temp dir.
    pub fn start_single(port: Option<u16>) -> Result<Self, ServerError> {
        Self::single(port, false, SyncInterval::Default)
    }

    /// Like [`NatsServer::start_single`] on a free port, JetStream syncing
    /// as `sync` says (the benchmark compares both).
    pub fn start_single_syncing(sync: SyncInterval) -> Result<Self, ServerError> {
        Self::single(None, false, sync)
    }

    /// Like [`NatsServer::start_single`] on a free port, with the HTTP
    /// monitoring endpoint (`/varz`, see [`NatsServer::monitor_url`]) on
    /// another one.
    pub fn start_single_monitored() -> Result<Self, ServerError> {
        Self::single(None, true, SyncInterval::Default)
    }

    /// A single node on a free loopback port from `config`, a server config
    /// that reads the same variables as `nats/dev.conf` (`$NATS_HOST`,
    /// `$NATS_PORT`, `$NATS_STORE_DIR`, `$NATS_SERVER_NAME`): for tests of
    /// one way of logging in (tokens, nkeys, operator mode, TLS).
    pub fn start_configured(config: &str) -> Result<Self, ServerError> {
        Self::single_from("jetlock-test", config, None, false)
    }

    /// A single node whose one account has two users, each with its name
    /// as password ([`NatsServer::login`]): `admin`, who may do anything,
    /// and `user`, who may not publish to `denied` (a subject pattern).
    pub fn start_denying(user: &str, denied: &str) -> Result<Self, ServerError> {
        let config = format!(
            r#"server_name: $NATS_SERVER_NAME
host: $NATS_HOST
port: $NATS_PORT
jetstream {{ store_dir: $NATS_STORE_DIR }}
accounts {{ LOCKS {{
  jetstream: enabled
  users: [
    {{ user: admin, password: admin }}
    {{ user: {user}, password: {user},
      permissions: {{ publish: {{ deny: ["{denied}"] }} }} }}
  ]
}} }}
"#
        );
        Self::start_configured(&config)
    }

    /// Connects as `user`, whose password is its name
    /// ([`NatsServer::start_denying`]).
    pub async fn login(&self, user: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
            .connect(self.url())
            .await
            .expect("log in")
    }

    fn single(port: Option<u16>, monitored: bool, sync: SyncInterval) -> Result<Self, ServerError> {
        Self::single_from("jetlock-dev", &sync.dev_conf(), port, monitored)
    }

    /// A single node named `name` from `config` (written into its temp
    /// dir), with the variables `nats/dev.conf` reads.
    fn single_from(
        name: &str,
        config: &str,
        port: Option<u16>,
        monitored: bool,
    ) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new().prefix("jetlock-nats-").tempdir()?;
        let port = match port {
            Some(p) => p,
            None => free_ports(1)?[0],
        };
        let path = dir.path().join("server.conf");
        fs::write(&path, config)?;
        let env = vec![
            ("NATS_SERVER_NAME".into(), name.to_owned()),
            ("NATS_HOST".into(), "127.0.0.1".into()),
            ("NATS_PORT".into(), port.to_string()),
            (
                "NATS_STORE_DIR".into(),
                dir.path().join("jetstream").display().to_string(),
            ),
        ];
        let mut server = NatsServer::new(name, path, env, port, dir.path())?;
        if monitored {
            // Not the client port, which is free again until the spawn.
            server.monitor_port = free_ports(2)?.into_iter().find(|&p| p != port);
        }
        server._dir = Some(dir);
        server.spawn()?;
        Ok(server)
    }

    fn new(
        name: &str,
        config: PathBuf,
        env: Vec<(String, String)>,
        port: u16,
        dir: &Path,
    ) -> Result<Self, ServerError> {
        Ok(NatsServer {
            name: name.to_owned(),
            bin: server_binary()?,
            host: "127.0.0.1".to_owned(),
            launcher: Vec::new(),
            log: dir.join(format!("{name}.log")),
            config,
            env,
            port,
            monitor_port: None,
            child: None,
            _dir: None,
        })
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = launched(&self.launcher, &self.bin);
        cmd.arg("-c").arg(&self.config);
        if let Some(monitor) = self.monitor_port {
            cmd.arg("-m").arg(monitor.to_string());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        dies_with_this_process(&mut cmd);
        self.child = Some(cmd.spawn()?);
        self.wait_listening(Duration::from_secs(15))
    }

    /// Waits until the client port accepts connections, failing early with
    /// the log when the process exits.
    fn wait_listening(&mut self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            if TcpStream::connect((self.host.as_str(), self.port)).is_ok() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || start.elapsed() > limit {
                return Err(ServerError::NotReady {
                    name: self.name.clone(),
                    waited: start.elapsed(),
                    log: self.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's name (`server_name` in its config).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nats://<host>:<port>` (host `127.0.0.1` unless started with
    /// [`NatsCluster::start_on`]).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://<host>:<port>` of the monitoring endpoint, when started with
    /// one (every cluster member is).
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor_port
            .map(|port| format!("http://{}:{port}", self.host))
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process has been started and not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap. Storage is kept for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a clean shutdown), then reap.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Lame-duck mode (SIGUSR2, what `nats-server --signal ldm` sends): the
    /// server stops accepting clients, hands its JetStream leaderships
    /// over, closes its clients over `lame_duck_duration` and exits. Waits
    /// up to `limit` for the exit (then kills it) and reaps the process;
    /// storage is kept for [`NatsServer::restart`]. True when it exited by
    /// itself.
    pub fn lame_duck(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        signal(child.id(), libc::SIGUSR2);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
            // kill(2) returns before every thread has stopped: on a busy
            // machine the server still answered a request sent right after.
            // Wait until the kernel shows the process stopped.
            let stat = format!("/proc/{pid}/stat");
            for _ in 0..1000 {
                let stopped = std::fs::read_to_string(&stat).map_or(true, |s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                });
                if stopped {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// SIGHUP: the server reads its config file again (users and
    /// permissions change for connected clients too).
    pub fn reload(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGHUP);
        }
    }

    /// Starts the process again with the same config, ports and storage.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    /// The server's whole log (it names refused publishes and
    /// subscriptions, with the client and user).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::File::open(&self.log) {
            Ok(mut f) => file_tail(&mut f, 16 * 1024, lines),
            Err(_) => String::new(),
        }
    }
}

/// The last `lines` lines within the last `bytes` bytes of a log file (a
/// child's stderr, a server's log), for error messages.
pub fn file_tail(file: &mut fs::File, bytes: u64, lines: usize) -> String {
    let mut text = String::new();
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

mod cluster;
pub use cluster::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_always_goes_into_the_jetstream_block_of_the_dev_config() {
        assert_eq!(SyncInterval::Default.dev_conf(), DEV_CONF);
        let always = SyncInterval::Always.dev_conf();
        let block = always
            .split("jetstream {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("dev.conf has a jetstream block");
        assert!(block.contains("sync_interval: always"), "{block}");
        assert!(block.contains("store_dir: $NATS_STORE_DIR"), "{block}");
        assert_eq!(always.matches("sync_interval:").count(), 1);
    }
}
