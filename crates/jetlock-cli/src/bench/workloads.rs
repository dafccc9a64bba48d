//! The workloads run against one site (a local server or --url, and its
//! coordinator): all of them against the first, W1 and W2 against the
//! others; then the memory workload, with a coordinator of its own.

use super::*;

/// The workloads against one site: all of them against the first, W1 and
/// W2 against the others.
pub(super) async fn site_workloads(
    ctx: &Ctx<'_>,
    first: bool,
    report: &mut Report,
) -> Result<(), CliError> {
    let site = ctx.site;
    let durability = &site.durability;
    if ctx.selected(Workload::Latency) {
        let mut json = json::JsonSession::connect(&site.url).await?;
        let target = latency::Target {
            nats: site.client.nats(),
            kv: &site.kv,
            client: &site.client,
            json: &mut json,
            run: &ctx.run,
            names: &ctx.names,
            value: &ctx.value,
        };
        eta::begin("latency");
        progress(&format!("latency, sync_interval {durability}"));
        let rows = latency::run(target, ctx.iterations).await?;
        report.results.extend(rows.into_iter().map(|r| Row {
            durability: durability.clone(),
            ..r
        }));
        if first {
            report.writes = writes::run(ctx, &mut json).await?;
        }
    }
    if ctx.selected(Workload::Throughput) {
        let length = ctx.secs(
            ctx.args.throughput_secs,
            THROUGHPUT_SECS,
            QUICK_THROUGHPUT_SECS,
        );
        let tasks = ctx.args.clients as usize;
        eta::begin("throughput");
        progress(&format!(
            "throughput: {tasks} tasks on distinct keys, 6 groups × {} s, sync_interval {durability}",
            length.as_secs()
        ));
        let groups = [
            (Via::Raw, Sharing::Shared),
            (Via::Jetlock, Sharing::Shared),
            (Via::Json, Sharing::Shared),
            (Via::Raw, Sharing::PerTask),
            (Via::Jetlock, Sharing::PerTask),
            (Via::Json, Sharing::PerTask),
        ];
        let rows = throughput::run(&ctx.throughput_site(), &groups, tasks, length).await?;
        report
            .throughput
            .extend(rows.into_iter().map(|r| ThroughputRow {
                durability: durability.clone(),
                ..r
            }));
    }
    if !first {
        return Ok(());
    }
    if ctx.selected(Workload::Multi) {
        eta::begin("multi");
        progress("multi-key: lock_all of 2 and 8 keys, ordered and atomic, interleaved");
        report.multi = multi::run(&site.client, &ctx.names, ctx.iterations).await?;
    }
    if ctx.selected(Workload::Contention) {
        eta::begin("contention");
        report.contention = contention_workload(ctx).await?;
    }
    if ctx.selected(Workload::Kinds) {
        eta::begin("kinds");
        report.kinds = kinds_workload(ctx).await?;
    }
    if ctx.selected(Workload::Failover) {
        eta::begin("failover");
        report.failover = failover_workload(ctx).await?;
    }
    if ctx.selected(Workload::Election) {
        eta::begin("election");
        report.election = election::workload(ctx).await?;
    }
    if ctx.selected(Workload::Scaling) {
        let length = ctx.secs(None, SCALING_SECS, QUICK_SCALING_SECS);
        let name = |n: usize| ctx.coordinated_name(&format!("scaling-{n}"));
        eta::begin("scaling");
        report.scaling = scaling::run(&ctx.throughput_site(), &name, length).await?;
    }
    if ctx.selected(Workload::Sessions) {
        eta::begin("sessions");
        report.sessions = sessions_workload(ctx, report).await?;
    }
    Ok(())
}

/// Beating sessions against the site's coordinator, when it is a child
/// whose CPU the bench can read.
async fn sessions_workload(
    ctx: &Ctx<'_>,
    report: &mut Report,
) -> Result<Vec<sessions::SessionsRow>, CliError> {
    let site = ctx.site;
    let Some((coordinator_pid, _)) = site.coordinator.as_ref().and_then(|c| c.child()) else {
        report.notes.push(
            "sessions skipped: it reads the CPU of a `jetlock serve` child (--coordinator child)"
                .to_owned(),
        );
        return Ok(Vec::new());
    };
    let setup = sessions::Setup {
        nats: site.client.nats(),
        run: &ctx.flat,
        coordinator_pid,
        server_pid: site.server.as_ref().and_then(|s| s.pid()),
    };
    let steps: &[u64] = if ctx.args.quick {
        &sessions::QUICK_STEPS
    } else {
        &sessions::STEPS
    };
    let window = ctx.secs(None, SESSIONS_SECS, QUICK_SESSIONS_SECS);
    sessions::run(&setup, steps, window).await
}

async fn contention_workload(ctx: &Ctx<'_>) -> Result<Vec<ContentionRow>, CliError> {
    let window = ctx.secs(
        ctx.args.contention_secs,
        CONTENTION_SECS,
        QUICK_CONTENTION_SECS,
    );
    let secs = window.as_secs();
    let clients = ctx.args.clients as usize;
    let (url, bucket) = (ctx.site.url.as_str(), ctx.site.bucket());
    // Raw first and the watch-and-race path last: every wait of those
    // creates a server-side consumer that outlives it by 30 s (see
    // `consumers_left`), and the server refuses new consumers past
    // about a thousand, which would break the watches of later runs.
    let run = async |label: &str, path| {
        progress(&format!(
            "contention: {clients} clients, one key, {label}, {secs} s"
        ));
        let before = consumers(&ctx.site.kv).await?;
        let marks = async || writes::marks(&ctx.site.js, bucket).await;
        let stored_before = marks().await?;
        let mut row = match path {
            Path::Raw => {
                let key = format!("{}.w3-raw", ctx.run);
                contention::raw(url, bucket, &key, &ctx.value, clients, window).await?
            }
            Path::Queue => {
                let name = ctx.coordinated_name("w3-queue");
                let workload = "jetlock, coordinator FIFO queue";
                contention::jetlock(workload, url, bucket, &name, clients, window, true).await?
            }
            Path::Race => {
                let name = ctx.coordinated_name("w3-race");
                let workload = "jetlock, watch and race (.queue(false))";
                contention::jetlock(workload, url, bucket, &name, clients, window, false).await?
            }
        };
        row.consumers_left = consumers(&ctx.site.kv).await? as i64 - before as i64;
        let stored = marks().await?;
        let per_change = |n: u64| n as f64 / row.owner_changes.max(1) as f64;
        row.stored_per_change = Some((
            per_change(stored.bucket - stored_before.bucket),
            per_change(stored.requests - stored_before.requests),
        ));
        Ok::<_, CliError>(row)
    };
    Ok(vec![
        run("raw kv watch + CAS", Path::Raw).await?,
        run("coordinator queue", Path::Queue).await?,
        run("watch and race", Path::Race).await?,
    ])
}

async fn kinds_workload(ctx: &Ctx<'_>) -> Result<Vec<kinds::KindsRow>, CliError> {
    use kinds::Kind;
    let window = ctx.secs(
        ctx.args.contention_secs,
        CONTENTION_SECS,
        QUICK_CONTENTION_SECS,
    );
    let clients = ctx.args.clients as usize;
    let (url, bucket) = (ctx.site.url.as_str(), ctx.site.bucket());
    let mut rows = Vec::new();
    for (label, kind) in [
        (
            "rw",
            Kind::ReadWrite {
                write_every: Some(10),
            },
        ),
        ("readers", Kind::ReadWrite { write_every: None }),
        ("one-record", Kind::OneRecord),
        ("semaphore", Kind::Semaphore { permits: 4 }),
    ] {
        progress(&format!(
            "kinds: {clients} clients, {label}, {} s",
            window.as_secs()
        ));
        let name = format!("{}:kinds-{label}", ctx.names);
        rows.push(kinds::run(url, bucket, &name, kind, clients, window).await?);
    }
    Ok(rows)
}

async fn failover_workload(ctx: &Ctx<'_>) -> Result<Vec<FailoverRow>, CliError> {
    let runs = if ctx.args.quick {
        QUICK_FAILOVER_RUNS
    } else {
        FAILOVER_RUNS
    };
    let waiter = ClientOptions::new()
        .name("jetlock-bench-waiter")
        .bucket(ctx.site.bucket())
        .connect(&ctx.site.url)
        .await?;
    let setup = failover::Setup {
        url: &ctx.site.url,
        bucket: ctx.site.bucket(),
        waiter: &waiter,
        nats: ctx.site.client.nats(),
        name: &|suffix| ctx.coordinated_name(suffix),
    };
    let mut rows = Vec::new();
    for death in [Death::Kill, Death::Hang] {
        progress(&format!("failover: {}, {runs} runs", death_name(death)));
        rows.push(failover::run(&setup, death, runs).await?);
    }
    Ok(rows)
}

/// The memory workload, last against the first site: it needs a fresh
/// coordinator child of its own, and leaves up to a million records.
pub(super) async fn memory_workload(
    args: &BenchArgs,
    site: &mut Site,
    report: &mut Report,
) -> Result<(), CliError> {
    if site.server.is_none() || args.coordinator != CoordinatorMode::Child {
        report.notes.push(
            "memory skipped: it needs a local server and a `jetlock serve` child (no --url, --coordinator child)"
                .to_owned(),
        );
        return Ok(());
    }
    let max = args
        .max_held
        .unwrap_or(if args.quick { QUICK_HELD_MAX } else { u64::MAX });
    let mut steps: Vec<u64> = HELD_STEPS.into_iter().filter(|&s| s <= max).collect();
    if steps
        .last()
        .is_none_or(|&last| last < max && max != u64::MAX)
    {
        steps.push(max);
    }
    let waiters = if args.quick { QUICK_WAITERS } else { WAITERS };
    site.stop_coordinator().await;
    progress("memory: starting a fresh coordinator");
    let coordinator = procs::Coord::start(CoordinatorMode::Child, &site.url, site.bucket()).await?;
    let ctx = Ctx::new(args, site, 0);
    // The records belong to a session of their own with a long timeout: a
    // default session went unconfirmed during the burst of a million
    // writes (proof beats stored too late for its 300 ms, most likely) and
    // ended mid-step with every record. That is the capacity limit
    // docs/SCALING.md describes, not what this workload measures.
    let owner = ClientOptions::new()
        .name("jetlock-bench-memory")
        .session_timeout(MEMORY_SESSION_TIMEOUT)
        .connect(&site.url)
        .await?;
    let value = bytes::Bytes::from(site::sample_record(&owner).encode());
    let measured = match coordinator.child() {
        Some((pid, Some(metrics))) => {
            let setup = memory::Setup {
                url: &site.url,
                js: &site.js,
                bucket: site.bucket(),
                run: &ctx.run,
                names: &ctx.names,
                value: &value,
                pid,
                metrics,
            };
            let metrics = metrics.to_owned();
            memory::run(&setup, &steps, waiters)
                .await
                .map(|measured| (measured, metrics))
        }
        _ => Err("the memory workload's coordinator has no metrics endpoint".into()),
    };
    let ((mut measured, waiting), metrics) = match measured {
        Ok(measured) => measured,
        Err(e) => {
            coordinator.stop().await;
            return Err(e);
        }
    };
    // The waiters' sessions beat on while the fresh coordinator reads.
    let restarted = restart(coordinator, site, &metrics).await;
    drop(waiting);
    measured.restart = Some(restarted?);
    report.memory = Some(measured);
    // The local server goes with the site: no purge of a million records.
    Ok(())
}

/// Stops the memory workload's coordinator and times a fresh one on the
/// same bucket and request stream (`memory::restart_row`).
async fn restart(
    coordinator: procs::Coord,
    site: &Site,
    metrics: &str,
) -> Result<memory::RestartRow, CliError> {
    progress("memory: a fresh coordinator in place of this one");
    let counted = memory::counts(metrics).await;
    coordinator.stop().await;
    let counted = counted?;
    let started = tokio::time::Instant::now();
    let fresh = procs::Coord::start(CoordinatorMode::Child, &site.url, site.bucket()).await?;
    let ready = started.elapsed();
    let row = match fresh.child() {
        Some((_, Some(metrics))) => memory::restart_row(started, ready, metrics, counted).await,
        _ => Err("the fresh coordinator has no metrics endpoint".into()),
    };
    fresh.stop().await;
    row
}

#[derive(Clone, Copy)]
enum Path {
    Raw,
    Queue,
    Race,
}

/// Consumers on the bucket's stream right now.
async fn consumers(kv: &kv::Store) -> Result<usize, CliError> {
    let mut stream = kv.stream.clone();
    Ok(stream.info().await?.state.consumer_count)
}

fn death_name(death: Death) -> &'static str {
    match death {
        Death::Kill => "holder process killed",
        Death::Hang => "holder process hung",
    }
}
