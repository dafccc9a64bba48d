//! `jetlock dev`: the embedded default. Starts a local nats-server (child
//! process, JetStream in a temp dir), creates the locks bucket, walks through
//! what a lock does, then serves until Ctrl-C. The server dies with jetlock
//! (killed on drop, and by the kernel if jetlock itself is killed), and its
//! temp dir is removed.

use super::CliError;
use futures::StreamExt;
use jetlock::protocol::{self, Answer};
use jetlock::{Client, ClientOptions, Fence, LockError};
use jetlock_coordinator::{Coordinator, CoordinatorConfig};
use jetlock_testkit::server::{server_binary, server_version, NatsServer};
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Client port of the local nats-server (0 picks a free port).
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Skip the walk-through.
    #[arg(long)]
    no_demo: bool,
    /// Exit after the walk-through instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let port = match args.port {
        0 => None,
        p => {
            if TcpListener::bind(("127.0.0.1", p)).is_err() {
                return Err(format!(
                    "port {p} is in use (another nats-server?); pick another with `--port N`, or `--port 0` for a free one"
                )
                .into());
            }
            Some(p)
        }
    };
    let bin = server_binary()?;
    let server = NatsServer::start_single(port)?;
    let version = server_version(&bin)
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_default();
    let url = server.url();
    let client = ClientOptions::new()
        .name("jetlock-dev")
        .create_bucket(1)
        .connect(&url)
        .await?;
    println!(
        "nats-server {version} running at {url} (pid {})",
        server.pid().unwrap_or(0)
    );
    println!("locks bucket JETLOCK_LOCKS ready (1 replica, per-key TTL, expiry markers)");
    let coordinator = Coordinator::start(
        client.nats().clone(),
        CoordinatorConfig {
            id: "dev".into(),
            metrics_addr: Some("127.0.0.1:0".into()),
            ..CoordinatorConfig::default()
        },
    )
    .await?;
    println!(
        "coordinator `dev` serving: FIFO queues, sessions, the JSON protocol on jetlock.req.>"
    );
    if let Some(addr) = coordinator.metrics_addr() {
        println!("metrics at http://{addr}/metrics; events on jetlock.ev.> (try `jetlock watch --url {url}`)");
    }
    println!("connect with:   JETLOCK_URL={url} jetlock locks");
    if !args.no_demo {
        println!();
        walk_through(&client, &url).await?;
    }
    if args.once {
        return Ok(());
    }
    // Handlers first, then the prompt: a Ctrl-C right after the prompt must
    // not meet the default action (which would skip the clean stop).
    let stopped = shutdown_signal()?;
    println!("\nserving; press Ctrl-C to stop");
    stopped.await;
    coordinator.shutdown().await;
    drop(server);
    println!("nats-server stopped, temp storage removed");
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Shows, on the real server, each thing a lock promises.
async fn walk_through(client: &Client, url: &str) -> Result<(), CliError> {
    let worker = |name: &'static str| ClientOptions::new().name(name).connect(url);
    let (a, b, c) = (
        worker("worker-a").await?,
        worker("worker-b").await?,
        worker("worker-c").await?,
    );
    let ledger = Fence::new();

    println!("1. mutual exclusion and waiting");
    let held = a.lock("account:42").acquire().await?;
    println!(
        "   worker-a holds account:42 with fencing token {}",
        held.token()
    );
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let started = Instant::now();
            let guard = b
                .lock("account:42")
                .wait(Duration::from_secs(10))
                .acquire()
                .await;
            (guard, started.elapsed())
        }
    });
    match c.lock("account:42").try_acquire().await {
        Err(LockError::Busy {
            holder: Some(h), ..
        }) => {
            println!(
                "   worker-c try-lock: busy, held by {} (token {})",
                h.owner, h.token
            )
        }
        other => {
            return Err(format!("expected worker-c to find the lock busy, got {other:?}").into())
        }
    }
    ledger.admit("account:42", held.token())?;
    held.release().await?;
    let (next, waited) = waiting.await?;
    let next = next?;
    println!(
        "   worker-a released; worker-b, waiting, was granted it after {waited:.1?} with token {}",
        next.token()
    );
    ledger.admit("account:42", next.token())?;
    next.release().await?;

    println!("2. a crashed holder's lease expires on the server");
    let crashed = a
        .lock("order:7")
        .ttl(Duration::from_secs(2))
        .auto_renew(false)
        .acquire()
        .await?;
    let stale = crashed.token();
    println!("   worker-a holds order:7 (token {stale}, 2 s lease) and crashes without releasing");
    std::mem::forget(crashed);
    let started = Instant::now();
    let after = b
        .lock("order:7")
        .wait(Duration::from_secs(10))
        .acquire()
        .await?;
    println!(
        "   worker-b was granted order:7 after {:.1?} with token {}",
        started.elapsed(),
        after.token()
    );

    println!("3. fencing: the crashed holder's late write is refused");
    ledger.admit("order:7", after.token())?;
    match ledger.admit("order:7", stale) {
        Err(e) => println!("   ledger refused worker-a: {e}"),
        Ok(()) => return Err("the ledger accepted a stale token".into()),
    }
    after.release().await?;

    println!("4. a transfer locks both accounts, in either order, without deadlock");
    let transfer = |worker: Client, names: [&'static str; 2]| async move {
        let both = worker
            .lock_all(names)
            .wait(Duration::from_secs(10))
            .acquire()
            .await?;
        let tokens = (both.token(names[0]), both.token(names[1]));
        both.release().await?;
        Ok::<_, LockError>(tokens)
    };
    let (x, y) = tokio::join!(
        transfer(a.clone(), ["account:1", "account:2"]),
        transfer(c.clone(), ["account:2", "account:1"]),
    );
    let (x, y) = (x?, y?);
    println!(
        "   (account:1, account:2) got tokens {:?}; (account:2, account:1) got {:?}",
        (x.0.unwrap_or_default().get(), x.1.unwrap_or_default().get()),
        (y.0.unwrap_or_default().get(), y.1.unwrap_or_default().get()),
    );
    println!("   both transfers completed");

    println!("5. reentrancy: the same owner takes a held lock again");
    let outer = client.lock("invoice:9").owner("txn-1").acquire().await?;
    let inner = client.lock("invoice:9").owner("txn-1").acquire().await?;
    let holder = client
        .holder("invoice:9")
        .await?
        .ok_or("invoice:9 not held")?;
    println!(
        "   owner txn-1 holds invoice:9 {} times with one token {}",
        holder.holds,
        outer.token()
    );
    inner.release().await?;
    outer.release().await?;

    println!("6. fairness: waiters are granted in arrival order, by one handoff write each");
    let held = a.lock("queue:1").acquire().await?;
    let mut waiters = Vec::new();
    for name in ["worker-b", "worker-c", "worker-d"] {
        let w = worker(name).await?;
        let task = tokio::spawn(async move {
            let g = w
                .lock("queue:1")
                .wait(Duration::from_secs(10))
                .acquire()
                .await?;
            let token = g.token();
            g.release().await?;
            Ok::<_, LockError>((name, token))
        });
        waiters.push(task);
        // Let each one queue before the next arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.release().await?;
    for task in waiters {
        let (name, token) = task.await??;
        println!("   {name} granted queue:1 with token {token}");
    }

    println!("7. any language: a plain NATS client takes a lock with JSON");
    let nats = client.nats().clone();
    let session = "demo-py";
    let mut answers = nats.subscribe(protocol::answer_subject(session)).await?;
    nats.publish(
        protocol::heartbeat_subject(session),
        r#"{"timeout_ms":5000}"#.into(),
    )
    .await?;
    let request = r#"{"v":1,"id":"r1","key":"account:42","ttl_ms":5000,"wait_ms":1000}"#;
    let js = async_nats::jetstream::new(nats.clone());
    js.publish(
        protocol::request_subject(protocol::Op::Acquire, session),
        request.into(),
    )
    .await?
    .await?;
    println!("   publish jetlock.req.acquire.{session}  {request}");
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await?
        .ok_or("no answer")?;
    println!(
        "   answer on jetlock.to.{session}:  {}",
        String::from_utf8_lossy(&answer.payload)
    );
    if let Ok(Answer::Granted { token, .. }) = serde_json::from_slice(&answer.payload) {
        let release = format!(r#"{{"v":1,"id":"r2","key":"account:42","token":{token}}}"#);
        js.publish(
            protocol::request_subject(protocol::Op::Release, session),
            release.into(),
        )
        .await?
        .await?;
    }
    Ok(())
}
