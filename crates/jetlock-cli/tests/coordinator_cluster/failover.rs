//! Test 1: kill -9 one of two coordinators during a steady, contended
//! load, in phases (set up, load, kill, drain, judge).

use super::*;

// ---- test 1: failover under load --------------------------------------------

const TASKS: usize = 8;
const ITERATIONS: u64 = 120;
/// Total Rust grants after which coordinator c1 is killed.
const KILL_AT: u64 = 300;
/// Most holds are short; every fourth is long, so that a hold is often live
/// when the kill and the takeover happen.
fn hold(i: u64) -> Duration {
    Duration::from_millis(if i % 4 == 3 { 25 } else { 3 })
}
/// The load reaches KILL_AT grants in 2-8 s; far longer means it stalled.
const STALL: Duration = Duration::from_secs(30);

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[derive(Default, Debug)]
struct TaskReport {
    grants: u64,
    acquire_errors: Vec<String>,
    release_errors: Vec<(Instant, Instant, String)>,
    fence_refusals: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_coordinators_answers_every_request_once_without_overlap() {
    let _serial = one_at_a_time().await;
    let mut run = Failover::set_up().await;
    let load = run.start_load().await;
    let kill = run.kill_c1_mid_load(&load).await;
    let drained = run.drain(load).await;
    let judged = run.judge(&kill, &drained);
    run.check(&kill, &drained, &judged);
}

/// The failover test's run: two coordinators on a 3-node cluster, the
/// names each owns, and what the load recorded on them. One method per
/// phase: [`Failover::set_up`], [`Failover::start_load`],
/// [`Failover::kill_c1_mid_load`], [`Failover::drain`], [`Failover::judge`],
/// [`Failover::check`].
struct Failover {
    // Dropped in this order: the coordinators before the cluster.
    c1: Serving,
    /// Serves until the end; only c1 is killed.
    _c2: Serving,
    wire: WireLog,
    cluster: NatsCluster,
    /// The names c1 owns (the one that is killed).
    of_c1: Vec<String>,
    /// c1's names, then c2's; the other fields index by position here.
    names: Vec<String>,
    checkers: Arc<Vec<Arc<ExclusionChecker>>>,
    counters: Arc<Vec<Arc<AtomicU64>>>,
    fence: Arc<Fence>,
    grants_tx: Arc<watch::Sender<u64>>,
    grants_rx: watch::Receiver<u64>,
    killed_tx: watch::Sender<bool>,
    killed_rx: watch::Receiver<bool>,
    /// Each Rust hold: (name index, when it ended).
    grant_log: Arc<Mutex<Vec<(usize, Instant)>>>,
    /// Problems as they happen, for a load that stalls before the end.
    seen: Arc<Mutex<Vec<String>>>,
}

/// The running load: 8 Rust clients and one raw JSON client.
struct Load {
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<TaskReport>>,
    raw: tokio::task::JoinHandle<RawReport>,
    stop_raw: tokio_util::sync::CancellationToken,
}

/// When c1 was killed, and the contention seen before.
struct Kill {
    at: Instant,
    /// `queued` answers before the kill.
    queued_before: usize,
}

/// What the load's clients reported once it ended.
struct Drained {
    reports: Vec<TaskReport>,
    raw: RawReport,
    load_time: Duration,
}

/// What the wire showed after the load: every answer, the requests with
/// conflicting final outcomes, and the raw client's finals by request id.
struct Judged {
    answers: Vec<(Instant, String, Answer)>,
    conflicting: Vec<String>,
    raw_session_finals: HashMap<String, Vec<(Instant, String)>>,
}

/// The first coordinator grant answer on `name` after `killed_at`, from
/// the kill.
fn queued_grant_after(
    answers: &[(Instant, String, Answer)],
    name: &str,
    killed_at: Instant,
) -> Option<Duration> {
    answers
        .iter()
        .filter(|(at, _, a)| {
            *at > killed_at && matches!(a, Answer::Granted { key, waiters: _, .. } if key == name)
        })
        .map(|(at, _, _)| at.duration_since(killed_at))
        .min()
}

impl Failover {
    /// The cluster, the bucket, the wire monitor, coordinators c1 and c2
    /// seeing each other, and two names owned by each.
    async fn set_up() -> Failover {
        let cluster = cluster().await;
        let serve_url = cluster.url_as(Role::Coordinator);
        setup_bucket(&cluster).await;
        let wire = WireLog::start(&cluster).await;

        let c1 = start_coordinator(&serve_url, "c1");
        let c2 = start_coordinator(&serve_url, "c2");
        wait_for_ring(&cluster, &["c1", "c2"]).await;

        // Two names per coordinator, so the kill moves half of them.
        let (of_c1, of_c2) = split_names("c1", "c2", 2);
        let names: Vec<String> = of_c1.iter().chain(of_c2.iter()).cloned().collect();
        eprintln!("names owned by c1: {of_c1:?}, by c2: {of_c2:?}");
        let checkers: Arc<Vec<Arc<ExclusionChecker>>> = Arc::new(
            names
                .iter()
                .map(|_| Arc::new(ExclusionChecker::default()))
                .collect(),
        );
        let counters: Arc<Vec<Arc<AtomicU64>>> =
            Arc::new(names.iter().map(|_| Arc::new(AtomicU64::new(0))).collect());
        let (grants_tx, grants_rx) = watch::channel(0u64);
        let (killed_tx, killed_rx) = watch::channel(false);
        Failover {
            c1,
            _c2: c2,
            wire,
            cluster,
            of_c1,
            names,
            checkers,
            counters,
            fence: Arc::new(Fence::new()),
            grants_tx: Arc::new(grants_tx),
            grants_rx,
            killed_tx,
            killed_rx,
            grant_log: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// Connects the clients, then starts the raw client and the load tasks.
    async fn start_load(&self) -> Load {
        let url = self.cluster.url_as(Role::Worker);
        // Clients connect before the load starts, so every one sees the
        // coordinators (its first heartbeat is answered).
        let mut clients = Vec::new();
        for t in 0..TASKS {
            let client = worker_client(&url, &format!("task-{t}")).await;
            clients.push(client);
        }

        // The raw JSON client, on a name c1 owns (the one that is killed).
        let stop_raw = tokio_util::sync::CancellationToken::new();
        let raw = tokio::spawn(raw_client(
            self.cluster.url_as(Role::Restricted),
            self.names[0].clone(),
            self.checkers[0].clone(),
            self.fence.clone(),
            self.counters[0].clone(),
            stop_raw.clone(),
            self.killed_rx.clone(),
        ));

        let started = Instant::now();
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(t, client)| self.spawn_task(t, client))
            .collect();
        Load {
            started,
            tasks,
            raw,
            stop_raw,
        }
    }

    /// Load task `t`: [`ITERATIONS`] acquire → fenced update → release
    /// cycles over the names.
    fn spawn_task(&self, t: usize, client: Client) -> tokio::task::JoinHandle<TaskReport> {
        let (names, checkers, counters, fence, grants_tx, grant_log, seen) = (
            self.names.clone(),
            self.checkers.clone(),
            self.counters.clone(),
            self.fence.clone(),
            self.grants_tx.clone(),
            self.grant_log.clone(),
            self.seen.clone(),
        );
        let note = move |what: &str, problem: String| {
            seen.lock().unwrap().push(format!("{what}: {problem}"));
            problem
        };
        tokio::spawn(async move {
            let mut report = TaskReport::default();
            for i in 0..ITERATIONS {
                // Two tasks on each name at any time (plus the raw client
                // on names[0]): holds of 3-25 ms keep the others queued.
                let k = (t + i as usize) % names.len();
                let name = &names[k];
                let guard = match client
                    .lock(name)
                    .ttl(Duration::from_secs(5))
                    .wait(Duration::from_secs(30))
                    .acquire()
                    .await
                {
                    Ok(g) => g,
                    Err(e) => {
                        report.acquire_errors.push(note(
                            "acquire failed",
                            format!("task {t} iteration {i} {name}: {e}"),
                        ));
                        continue;
                    }
                };
                let token = guard.token();
                checkers[k].enter(token);
                // A fenced read-modify-write with the hold in between: an
                // overlapping holder would lose an update.
                let v = counters[k].load(Ordering::SeqCst);
                tokio::time::sleep(hold(i)).await;
                // A refusal leaves the counter short: judged at the end.
                if let Err(e) =
                    fence.admit_with(name, token, || counters[k].store(v + 1, Ordering::SeqCst))
                {
                    report
                        .fence_refusals
                        .push(note("fence refused", format!("task {t} {name}: {e}")));
                }
                checkers[k].exit();
                grant_log.lock().unwrap().push((k, Instant::now()));
                report.grants += 1;
                grants_tx.send_modify(|n| *n += 1);
                let release_sent = Instant::now();
                if let Err(e) = guard.release().await {
                    let e = note(
                        "release failed",
                        format!("task {t} iteration {i} {name}: {e}"),
                    );
                    report
                        .release_errors
                        .push((release_sent, Instant::now(), e));
                }
            }
            report
        })
    }

    /// Mid-way (at [`KILL_AT`] grants): kill -9 c1.
    async fn kill_c1_mid_load(&mut self, load: &Load) -> Kill {
        let mut rx = self.grants_rx.clone();
        if timeout(STALL, rx.wait_for(|n| *n >= KILL_AT))
            .await
            .is_err()
        {
            self.stalled();
        }
        let before_kill = self.wire.answers();
        let queued_before = before_kill
            .iter()
            .filter(|(_, _, a)| matches!(a, Answer::Queued { .. }))
            .count();
        let killed_at = Instant::now();
        self.c1.kill9();
        let _ = self.killed_tx.send(true);
        let grants_at_kill = *self.grants_rx.borrow();
        eprintln!(
            "killed c1 after {:?} of load, at {grants_at_kill} grants ({queued_before} queued answers so far)",
            load.started.elapsed()
        );
        Kill {
            at: killed_at,
            queued_before,
        }
    }

    /// The load never reached [`KILL_AT`] grants: fails with what each
    /// name's checker and the tasks saw so far.
    fn stalled(&self) -> ! {
        let mut why = Vec::new();
        for (k, name) in self.names.iter().enumerate() {
            let checker = self.checkers[k].clone();
            if let Err(e) = std::panic::catch_unwind(move || checker.assert_clean()) {
                why.push(format!("{name}: {}", panic_text(&e)));
            }
        }
        let seen = self.seen.lock().unwrap();
        panic!(
            "the load stalled: {} of {KILL_AT} grants before the kill after {STALL:?}. \
             Holds: {why:?}. {} problems so far, the first: {:#?}",
            *self.grants_rx.borrow(),
            seen.len(),
            &seen[..seen.len().min(10)]
        );
    }

    /// The load goes on to its end; then the raw client stops.
    async fn drain(&self, load: Load) -> Drained {
        let mut reports = Vec::new();
        for task in load.tasks {
            reports.push(
                timeout(Duration::from_secs(120), task)
                    .await
                    .expect("a load task hung")
                    .expect("a load task panicked"),
            );
        }
        let load_time = load.started.elapsed();
        load.stop_raw.cancel();
        let raw = timeout(Duration::from_secs(40), load.raw)
            .await
            .expect("the raw client hung")
            .expect("the raw client panicked");
        // Late duplicates (a takeover repeating answers) would have arrived by
        // now; a short window catches stragglers of the last requests.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Drained {
            reports,
            raw,
            load_time,
        }
    }

    /// Reads the wire: prints the timings around the kill, and groups every
    /// final answer by request.
    fn judge(&self, kill: &Kill, drained: &Drained) -> Judged {
        let answers = self.wire.answers();
        let events = self.wire.events();
        self.print_timings(kill, drained, &answers, &events);

        // Wire level: every (session, request id) has exactly one distinct final
        // outcome; identical repeats (a takeover repeating a grant) are counted.
        let killed_at = kill.at;
        let finals = finals_by_request(&answers);
        let mut repeats = 0usize;
        let mut conflicting = Vec::new();
        let mut repeated = Vec::new();
        for ((session, re), outcomes) in &finals {
            let d = distinct(outcomes);
            repeats += outcomes.len() - d;
            if outcomes.len() > d {
                repeated.push(format!("{session} {re}: {}", timeline(outcomes, killed_at)));
            }
            if d > 1 {
                conflicting.push(format!(
                    "{session} {re}: {} (times from the kill)",
                    timeline(outcomes, killed_at)
                ));
            }
        }
        conflicting.sort();
        repeated.sort();
        for r in &repeated {
            eprintln!("repeated answer (allowed): {r}");
        }
        eprintln!(
            "wire: {} requests answered, {repeats} identical repeated final answers, {} with conflicting outcomes",
            finals.len(),
            conflicting.len()
        );

        // The raw client: every acknowledged request exactly one final outcome.
        let raw = &drained.raw;
        let raw_session_finals: HashMap<String, Vec<(Instant, String)>> = {
            let raw_ids: BTreeSet<&str> = raw.sent.iter().map(|(id, _, _)| id.as_str()).collect();
            finals
                .iter()
                .filter(|((s, re), _)| {
                    s.starts_with("restricted.raw-") && raw_ids.contains(re.as_str())
                })
                .map(|((_, re), o)| (re.clone(), o.clone()))
                .collect()
        };
        let raw_repeats: usize = raw_session_finals
            .values()
            .map(|o| o.len() - distinct(o))
            .sum();
        eprintln!(
            "raw client: {} requests ({} after the kill), {} grants, {raw_repeats} identical repeats; \
             unanswered {:?}, unexpected {:?}, heartbeats refused {}",
            raw.sent.len(),
            raw.sent_after_kill,
            raw.grants,
            raw.unanswered,
            raw.unexpected,
            raw.heartbeat_refused
        );
        Judged {
            answers,
            conflicting,
            raw_session_finals,
        }
    }

    /// Per name: the longest pause between grants, the first grants and
    /// handoffs after the kill; the coordinators' own events; the load's
    /// totals.
    fn print_timings(
        &self,
        kill: &Kill,
        drained: &Drained,
        answers: &[(Instant, String, Answer)],
        events: &[(Instant, String, serde_json::Value)],
    ) {
        let (names, killed_at) = (&self.names, kill.at);
        let grant_log = self.grant_log.lock().unwrap().clone();
        let first_after = |k: usize| {
            grant_log
                .iter()
                .filter(|(key, at)| *key == k && *at > killed_at)
                .map(|(_, at)| at.duration_since(killed_at))
                .min()
        };
        let handoffs_after = |name: &str| {
            events
                .iter()
                .filter(|(at, kind, v)| {
                    *at > killed_at
                        && kind == "lock.granted"
                        && v["key"] == name
                        && v["handoff"] == serde_json::Value::Bool(true)
                })
                .map(|(at, _, _)| at.duration_since(killed_at))
                .collect::<Vec<_>>()
        };
        // The longest pause between two Rust grants on each name, and where.
        let mut max_gap = Duration::ZERO;
        let mut gaps = Vec::new();
        for k in 0..names.len() {
            let mut times: Vec<Instant> = grant_log
                .iter()
                .filter(|(key, _)| *key == k)
                .map(|(_, at)| *at)
                .collect();
            times.sort();
            let gap = times
                .windows(2)
                .map(|w| (w[1] - w[0], w[0]))
                .max()
                .unwrap_or((Duration::ZERO, killed_at));
            max_gap = max_gap.max(gap.0);
            gaps.push(gap);
        }
        for (k, name) in names.iter().enumerate() {
            let owner = if k < 2 { "c1 (killed)" } else { "c2" };
            let h = handoffs_after(name);
            eprintln!(
                "{name} [{owner}]: longest pause between grants {:?} from {} (from the kill); first Rust grant after the kill at +{:?}, first coordinator grant answer at +{:?}, \
                 first coordinator handoff at +{:?} ({} handoffs after the kill), {} holds",
                gaps[k].0,
                rel(gaps[k].1, killed_at),
                first_after(k),
                queued_grant_after(answers, name, killed_at),
                h.first(),
                h.len(),
                self.checkers[k].entries(),
            );
        }
        for (at, kind, v) in events
            .iter()
            .filter(|(_, k, _)| k.starts_with("coordinator."))
        {
            eprintln!(
                "event {kind} at {} (from the kill): {v}",
                rel(*at, killed_at)
            );
        }
        let all_handoffs = events
            .iter()
            .filter(|(_, kind, v)| {
                kind == "lock.granted" && v["handoff"] == serde_json::Value::Bool(true)
            })
            .count();
        let queued_total = answers
            .iter()
            .filter(|(_, _, a)| matches!(a, Answer::Queued { .. }))
            .count();
        eprintln!(
            "load: {} Rust grants + {} raw grants in {:?}; longest gap between grants on one name: {max_gap:?}; \
             {queued_total} queued answers, {all_handoffs} handoffs by a coordinator",
            drained.reports.iter().map(|r| r.grants).sum::<u64>(),
            drained.raw.grants,
            drained.load_time
        );
    }

    /// The assertions. Every violation is listed before the test fails, so
    /// one run shows all.
    fn check(&self, kill: &Kill, drained: &Drained, judged: &Judged) {
        let (names, killed_at) = (&self.names, kill.at);
        let (reports, raw) = (&drained.reports, &drained.raw);
        let mut failures: Vec<String> = Vec::new();
        let mut fail = |what: String| {
            eprintln!("FAILURE: {what}");
            failures.push(what);
        };
        if kill.queued_before == 0 {
            fail(
                "no waiter was ever queued at a coordinator before the kill: no contention".into(),
            );
        }
        let acquire_errors: Vec<&String> = reports.iter().flat_map(|r| &r.acquire_errors).collect();
        if !acquire_errors.is_empty() {
            fail(format!(
                "{} acquires failed: {acquire_errors:#?}",
                acquire_errors.len()
            ));
        }
        let rust_grants = reports.iter().map(|r| r.grants).sum::<u64>();
        if rust_grants != TASKS as u64 * ITERATIONS {
            fail(format!(
                "{rust_grants} Rust grants, want {} (one per iteration)",
                TASKS as u64 * ITERATIONS
            ));
        }
        for (k, name) in names.iter().enumerate() {
            let checker = self.checkers[k].clone();
            if let Err(e) = std::panic::catch_unwind(move || checker.assert_clean()) {
                fail(format!("{name}: {}", panic_text(&e)));
            }
            let (count, holds) = (
                self.counters[k].load(Ordering::SeqCst),
                self.checkers[k].entries(),
            );
            if count != holds {
                fail(format!(
                    "fenced counter of {name} is {count} after {holds} holds: updates were lost or refused"
                ));
            }
        }
        let refusals: Vec<&String> = reports
            .iter()
            .flat_map(|r| &r.fence_refusals)
            .chain(&raw.fence_refusals)
            .collect();
        if !refusals.is_empty() {
            fail(format!(
                "{} grants refused by the fence: {:#?}",
                refusals.len(),
                &refusals[..refusals.len().min(10)]
            ));
        }
        if !raw.unanswered.is_empty() {
            fail(format!("raw requests never answered: {:?}", raw.unanswered));
        }
        if !raw.unexpected.is_empty() {
            fail(format!(
                "raw requests answered unexpectedly: {:?}",
                raw.unexpected
            ));
        }
        if raw.sent_after_kill == 0 {
            fail("the raw client sent nothing after the kill".into());
        }
        for (id, kind, sent) in &raw.sent {
            match judged.raw_session_finals.get(id) {
                Some(outcomes) if distinct(outcomes) == 1 => {}
                Some(outcomes) => fail(format!(
                    "raw {kind} {id} (sent at {}): final answers {} (times from the kill; want exactly one outcome)",
                    rel(*sent, killed_at),
                    timeline(outcomes, killed_at)
                )),
                None => fail(format!("raw {kind} {id}: no final answer on the wire")),
            }
        }
        let conflicting = &judged.conflicting;
        if !conflicting.is_empty() {
            fail(format!(
                "{} requests with conflicting final answers: {:#?}",
                conflicting.len(),
                &conflicting[..conflicting.len().min(10)]
            ));
        }
        let release_errors: Vec<String> = reports
            .iter()
            .flat_map(|r| &r.release_errors)
            .map(|(sent, failed, e)| {
                format!(
                    "{e} (release began at {}, failed at {} from the kill)",
                    rel(*sent, killed_at),
                    rel(*failed, killed_at)
                )
            })
            .collect();
        if !release_errors.is_empty() {
            fail(format!(
                "{} releases failed: {:#?}",
                release_errors.len(),
                &release_errors[..release_errors.len().min(10)]
            ));
        }
        for name in &self.of_c1 {
            if queued_grant_after(&judged.answers, name, killed_at).is_none() {
                fail(format!(
                    "no coordinator granted a queued waiter on {name} (c1's) after the kill"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
