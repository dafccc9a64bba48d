//! The 3-node cluster from `nats/cluster.conf`: its members, the users it
//! generates passwords for ([`Role`]), and URLs that log in as one.

use super::*;

/// The users `nats/cluster.conf` defines, one per role (see
/// `docs/OPERATIONS.md`, "Users and permissions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `jetlock serve` and `jetlock setup`.
    Coordinator,
    /// Views, force release, the config bucket.
    Operator,
    /// A trusted worker: the fast path writes the locks bucket.
    Worker,
    /// A protocol-only worker: everything through the coordinators.
    Restricted,
    /// `jetlock demo --url`: a trusted worker on the demo's own locks, its
    /// work queue and its ledger.
    Demo,
    /// A user of the system account that may only ask every server for its
    /// VARZ (`jetlock doctor --system-url`).
    System,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Coordinator,
        Role::Operator,
        Role::Worker,
        Role::Restricted,
        Role::Demo,
        Role::System,
    ];

    /// The NATS user.
    pub fn user(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Restricted => "restricted",
            Role::Demo => "demo",
            Role::System => "system",
        }
    }

    /// The session prefix (and inbox prefix `_INBOX.<prefix>`) the
    /// permissions of a worker role allow; `None` for the roles that may
    /// read `_INBOX.>`.
    pub fn session_prefix(self) -> Option<&'static str> {
        match self {
            Role::Worker | Role::Restricted | Role::Demo => Some(self.user()),
            Role::Coordinator | Role::Operator | Role::System => None,
        }
    }

    /// The environment variable the cluster config reads its password from.
    pub fn password_var(self) -> &'static str {
        match self {
            Role::Coordinator => "JETLOCK_COORDINATOR_PASSWORD",
            Role::Operator => "JETLOCK_OPERATOR_PASSWORD",
            Role::Worker => "JETLOCK_WORKER_PASSWORD",
            Role::Restricted => "JETLOCK_RESTRICTED_PASSWORD",
            Role::Demo => "JETLOCK_DEMO_PASSWORD",
            Role::System => "JETLOCK_SYSTEM_PASSWORD",
        }
    }
}

/// A command running `program` behind `launcher` (program and arguments
/// first, e.g. `ip netns exec n1`), or directly when `launcher` is empty.
pub fn launched(launcher: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match launcher.split_first() {
        Some((first, args)) => {
            let mut cmd = Command::new(first);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Where a cluster member listens and how it is started
/// ([`NatsCluster::start_on`]).
#[derive(Debug, Clone)]
pub struct Member {
    pub host: String,
    /// Program and arguments before the nats-server binary.
    pub launcher: Vec<String>,
}

/// A cluster of nats-servers from `nats/cluster.conf` on loopback.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    /// One generated password per role, in [`Role::ALL`] order.
    passwords: Vec<String>,
    /// The members' config file.
    config: PathBuf,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `size` (3 or 5) clustered JetStream nodes, each with its HTTP
    /// monitoring endpoint ([`NatsServer::monitor_url`]: `http_port` in
    /// cluster.conf). Call [`wait_for_jetstream`] before using JetStream.
    pub fn start(size: usize) -> Result<Self, ServerError> {
        Self::start_with(size, &[])
    }

    /// Three members, each on its own address and started through its own
    /// launcher: the fault tests put each in a network namespace of its own
    /// (`ip netns exec n1`, host `10.77.0.1`) to cut it off.
    pub fn start_on(members: &[Member]) -> Result<Self, ServerError> {
        assert_eq!(members.len(), 3, "cluster.conf routes 3 nodes");
        Self::start_with(3, members)
    }

    /// `members` (or none: all on 127.0.0.1, run directly).
    fn start_with(size: usize, members: &[Member]) -> Result<Self, ServerError> {
        assert!((1..=3).contains(&size), "cluster.conf routes 3 nodes");
        let dir = tempfile::Builder::new()
            .prefix("jetlock-cluster-")
            .tempdir()?;
        let config = dir.path().join("cluster.conf");
        fs::write(&config, CLUSTER_CONF)?;
        let ports = free_ports(3 * size)?;
        let (client_ports, rest) = ports.split_at(size);
        let (route_ports, monitor_ports) = rest.split_at(size);
        let host = |i: usize| members.get(i).map_or("127.0.0.1", |m| m.host.as_str());
        let route = |i: usize| match route_ports.get(i) {
            Some(p) => format!("nats-route://{}:{p}", host(i)),
            // Fewer than three nodes: point the spare slot at node 1.
            None => format!("nats-route://{}:{}", host(0), route_ports[0]),
        };
        // Letters and digits, starting with a letter: the server parses the
        // value (see cluster.conf).
        let passwords: Vec<String> = Role::ALL
            .iter()
            .map(|_| format!("p{}", nuid::next()))
            .collect();
        let mut servers = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let env = vec![
                ("NATS_SERVER_NAME".into(), name.clone()),
                ("NATS_HOST".into(), host(i).to_owned()),
                ("NATS_PORT".into(), client_ports[i].to_string()),
                ("NATS_CLUSTER_PORT".into(), route_ports[i].to_string()),
                ("NATS_HTTP_PORT".into(), monitor_ports[i].to_string()),
                ("NATS_ROUTE_1".into(), route(0)),
                ("NATS_ROUTE_2".into(), route(1)),
                ("NATS_ROUTE_3".into(), route(2)),
                (
                    "NATS_STORE_DIR".into(),
                    dir.path().join(&name).display().to_string(),
                ),
            ];
            let env =
                env.into_iter()
                    .chain(
                        Role::ALL.iter().zip(&passwords).map(|(role, password)| {
                            (role.password_var().to_owned(), password.clone())
                        }),
                    )
                    .collect();
            let mut server =
                NatsServer::new(&name, config.clone(), env, client_ports[i], dir.path())?;
            server.monitor_port = Some(monitor_ports[i]);
            if let Some(m) = members.get(i) {
                server.host = m.host.clone();
                server.launcher = m.launcher.clone();
            }
            servers.push(server);
        }
        for server in &mut servers {
            server.spawn()?;
        }
        Ok(NatsCluster {
            servers,
            passwords,
            config,
            _dir: dir,
        })
    }

    /// All client URLs, comma-separated, without credentials (the servers
    /// refuse those connections: use [`NatsCluster::url_as`]).
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The user and password of `role`.
    pub fn login(&self, role: Role) -> jetlock::connect::Login {
        let i = Role::ALL.iter().position(|r| *r == role).expect("a role");
        jetlock::connect::Login::new(role.user(), &self.passwords[i])
    }

    /// All client URLs, comma-separated, logging in as `role`
    /// (`nats://user:password@127.0.0.1:port`; connect with
    /// [`jetlock::connect::nats`], `ClientOptions::connect` or
    /// `jetlock ... --url`).
    pub fn url_as(&self, role: Role) -> String {
        (0..self.servers.len())
            .map(|i| self.member_url_as(i, role))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Replaces the members' config with `config` (the same environment
    /// applies) and has every running member reload it.
    pub fn reload(&self, config: &str) -> std::io::Result<()> {
        fs::write(&self.config, config)?;
        for server in self.servers.iter().filter(|s| s.is_running()) {
            server.reload();
        }
        Ok(())
    }

    /// Member `i`'s URL, logging in as `role`.
    pub fn member_url_as(&self, i: usize, role: Role) -> String {
        let login = self.login(role);
        format!(
            "nats://{}:{}@{}:{}",
            login.user(),
            login.password(),
            self.servers[i].host,
            self.servers[i].port
        )
    }

    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    pub fn server_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }

    /// The member named `name` (as JetStream reports leaders).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }
}

/// Waits until JetStream answers on `client` (a cluster has elected its
/// meta leader), up to `limit`.
pub async fn wait_for_jetstream(
    client: &async_nats::Client,
    limit: Duration,
) -> Result<(), async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Before the meta leader is elected a JetStream API request gets no
        // answer at all: with the connection's request timeout (10 s by
        // default) one look alone would outlast the election, which takes
        // under a second on a fresh cluster.
        let look = tokio::time::timeout(JETSTREAM_LOOK, js.query_account()).await;
        match look {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How long one look for the JetStream meta leader waits for an answer.
const JETSTREAM_LOOK: Duration = Duration::from_millis(500);

/// Waits for JetStream on a cluster that just started, then creates (or
/// opens) the locks bucket `spec`: right after the meta leader is elected,
/// creating a replicated stream can still fail while peers join, so that
/// is retried too, all within `limit`.
pub async fn ensure_bucket_when_ready(
    client: &async_nats::Client,
    spec: &jetlock::bucket::BucketSpec,
    limit: Duration,
) -> Result<(), String> {
    wait_for_jetstream(client, limit)
        .await
        .map_err(|e| format!("the cluster elected no JetStream leader: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match jetlock::bucket::ensure_bucket(&js, spec).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "could not create the locks bucket (R{}): {e}",
                    spec.replicas
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
