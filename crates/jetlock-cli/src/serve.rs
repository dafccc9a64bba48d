//! `jetlock serve`: the coordinator daemon. Settings come from a TOML file
//! (`--config`), then `JETLOCK_*` environment variables, then flags; the
//! credentials and TLS files from flags, environment and a `nats` CLI
//! context, as for every command (see `auth.rs`). Its HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`) answers from before it connects to
//! NATS. It prints one `ready` line on stdout once serving, and on SIGTERM
//! or Ctrl-C tells the other coordinators it leaves (they take its keys at
//! once) and exits.

use super::CliError;
use jetlock_coordinator::admin::SettingSource;
use jetlock_coordinator::config::Config;
use jetlock_coordinator::http::Endpoint;
use jetlock_coordinator::Coordinator;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/OPERATIONS.md for every setting).
    #[arg(long, env = "JETLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [default: the config file's
    /// url; without --config, NATS_URL, the context's url, or
    /// nats://127.0.0.1:4222].
    #[arg(long, env = "JETLOCK_URL")]
    url: Option<String>,
    /// The locks bucket.
    #[arg(long, env = "JETLOCK_BUCKET")]
    bucket: Option<String>,
    /// Replicas of the bucket and request stream if this creates them.
    #[arg(long, env = "JETLOCK_REPLICAS")]
    replicas: Option<usize>,
    /// How many buckets to spread the locks over if this creates them
    /// (1 to 16; fixed once made: docs/SCALING.md).
    #[arg(long, env = "JETLOCK_BUCKETS")]
    buckets: Option<u32>,
    /// How many partitions to split the requests into if this creates the
    /// deployment (1 to 256, default 64; 1: not split; fixed once made:
    /// docs/SCALING.md).
    #[arg(long, env = "JETLOCK_PARTITIONS")]
    partitions: Option<u32>,
    /// This coordinator's id (default: random).
    #[arg(long, env = "JETLOCK_ID")]
    id: Option<String>,
    /// Default session timeout: `900ms`, `2s` (an integer is ms)
    /// [env: JETLOCK_SESSION_TIMEOUT, or JETLOCK_SESSION_TIMEOUT_MS].
    // The environment is read by `run`, not clap, to tell env from flag.
    #[arg(long, visible_alias = "session-timeout-ms", value_parser = super::duration_ms)]
    session_timeout: Option<u64>,
    /// HTTP endpoint for `/metrics`, `/healthz` and `/readyz`: `host:port`
    /// (port 0 picks one; `0.0.0.0:9464` for other machines) or `off`
    /// (default 127.0.0.1:9464).
    #[arg(long, env = "JETLOCK_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Threads the coordinator runs on. 1 (the default) runs everything on
    /// one thread: the coordinator decides in one loop either way, and
    /// one thread spares it the wake-ups across threads that cost a
    /// quarter to a third of its CPU per request. More let its NATS I/O
    /// run beside the loop.
    #[arg(long, env = "JETLOCK_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    #[command(flatten)]
    auth: super::AuthArgs,
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let (mut config, file_keys) = match &args.config {
        Some(path) => Config::from_file_noting(path)?,
        None => (Config::default(), Vec::new()),
    };
    let mut sources: BTreeMap<String, SettingSource> = file_keys
        .into_iter()
        .map(|k| (k, SettingSource::File))
        .collect();
    // A config file names its url (or keeps the default): it wins over
    // the ambient NATS_URL and the context, as --url wins over it.
    let target = args.auth.resolve(args.url.as_deref())?;
    match (args.url, target.url) {
        (Some(v), _) => config.url = v,
        (None, Some(v)) if args.config.is_none() => config.url = v,
        _ => {}
    }
    if let Some(v) = args.bucket {
        config.bucket = v;
    }
    if let Some(v) = args.replicas {
        config.replicas = v;
    }
    if let Some(v) = args.buckets {
        config.buckets = v;
    }
    if let Some(v) = args.partitions {
        config.partitions = v;
    }
    if let Some(v) = args.id {
        config.id = Some(v);
    }
    let env_timeout = ["JETLOCK_SESSION_TIMEOUT", "JETLOCK_SESSION_TIMEOUT_MS"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let env_timeout = match env_timeout {
        Some(text) => Some(
            super::duration_ms(&text)
                .map_err(|e| super::Exit::with(2, format!("JETLOCK_SESSION_TIMEOUT: {e}")))?,
        ),
        None => None,
    };
    match (args.session_timeout, env_timeout) {
        (Some(v), _) => {
            config.session_timeout_ms = v;
            sources.insert("session_timeout_ms".into(), SettingSource::Flag);
        }
        (None, Some(e)) => {
            config.session_timeout_ms = e;
            sources.insert("session_timeout_ms".into(), SettingSource::Env);
        }
        (None, None) => {}
    }
    if let Some(v) = args.metrics_addr {
        config.metrics_addr = v;
    }
    config.validate()?;
    let mut coordinator_config = config.coordinator();
    coordinator_config.setting_sources = sources;
    let endpoint = match &coordinator_config.metrics_addr {
        Some(addr) => Some(
            Endpoint::bind(addr)
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
        ),
        None => None,
    };
    // No echo: the connection is the coordinator's alone, and it listens
    // on `jetlock.to.>` to learn of the other coordinators' answers; its own
    // would come back to it, two per lock taken and given back.
    let options = async_nats::ConnectOptions::new()
        .name("jetlock-serve")
        .no_echo()
        .max_reconnects(None);
    let nats = jetlock::connect::nats_waiting(&config.url, &target.auth, options).await?;
    let coordinator = Coordinator::start_on(nats, coordinator_config, endpoint).await?;
    let metrics = coordinator
        .metrics_addr()
        .map_or("off".to_owned(), |a| format!("http://{a}/metrics"));
    println!(
        "jetlock serve: ready coordinator={} url={} bucket={} metrics={metrics}",
        coordinator.id(),
        jetlock::connect::redact(&config.url),
        config.bucket
    );
    shutdown_signal().await;
    eprintln!("jetlock serve: leaving");
    coordinator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
