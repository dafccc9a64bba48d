//! What the workloads run against: a [`Site`] is one server (started for
//! the run with a durability, or `--url`) with the bench's client and a
//! coordinator; a [`Ctx`] is one run's keys on it, purged at the end.

use super::{procs, progress, throughput, BenchArgs, Workload, PREFIX};
use crate::CliError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use jetlock::bucket::open_bucket;
use jetlock::record::LockRecord;
use jetlock::{Client, ClientOptions};
use jetlock_testkit::server::{NatsServer, SyncInterval};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One server the bench runs against, with what it connects to it.
pub(super) struct Site {
    /// `sync_interval` as the report shows it.
    pub(super) durability: String,
    /// Kept alive until the site stops: dropping it stops the server.
    pub(super) server: Option<NatsServer>,
    pub(super) url: String,
    pub(super) client: Client,
    pub(super) js: jetstream::Context,
    pub(super) kv: kv::Store,
    pub(super) coordinator: Option<procs::Coord>,
}

impl Site {
    /// Starts a local server with `sync` (or uses --url when `None`), the
    /// bench's client and a coordinator.
    pub(super) async fn start(
        args: &BenchArgs,
        sync: Option<SyncInterval>,
    ) -> Result<Site, CliError> {
        let (server, url, durability) = match (sync, &args.url) {
            (Some(sync), None) => {
                progress(&format!(
                    "starting nats-server, sync_interval {}",
                    sync.as_str()
                ));
                let server = NatsServer::start_single_syncing(sync)?;
                let url = server.url();
                (Some(server), url, sync.as_str().to_owned())
            }
            (_, Some(url)) => (None, url.clone(), "as configured at --url".to_owned()),
            (None, None) => return Err("a site needs a durability or --url".into()),
        };
        let client = ClientOptions::new()
            .name("jetlock-bench")
            .create_bucket(1)
            .connect(&url)
            .await?;
        let js = jetstream::new(client.nats().clone());
        let kv = open_bucket(&js, client.store().bucket()).await?;
        progress("starting the coordinator");
        let coordinator =
            Some(procs::Coord::start(args.coordinator, &url, client.store().bucket()).await?);
        Ok(Site {
            durability,
            server,
            url,
            client,
            js,
            kv,
            coordinator,
        })
    }

    pub(super) fn bucket(&self) -> &str {
        self.client.store().bucket()
    }

    pub(super) async fn stop_coordinator(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.stop().await;
        }
    }
}

/// What the workloads against one site share.
pub(super) struct Ctx<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) site: &'a Site,
    /// The run's key prefix, and the lock-name prefix whose keys fall
    /// under it (`:` in a name is `.` in its key).
    pub(super) run: String,
    pub(super) names: String,
    /// A one-token prefix for the names the Rust client sends to the
    /// coordinator (see [`Ctx::coordinated_name`]).
    pub(super) flat: String,
    /// Those names, purged one by one at the end.
    pub(super) flat_names: Mutex<Vec<String>>,
    pub(super) value: Bytes,
    pub(super) iterations: u64,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(args: &'a BenchArgs, site: &'a Site, iterations: u64) -> Self {
        // One prefix per run, so runs never see each other's keys.
        let id = nuid::next();
        let run = format!("{PREFIX}.{id}");
        Ctx {
            args,
            site,
            flat: format!("{PREFIX}-{id}"),
            flat_names: Mutex::new(Vec::new()),
            names: run.replace('.', ":"),
            value: Bytes::from(sample_record(&site.client).encode()),
            run,
            iterations,
        }
    }

    pub(super) fn selected(&self, w: Workload) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&w)
    }

    pub(super) fn secs(&self, given: Option<u64>, full: u64, quick: u64) -> Duration {
        Duration::from_secs(given.unwrap_or(if self.args.quick { quick } else { full }))
    }

    pub(super) fn throughput_site(&self) -> throughput::Site<'_> {
        throughput::Site {
            url: &self.site.url,
            bucket: self.site.bucket(),
            keys: throughput::Keys {
                run: Arc::from(self.run.as_str()),
                names: Arc::from(self.names.as_str()),
                value: self.value.clone(),
            },
            pids: throughput::Pids {
                nats_server: self.site.server.as_ref().and_then(|s| s.pid()),
                coordinator: self
                    .site
                    .coordinator
                    .as_ref()
                    .and_then(|c| c.child())
                    .map(|(pid, _)| pid),
            },
        }
    }

    /// Removes what the run wrote to this site's bucket.
    pub(super) async fn purge(&self) -> Result<(), CliError> {
        let flat_names = std::mem::take(&mut *self.flat_names.lock().expect("never poisoned"));
        purge_run(&self.site.js, &self.site.kv, &self.run, &flat_names).await
    }
}

/// A record like the ones jetlock writes, for the raw rows' value.
pub(super) fn sample_record(client: &Client) -> LockRecord {
    LockRecord {
        owner: "jetlock-bench#1".to_owned(),
        session: client.session().to_owned(),
        acquired_ms: 1_764_000_000_000,
        lease_ms: jetlock::client::DEFAULT_TTL.as_millis() as u64,
        holds: 1,
        token: 0,
    }
}

impl Ctx<'_> {
    /// A lock name for a workload where the Rust client queues at the
    /// coordinator. It has a `:` so its KV key differs from the name: the
    /// overlap count of W3 and the token check of W4 guard against a client
    /// that puts the key where the protocol wants the name (an early bug).
    pub(super) fn coordinated_name(&self, suffix: &str) -> String {
        let name = format!("{}:{suffix}", self.flat);
        let mut names = self.flat_names.lock().expect("never poisoned");
        names.push(name.clone());
        name
    }
}

/// Removes everything the run wrote (records, delete and release markers):
/// the keys under the run's prefix and the coordinated workloads' names.
async fn purge_run(
    js: &jetstream::Context,
    kv: &kv::Store,
    run: &str,
    flat_names: &[String],
) -> Result<(), CliError> {
    let stream = js.get_stream(&kv.stream_name).await?;
    stream
        .purge()
        .filter(format!("$KV.{}.{run}.>", kv.name))
        .await?;
    for name in flat_names {
        let key = jetlock::name::LockName::new(name)?;
        stream
            .purge()
            .filter(format!("$KV.{}.{}", kv.name, key.key()))
            .await?;
    }
    Ok(())
}
