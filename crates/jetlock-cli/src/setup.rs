//! `jetlock setup`: create the locks bucket, or verify an existing one.

use super::{CliError, Connection};
use jetlock::bucket::{buckets_of, ensure_bucket, partitions_of, spread_leaders, BucketSpec};

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    #[command(flatten)]
    conn: Connection,
    /// Replicas of the bucket: 1 for one server, 3 (or 5) for a cluster.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// How many buckets to spread the locks over (1 to 16), each a stream
    /// with its own leader; setup puts the leaders on different servers
    /// where the cluster has enough. Fixed once the deployment is made
    /// (docs/SCALING.md, "Locks over several buckets").
    #[arg(long, default_value_t = 1)]
    buckets: u32,
    /// How many partitions to split the requests into (1 to 256; 1: not
    /// split), each read by one coordinator (default 64 for a new
    /// deployment). Fixed once the deployment is made
    /// (docs/SCALING.md, "Partitioned coordinators").
    #[arg(long)]
    partitions: Option<u32>,
    /// How long to wait for JetStream to answer: a cluster that has just
    /// started answers only once it has elected its meta leader.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
}

pub async fn run(args: SetupArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    jetlock_testkit::server::wait_for_jetstream(&nats, args.wait)
        .await
        .map_err(|e| format!("JetStream did not answer within {:?}: {e}", args.wait))?;
    let js = async_nats::jetstream::new(nats);
    let mut spec = BucketSpec::new(&args.conn.bucket, args.replicas);
    spec.buckets = args.buckets;
    if let Some(p) = args.partitions {
        spec.partitions = p;
    }
    let kv = match ensure_bucket(&js, &spec).await {
        Ok(kv) => kv,
        Err(e) if args.replicas > 1 && e.to_string().contains("replicas > 1 not supported") => {
            return Err(format!(
                "{e}\nthis NATS server is not clustered: pass --replicas 1 (or set up the cluster of nats/cluster.conf)"
            )
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let stream = js.get_stream(&kv.stream_name).await?;
    let config = &stream.cached_info().config;
    if config.num_replicas != args.replicas {
        // An existing bucket is kept as it is: say so rather than "ready".
        return Err(format!(
            "locks bucket {} exists with {} replica(s), not the {} asked for; setup does not change \
             an existing bucket: `nats stream edit {} --replicas {}`, or pass --replicas {}",
            args.conn.bucket,
            config.num_replicas,
            args.replicas,
            kv.stream_name,
            args.replicas,
            config.num_replicas
        )
        .into());
    }
    let buckets = buckets_of(&args.conn.bucket, config)?;
    if buckets != args.buckets {
        return Err(format!(
            "locks bucket {} exists and spreads its locks over {buckets} bucket(s), not the {} asked for; \
             the number is fixed when the deployment is made (docs/SCALING.md): pass --buckets {buckets}",
            args.conn.bucket, args.buckets
        )
        .into());
    }
    let partitions = partitions_of(&args.conn.bucket, config)?;
    if args.partitions.is_some_and(|p| p != partitions) {
        return Err(format!(
            "locks bucket {} exists and splits its requests into {partitions} partition(s), not the {} asked for; \
             the number is fixed when the deployment is made (docs/SCALING.md): pass --partitions {partitions}",
            args.conn.bucket,
            args.partitions.unwrap_or_default()
        )
        .into());
    }
    println!(
        "locks bucket {} ready: {} replica(s), {:?} storage, per-message TTL on, markers kept {:?}",
        args.conn.bucket,
        config.num_replicas,
        config.storage,
        config.subject_delete_marker_ttl.unwrap_or_default()
    );
    if partitions > 1 {
        println!("requests split into {partitions} partitions, each read by one coordinator");
    } else {
        println!("requests not partitioned: every coordinator reads every request");
    }
    if buckets > 1 {
        println!("locks spread over {buckets} buckets, each stream's leader:");
        for (bucket, leader) in spread_leaders(&js, &args.conn.bucket, buckets).await? {
            println!(
                "  {bucket}: {}",
                leader.as_deref().unwrap_or("(single server)")
            );
        }
    }
    Ok(())
}
