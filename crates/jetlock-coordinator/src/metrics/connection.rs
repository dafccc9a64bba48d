//! The coordinator's NATS connection counters (`jetlock_nats_messages`,
//! `jetlock_nats_bytes`, by direction), read from async-nats' statistics
//! on each scrape. Messages received is what a coordinator's CPU follows:
//! every request, bucket change, heartbeat and note it is sent, whether it
//! acts on it or only mirrors it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// The connection's statistics, once it is made.
pub(super) type Slot = Arc<OnceLock<Arc<async_nats::Statistics>>>;

/// Collects the connection series; none before the connection exists.
#[derive(Debug)]
pub(super) struct ConnectionCollector(pub(super) Slot);

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        let series = [
            (
                "jetlock_nats_messages",
                "Messages this coordinator's NATS connection received and sent",
                &stats.in_messages,
                &stats.out_messages,
            ),
            (
                "jetlock_nats_bytes",
                "Payload bytes this coordinator's NATS connection received and sent (without protocol overhead)",
                &stats.in_bytes,
                &stats.out_bytes,
            ),
        ];
        for (name, help, received, sent) in series {
            let kind = ConstCounter::new(0u64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (direction, count) in [("received", received), ("sent", sent)] {
                let counter = ConstCounter::new(count.load(Ordering::Relaxed));
                counter.encode(family.encode_family(&[("direction", direction)])?)?;
            }
        }
        Ok(())
    }
}
