//! The paused holder: a holder process stopped (SIGSTOP) past its lease,
//! fenced off when it wakes.

use super::*;

// ---- the paused holder (a process of its own) --------------------------------

/// The paused holder's lease.
pub(super) const PAUSED_TTL: Duration = Duration::from_secs(2);

/// What the parent reads from the holder child's stdout.
#[derive(Debug, Default)]
pub(super) struct ChildSeen {
    pub(super) session: Option<String>,
    pub(super) token: Option<FencingToken>,
    /// (made at, accepted by the ledger)
    pub(super) writes: Vec<(Mono, bool)>,
    pub(super) lost: Option<String>,
}

/// A holder process: this test binary run as [`paused_holder_child`] (behind
/// `launcher`, e.g. `ip netns exec n4`), its stdout read by a thread that
/// applies its writes to the rig's ledger and records its grant and loss in
/// the history at the `CLOCK_MONOTONIC` times the process read, with its
/// own deadline: a paused process's belief ends there (`belief.rs`).
pub(super) struct HolderProcess {
    child: Option<std::process::Child>,
    pub(super) seen: Arc<Mutex<ChildSeen>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl HolderProcess {
    /// Starts it on key `k` and waits until three of its writes were
    /// accepted.
    pub(super) async fn start(rig: &Rig, k: &str, launcher: &[String]) -> HolderProcess {
        let exe = std::env::current_exe().expect("this test binary");
        let mut cmd = jetlock_testkit::server::launched(launcher, exe);
        cmd.args([
            "--exact",
            "paused::paused_holder_child",
            "--nocapture",
            "--ignored",
        ])
        .env(
            "JETLOCK_FAULT_CHILD",
            format!(
                "{}|{k}|{}",
                rig.cluster.url_as(Role::Worker),
                PAUSED_TTL.as_millis()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        jetlock_testkit::server::dies_with_this_process(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the holder process");
        let seen = Arc::new(Mutex::new(ChildSeen::default()));
        let stdout = child.stdout.take().expect("stdout");
        let (history, ledger, k) = (rig.history.clone(), rig.ledger.clone(), k.to_owned());
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let mut s = seen.lock().unwrap();
                    let mono = |w: &str| Mono(w.parse().expect("a CLOCK_MONOTONIC reading"));
                    match words.as_slice() {
                        ["CHILD", "granted", session, token, invoked, granted, deadline] => {
                            let token = FencingToken(token.parse().expect("a token"));
                            let op = history.acquire_invoked_at(&k, session, mono(invoked));
                            history.granted_at(op, token, mono(granted));
                            history.deadline(op, mono(deadline));
                            s.session = Some(session.to_string());
                            s.token = Some(token);
                        }
                        ["CHILD", "write", at] => {
                            let (session, token) =
                                (s.session.clone().expect("granted first"), s.token.unwrap());
                            let accepted = ledger.write(&k, &session, token);
                            s.writes.push((mono(at), accepted));
                        }
                        ["CHILD", "lost", at, deadline, reason @ ..] => {
                            let session = s.session.clone().expect("granted first");
                            let op = history.lost_at(&k, &session, s.token.unwrap(), mono(at));
                            history.deadline(op, mono(deadline));
                            s.lost = Some(reason.join(" "));
                        }
                        _ => {}
                    }
                }
            })
        };
        let holder = HolderProcess {
            child: Some(child),
            seen,
            reader: Some(reader),
        };
        let accepted = || {
            holder
                .seen
                .lock()
                .unwrap()
                .writes
                .iter()
                .filter(|w| w.1)
                .count()
        };
        let start = Instant::now();
        while accepted() < 3 {
            assert!(
                start.elapsed() < PATIENCE,
                "the holder process got the key and wrote"
            );
            sleep(Duration::from_millis(20)).await;
        }
        holder
    }

    /// Waits (bounded) for the process to exit once it saw its loss, and
    /// for the reader to take in all it printed.
    pub(super) async fn exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = timeout(PATIENCE, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .expect("the holder process exits after its loss")
            .unwrap()
            .expect("reap the holder");
        self.reader.take().expect("reader").join().expect("reader");
        status
    }
}

impl Drop for HolderProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A holder process (this test binary, run as [`paused_holder_child`]) takes
/// one of the workers' keys; SIGSTOP for 2× its lease; the workers get the
/// key; SIGCONT: every write the woken holder makes is refused by the
/// ledger, and it reports the loss. Its belief is in the history and ends
/// at the deadline it computed before the pause, which must come before
/// the workers' grant.
pub(super) async fn pause_a_holder(rig: &mut Rig) {
    let k = key(fastrand::usize(..KEYS));
    let mut holder = HolderProcess::start(rig, &k, &[]).await;
    let seen = holder.seen.clone();
    let token = seen.lock().unwrap().token.expect("granted");
    let pid = holder.child.as_ref().expect("running").id() as i32;
    // SAFETY: signals to our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    rig.faults += 1;
    sleep(2 * PAUSED_TTL).await;
    let resumed_at = Mono::now();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let status = holder.exit().await;
    let s = seen.lock().unwrap();
    let stale: Vec<bool> = s
        .writes
        .iter()
        .filter(|(at, _)| *at >= resumed_at)
        .map(|w| w.1)
        .collect();
    // The workers wrote the key with a newer token while the holder slept.
    let moved_on = rig.ledger.highest(&k).is_some_and(|t| t > token);
    eprintln!(
        "{}: paused holder {token} on {k}: {} writes before the pause, {} after \
         ({} refused), lost: {:?}, exit {status}",
        rig.name,
        s.writes.len() - stale.len(),
        stale.len(),
        stale.iter().filter(|a| !**a).count(),
        s.lost
    );
    assert!(moved_on, "the lock moved on while its holder was paused");
    assert!(
        !stale.is_empty(),
        "the woken holder wrote with its old token"
    );
    assert!(
        stale.iter().all(|accepted| !accepted),
        "a stale holder's write was accepted: {:?}",
        s.writes
    );
    assert!(
        s.lost.is_some(),
        "the woken holder learned it lost the lock"
    );
}

/// The holder process of [`pause_a_holder`]: does nothing unless run by it
/// (`JETLOCK_FAULT_CHILD=url|key|ttl_ms`). Holds the key and "writes"
/// every 50 ms without looking at whether it still holds it (a process
/// stuck in a GC pause does not look either): the ledger must refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the holder process of a_paused_holder_is_fenced_off; does nothing alone"]
async fn paused_holder_child() {
    let Ok(spec) = std::env::var("JETLOCK_FAULT_CHILD") else {
        return;
    };
    let [url, k, ttl_ms]: [&str; 3] = spec
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .expect("url|key|ttl_ms");
    let client = worker_options()
        .name("paused-holder")
        .connect(url)
        .await
        .expect("connect");
    let invoked = Mono::now();
    let guard = client
        .lock(k)
        .ttl(Duration::from_millis(ttl_ms.parse().expect("ttl")))
        .wait(PATIENCE)
        .acquire()
        .await
        .expect("acquire");
    let granted = Mono::now();
    println!(
        "CHILD granted {} {} {invoked} {granted} {}",
        client.session(),
        guard.token().get(),
        Mono::of(guard.deadline())
    );
    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        println!("CHILD write {}", Mono::now());
        tokio::select! {
            _ = &mut lost => break,
            _ = sleep(Duration::from_millis(50)) => {}
        }
    }
    let at = Mono::now();
    // One more write after the loss is known: still refused.
    println!("CHILD write {}", Mono::now());
    println!(
        "CHILD lost {at} {} {}",
        Mono::of(guard.deadline()),
        guard
            .lost_reason()
            .map(|r| r.to_string())
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("pause-holder").await;
    for _ in rounds(fault_secs(), 1) {
        pause_a_holder(&mut rig).await;
        rig.resumed("a holder was paused").await;
    }
    rig.finish().await;
}
