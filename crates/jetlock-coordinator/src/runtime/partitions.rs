//! Reading the request partitions this coordinator owns (docs/SCALING.md,
//! "Partitioned coordinators"): a consumer of just those partitions, made
//! again when they change, and the question to the server whether a
//! partition gained is read.
//!
//! Both talk to the JetStream API, which answers in seconds or not at all
//! while a server restarts or a stream leader moves. So neither runs in
//! the loop: a loop waiting on them answers no heartbeat, and every
//! client's session ends at its deadline (the fault suite's rolling
//! lame-duck restart of the servers showed it). Until the new consumer is
//! made the old one goes on delivering, and the partitions gained wait
//! (`engine/partitions.rs`).

use super::*;

/// What a coordinator read of each request partition, so a consumer that
/// replaces another (the partitions read changed) feeds the engine each
/// request once: it reads its partitions from the start, and what the
/// last one delivered of a partition it kept is skipped.
pub(super) struct Reading {
    /// By partition, the last request sequence fed.
    fed: Vec<u64>,
    /// The same for unpartitioned requests (`jetlock.req.>`), read by
    /// every coordinator.
    fed_unpartitioned: u64,
}

impl Reading {
    pub(super) fn new(partitions: u32) -> Self {
        Reading {
            fed: vec![0; partitions as usize],
            fed_unpartitioned: 0,
        }
    }

    /// Whether request `seq` on `subject` was fed already; if not, it is
    /// now.
    pub(super) fn fed(&mut self, subject: &str, seq: u64) -> bool {
        let last =
            match protocol::subject_partition(subject).and_then(|p| self.fed.get_mut(p as usize)) {
                Some(last) => last,
                None => &mut self.fed_unpartitioned,
            };
        if seq <= *last {
            return true;
        }
        *last = seq;
        false
    }
}

/// The partitions' consumer and subscriptions, made.
pub(super) struct Opened {
    owned: Vec<u32>,
    generation: u64,
    all: bool,
    requests: consumer::push::Ordered,
    consumer: String,
    pending: u64,
}

/// What the server said of the consumer reading partitions `generation`.
pub(super) struct Checked {
    generation: u64,
    consumer: String,
    pending: Option<u64>,
    delivered: Option<u64>,
}

type Made = Result<Opened, (Vec<u32>, u64, String)>;

/// The partition work in flight, at most one of each kind.
#[derive(Default)]
pub(super) struct PartitionWork {
    pub(super) opening: JoinSet<Made>,
    pub(super) checking: JoinSet<Checked>,
    /// Partitions to read whose consumer could not be made, and when to
    /// try again.
    retry: Option<(Vec<u32>, u64, Instant)>,
    /// The generation last asked for: a consumer made for an older one
    /// (done before it could be aborted) is dropped.
    wanted: u64,
}

/// How long after a failure to make the partitions' consumer it is tried
/// again: the JetStream API is not asked fifty times a second while it is
/// down.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long the request consumer may deliver nothing while partitions are
/// caught up on before the server is asked whether it has more.
const CATCH_UP_QUIET: Duration = Duration::from_millis(100);
/// Longest wait for the server's answer to that; then it is asked again.
const CHECK_LIMIT: Duration = Duration::from_secs(2);

impl Runtime {
    /// Reads the request partitions `owned` from now on (and every
    /// unpartitioned request): a new consumer from the stream's start, so a
    /// partition gained is read whole; the engine hears it is read, as
    /// `generation`, once what was pending is delivered. Made off the loop
    /// ([`Runtime::partitions_opened`]); one still being made for an older
    /// change is dropped.
    pub(super) fn read_partitions(&mut self, feeds: &mut Feeds, owned: Vec<u32>, generation: u64) {
        let work = &mut feeds.partition_work;
        work.retry = None;
        work.wanted = generation;
        work.opening.abort_all();
        let all = owned.len() as u32 == self.store.partitions();
        let (nats, stream) = (self.nats.clone(), feeds.request_stream.clone());
        work.opening
            .spawn(open(nats, stream, owned, generation, all));
    }

    /// The consumer of the partitions to read, made or not.
    pub(super) async fn partitions_opened(
        &mut self,
        feeds: &mut Feeds,
        done: Result<Made, tokio::task::JoinError>,
    ) {
        let opened = match done {
            Ok(Ok(opened)) if opened.generation == feeds.partition_work.wanted => opened,
            Ok(Err((owned, generation, e))) if generation == feeds.partition_work.wanted => {
                warn!(error = %e, "cannot read the request partitions now ours yet; trying again");
                feeds.partition_work.retry =
                    Some((owned, generation, Instant::now() + RETRY_AFTER));
                return;
            }
            // Asked for before a newer change, or aborted for it.
            _ => return,
        };
        // The unstored releases' subscriptions change here, with the
        // consumer, so no release is read twice (old and new ones side by
        // side). None is stored: one sent while they change may go unread,
        // and its client releases another way.
        let subjects = if opened.all {
            vec![protocol::PARTITIONED_UNSTORED_RELEASES.to_owned()]
        } else {
            (opened.owned.iter())
                .map(|&p| protocol::partition_unstored_releases(p))
                .collect()
        };
        let mut unstored = futures::stream::SelectAll::new();
        for subject in subjects {
            match self.nats.subscribe(subject).await {
                Ok(sub) => unstored.push(sub),
                Err(e) => {
                    warn!(error = %e, "cannot read the request partitions now ours yet; trying again");
                    let retry = (
                        opened.owned,
                        opened.generation,
                        Instant::now() + RETRY_AFTER,
                    );
                    feeds.partition_work.retry = Some(retry);
                    return;
                }
            }
        }
        feeds.partitioned_unstored = unstored;
        feeds.requests = opened.requests;
        feeds.request_consumer = opened.consumer;
        feeds.last_request_seq = 0;
        feeds.last_request_at = Instant::now();
        // An answer about the consumer replaced says nothing now.
        feeds.partition_work.checking.abort_all();
        info!(
            partitions = opened.owned.len(),
            pending = opened.pending,
            "reading the request partitions this coordinator owns"
        );
        if opened.pending == 0 {
            feeds.catching_up = None;
            self.engine
                .partitions_caught_up(opened.generation, Instant::now());
        } else {
            feeds.catching_up = Some(opened.generation);
        }
    }

    /// Every tick: tries the partitions' consumer again when it is time,
    /// and, while partitions are caught up on and the consumer has been
    /// quiet, asks the server whether it has more: a request it had pending
    /// when it was made may have been deleted (finished) before it was
    /// delivered, so no delivered message says nothing is pending.
    pub(super) fn partitions_tick(&mut self, feeds: &mut Feeds, now: Instant) {
        if feeds
            .partition_work
            .retry
            .as_ref()
            .is_some_and(|(_, _, at)| now >= *at)
        {
            if let Some((owned, generation, _)) = feeds.partition_work.retry.take() {
                self.read_partitions(feeds, owned, generation);
            }
        }
        let Some(generation) = feeds.catching_up else {
            return;
        };
        if feeds.last_request_at.elapsed() < CATCH_UP_QUIET
            || !feeds.partition_work.checking.is_empty()
        {
            return;
        }
        feeds.last_request_at = now;
        let consumer = feeds.request_consumer.clone();
        let nats = self.nats.clone();
        feeds
            .partition_work
            .checking
            .spawn(check(nats, consumer, generation));
    }

    /// The server's answer: nothing pending and nothing delivered beyond
    /// what was read means the partitions are read.
    pub(super) fn caught_up_checked(
        &mut self,
        feeds: &mut Feeds,
        done: Result<Checked, tokio::task::JoinError>,
    ) {
        let Ok(checked) = done else { return };
        if feeds.catching_up != Some(checked.generation)
            || feeds.request_consumer != checked.consumer
        {
            return;
        }
        if let (Some(0), Some(delivered)) = (checked.pending, checked.delivered) {
            if delivered <= feeds.last_request_seq {
                feeds.catching_up = None;
                self.engine
                    .partitions_caught_up(checked.generation, Instant::now());
            }
        }
    }
}

/// Makes the consumer of the requests of partitions `owned` (every
/// partition's when `all`).
async fn open(
    nats: async_nats::Client,
    stream: JsStream,
    owned: Vec<u32>,
    generation: u64,
    all: bool,
) -> Made {
    let filter_subjects = if all {
        Vec::new()
    } else {
        std::iter::once(protocol::REQUEST_SUBJECTS.to_owned())
            .chain(owned.iter().map(|&p| protocol::partition_subjects(p)))
            .collect()
    };
    let made = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: nats.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subjects,
            ..Default::default()
        })
        .await;
    let consumer = match made {
        Ok(consumer) => consumer,
        Err(e) => return Err((owned, generation, e.to_string())),
    };
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    match consumer.messages().await {
        Ok(requests) => Ok(Opened {
            owned,
            generation,
            all,
            requests,
            consumer: name,
            pending,
        }),
        Err(e) => Err((owned, generation, e.to_string())),
    }
}

/// Asks the server how much consumer `consumer` has pending and how far it
/// delivered.
async fn check(nats: async_nats::Client, consumer: String, generation: u64) -> Checked {
    let subject = format!(
        "$JS.API.CONSUMER.INFO.{}.{consumer}",
        protocol::REQUEST_STREAM
    );
    // A consumer made again by the ordered consumer under another name is
    // not found here: its next message says how much is pending.
    let reply = tokio::time::timeout(CHECK_LIMIT, nats.request(subject, "".into())).await;
    let info = match reply {
        Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload).ok(),
        _ => None,
    };
    let field = |f: fn(&serde_json::Value) -> Option<u64>| info.as_ref().and_then(f);
    Checked {
        generation,
        pending: field(|i| i["num_pending"].as_u64()),
        delivered: field(|i| i["delivered"]["stream_seq"].as_u64()),
        consumer,
    }
}
