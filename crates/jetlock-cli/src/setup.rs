//! `jetlock setup`: create the locks bucket, or verify an existing one.

use super::{CliError, Connection};
use jetlock::bucket::{ensure_bucket, BucketSpec};

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    #[command(flatten)]
    conn: Connection,
    /// Replicas of the bucket: 1 for one server, 3 (or 5) for a cluster.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

pub async fn run(args: SetupArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let js = async_nats::jetstream::new(nats);
    let spec = BucketSpec::new(&args.conn.bucket, args.replicas);
    let kv = ensure_bucket(&js, &spec).await?;
    let stream = js.get_stream(&kv.stream_name).await?;
    let config = &stream.cached_info().config;
    println!(
        "locks bucket {} ready: {} replica(s), {:?} storage, per-message TTL on, markers kept {:?}",
        args.conn.bucket,
        config.num_replicas,
        config.storage,
        config.subject_delete_marker_ttl.unwrap_or_default()
    );
    Ok(())
}
