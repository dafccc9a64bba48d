//! Reading the request partitions this coordinator owns (docs/SCALING.md,
//! "Partitioned coordinators"): a consumer of just those partitions, made
//! again when they change, and the question to the server whether a
//! partition gained is read.
//!
//! A partition gained is read from the stream's start by a consumer with
//! no filter, the partitions not owned skipped here, and the consumer is
//! filtered on the partitions owned once they are read, from where it had
//! read to. nats-server feeds a consumer filtered on many subjects from a
//! long stream about ten times more slowly than one with no filter
//! (`jetlock bench --only takeover`): filtered, the catch-up of 100,000
//! queued requests took seconds. At the stream's end a filter costs
//! little. Partitions only lost narrow the consumer at once, from where it
//! had read to.
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
    /// Where it starts: `None` from the stream's start with no filter,
    /// `Some(seq)` filtered on the partitions owned from `seq` on.
    from: Option<u64>,
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

/// A consumer to make again: the partitions, the generation, and where
/// it starts (as `Opened`'s `from`).
type Again = (Vec<u32>, u64, Option<u64>);

type Made = Result<Opened, (Again, String)>;

/// The partition work in flight, at most one of each kind.
#[derive(Default)]
pub(super) struct PartitionWork {
    pub(super) opening: JoinSet<Made>,
    pub(super) checking: JoinSet<Checked>,
    /// Partitions to read whose consumer could not be made, and when to
    /// try again.
    retry: Option<(Again, Instant)>,
    /// The generation last asked for: a consumer made for an older one
    /// (done before it could be aborted) is dropped.
    wanted: u64,
    /// The partitions this coordinator was last told to read (`None`:
    /// every one, before it was told): the rest are skipped.
    pub(super) owned: Option<Vec<u32>>,
    /// The partitions the consumer reading now is filtered on (`None`:
    /// no filter).
    filter: Option<Vec<u32>>,
}

impl PartitionWork {
    /// Whether a request on `subject` is in a partition this coordinator
    /// does not read (one its consumer delivers while it has no filter).
    pub(super) fn skips(&self, subject: &str) -> bool {
        match (&self.owned, protocol::subject_partition(subject)) {
            (Some(owned), Some(p)) => !owned.contains(&p),
            _ => false,
        }
    }
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
    /// unpartitioned request). With a partition gained, or one still being
    /// read: a new consumer from the stream's start with no filter, so a
    /// partition gained is read whole; the engine hears it is read, as
    /// `generation`, once what was pending is delivered. With partitions
    /// only lost: one filtered on those owned, from where the consumer had
    /// read to. Made off the loop ([`Runtime::partitions_opened`]); one
    /// still being made for an older change is dropped.
    pub(super) fn read_partitions(&mut self, feeds: &mut Feeds, owned: Vec<u32>, generation: u64) {
        let work = &mut feeds.partition_work;
        work.retry = None;
        work.wanted = generation;
        work.opening.abort_all();
        // What was fed whole so far: the filter's partitions, or with no
        // filter those owned until now (the rest were skipped).
        let read = work.filter.clone().or_else(|| work.owned.clone());
        work.owned = Some(owned.clone());
        let gained = read
            .as_ref()
            .is_some_and(|read| owned.iter().any(|p| !read.contains(p)));
        let reading = work
            .filter
            .as_ref()
            .map_or(self.store.partitions() as usize, Vec::len);
        let from = if gained || feeds.catching_up.is_some() {
            None
        } else if reading == owned.len() {
            // The same partitions: nothing to read anew.
            self.engine.partitions_caught_up(generation, Instant::now());
            return;
        } else {
            Some(feeds.last_request_seq + 1)
        };
        self.open(feeds, owned, generation, from);
    }

    fn open(&mut self, feeds: &mut Feeds, owned: Vec<u32>, generation: u64, from: Option<u64>) {
        let all = owned.len() as u32 == self.store.partitions();
        let (nats, stream) = (self.nats.clone(), feeds.request_stream.clone());
        feeds
            .partition_work
            .opening
            .spawn(open(nats, stream, owned, generation, all, from));
    }

    /// The engine hears the partitions of `generation` are read; a consumer
    /// with no filter is then replaced by one filtered on the partitions
    /// owned, from where it had read to.
    pub(super) fn caught_up(&mut self, feeds: &mut Feeds, generation: u64) {
        self.engine.partitions_caught_up(generation, Instant::now());
        let work = &feeds.partition_work;
        let Some(owned) = work.owned.clone() else {
            return;
        };
        let all = owned.len() as u32 == self.store.partitions();
        if work.filter.is_some()
            || all
            || generation != work.wanted
            || !work.opening.is_empty()
            || work.retry.is_some()
        {
            return;
        }
        let from = Some(feeds.last_request_seq + 1);
        self.open(feeds, owned, generation, from);
    }

    /// The consumer of the partitions to read, made or not.
    pub(super) async fn partitions_opened(
        &mut self,
        feeds: &mut Feeds,
        done: Result<Made, tokio::task::JoinError>,
    ) {
        let opened = match done {
            Ok(Ok(opened)) if opened.generation == feeds.partition_work.wanted => opened,
            Ok(Err((again, e))) if again.1 == feeds.partition_work.wanted => {
                warn!(error = %e, "cannot read the request partitions now ours yet; trying again");
                feeds.partition_work.retry = Some((again, Instant::now() + RETRY_AFTER));
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
                    let again = (opened.owned, opened.generation, opened.from);
                    feeds.partition_work.retry = Some((again, Instant::now() + RETRY_AFTER));
                    return;
                }
            }
        }
        feeds.partitioned_unstored = unstored;
        feeds.requests = opened.requests;
        feeds.request_consumer = opened.consumer;
        feeds.last_request_seq = opened.from.map_or(0, |from| from - 1);
        feeds.last_request_at = Instant::now();
        feeds.partition_work.filter = match opened.from {
            Some(_) if !opened.all => Some(opened.owned.clone()),
            _ => None,
        };
        // An answer about the consumer replaced says nothing now.
        feeds.partition_work.checking.abort_all();
        info!(
            partitions = opened.owned.len(),
            from = ?opened.from,
            pending = opened.pending,
            "reading the request partitions this coordinator owns"
        );
        if opened.pending == 0 {
            feeds.catching_up = None;
            self.caught_up(feeds, opened.generation);
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
            .is_some_and(|(_, at)| now >= *at)
        {
            // The same consumer: what was read since it was asked for is
            // read again and skipped.
            if let Some(((owned, generation, from), _)) = feeds.partition_work.retry.take() {
                self.open(feeds, owned, generation, from);
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
                self.caught_up(feeds, checked.generation);
            }
        }
    }
}

/// Makes the consumer of the requests of partitions `owned` (every
/// partition's when `all`): from the stream's start with no filter
/// (`from` `None`), or filtered on them from `from` on.
async fn open(
    nats: async_nats::Client,
    stream: JsStream,
    owned: Vec<u32>,
    generation: u64,
    all: bool,
    from: Option<u64>,
) -> Made {
    let (filter_subjects, deliver_policy) = match from {
        Some(start_sequence) if !all => (
            std::iter::once(protocol::REQUEST_SUBJECTS.to_owned())
                .chain(owned.iter().map(|&p| protocol::partition_subjects(p)))
                .collect(),
            consumer::DeliverPolicy::ByStartSequence { start_sequence },
        ),
        Some(start_sequence) => (
            Vec::new(),
            consumer::DeliverPolicy::ByStartSequence { start_sequence },
        ),
        None => (Vec::new(), consumer::DeliverPolicy::All),
    };
    let made = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: nats.new_inbox(),
            deliver_policy,
            filter_subjects,
            ..Default::default()
        })
        .await;
    let consumer = match made {
        Ok(consumer) => consumer,
        Err(e) => return Err(((owned, generation, from), e.to_string())),
    };
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    match consumer.messages().await {
        Ok(requests) => Ok(Opened {
            owned,
            generation,
            all,
            from,
            requests,
            consumer: name,
            pending,
        }),
        Err(e) => Err(((owned, generation, from), e.to_string())),
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
