//! Network partitions in namespaces the test creates (`unshare`): a holder
//! cut off, a server isolated, a delayed network.

use super::*;

// ---- network partitions (namespaces the test creates) ------------------------

/// The lab's addresses: server k (1–3) in network namespace `n<k>` at
/// `10.77.0.<k>`, the cut-off holder in `n4`, the test itself on the bridge
/// at `10.77.0.254`. All of it lives in new network and mount namespaces of
/// one child process, and is gone when that process exits.
const LAB_NET: &str = "10.77.0";

/// Runs `cmd` with `sh -c`; its stderr on failure.
fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A bridge, and four namespaces on it through veth pairs.
fn build_lab() -> Result<(), String> {
    sh("mkdir -p /run/netns && mount -t tmpfs jetlock-lab /run/netns")?;
    sh("ip link set lo up")?;
    sh(&format!(
        "ip link add br0 type bridge && ip addr add {LAB_NET}.254/24 dev br0 && ip link set br0 up"
    ))?;
    for k in 1..=4 {
        sh(&format!(
            "ip netns add n{k} && ip link add v{k} type veth peer name e{k} \
             && ip link set e{k} netns n{k} && ip netns exec n{k} ip link set lo up \
             && ip netns exec n{k} ip addr add {LAB_NET}.{k}/24 dev e{k} \
             && ip netns exec n{k} ip link set e{k} up && ip link set v{k} master br0 up"
        ))?;
    }
    Ok(())
}

fn netns_exec(k: usize) -> Vec<String> {
    ["ip", "netns", "exec", &format!("n{k}")]
        .map(str::to_owned)
        .to_vec()
}

/// Takes namespace `k`'s link down at both ends: nothing in or out.
fn cut(k: usize) {
    sh(&format!(
        "ip link set v{k} down && ip netns exec n{k} ip link set e{k} down"
    ))
    .expect("cut a namespace off");
}

fn heal(k: usize) {
    sh(&format!(
        "ip netns exec n{k} ip link set e{k} up && ip link set v{k} up"
    ))
    .expect("reconnect a namespace");
}

/// Cuts a random server off the others and every client for 2–4 s (2–15 s
/// in runs over a minute), then reconnects it.
pub(super) async fn isolate_servers(rig: &mut Rig, secs: Duration) {
    let longest = if secs > Duration::from_secs(60) {
        15_000
    } else {
        4_000
    };
    for _ in rounds(secs, 2) {
        let k = 1 + fastrand::usize(..3);
        cut(k);
        rig.faults += 1;
        jitter(2000, longest).await;
        heal(k);
        rig.resumed("a server was cut off and reconnected").await;
        jitter(500, 1500).await;
    }
}

/// A holder process in its own namespace takes a workers' key; its network
/// is cut for 2× its lease. It must learn it lost the lock before anybody
/// else is granted it: its hold is in the history, so the checker reports
/// an overlap otherwise.
async fn cut_off_a_holder(rig: &mut Rig) {
    let k = key(fastrand::usize(..KEYS));
    let mut holder = HolderProcess::start(rig, &k, &netns_exec(4)).await;
    let token = holder.seen.lock().unwrap().token.expect("granted");
    cut(4);
    let cut_at = Mono::now();
    rig.faults += 1;
    sleep(2 * PAUSED_TTL + Duration::from_secs(1)).await;
    heal(4);
    let status = holder.exit().await;
    let s = holder.seen.lock().unwrap();
    let after: Vec<bool> = s
        .writes
        .iter()
        .filter(|(at, _)| *at >= cut_at)
        .map(|w| w.1)
        .collect();
    let moved_on = rig.ledger.highest(&k).is_some_and(|t| t > token);
    eprintln!(
        "{}: cut-off holder {token} on {k}: {} writes after the cut ({} refused), lost: {:?}, exit {status}",
        rig.name,
        after.len(),
        after.iter().filter(|a| !**a).count(),
        s.lost
    );
    assert!(moved_on, "the lock moved on while its holder was cut off");
    assert!(
        s.lost.is_some(),
        "the cut-off holder learned it lost the lock"
    );
}

/// `tc netem` delay of 100 ± 50 ms on every link, where the kernel has
/// netem; otherwise says so and does nothing.
async fn delay_the_network(rig: &mut Rig, secs: Duration) {
    if let Err(e) = sh("tc qdisc add dev v1 root netem delay 100ms 50ms") {
        eprintln!("{}: skipped netem delay: {e}", rig.name);
        return;
    }
    for k in 2..=4 {
        sh(&format!(
            "tc qdisc add dev v{k} root netem delay 100ms 50ms"
        ))
        .expect("netem");
    }
    rig.faults += 1;
    sleep(secs).await;
    rig.resumed("100 ± 50 ms of delay").await;
    for k in 1..=4 {
        sh(&format!("tc qdisc del dev v{k} root")).expect("remove netem");
    }
}

/// A holder process cut off from the network gives its lock up before
/// anyone else is granted it; then `tc netem` delay where the kernel has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_off_a_holder() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_lab("holder").await;
}

/// A server cut off from the other servers and from every client, for 2–4 s
/// at a time. The coordinator connected to it hears nothing meanwhile, so it
/// holds off declaring anyone dead; once healed, it confirms sessions that
/// the other coordinator declared dead in the meantime. Those sessions went
/// unconfirmed past their deadline, so their clients ended them and connect
/// again: no lock is taken under a session declared dead. (Before, such a
/// session carried on and took locks that the other coordinator then
/// handed on: overlaps, in one run of four.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_isolate_a_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_lab("server").await;
}

/// Runs [`partitions_lab`] with `steps` in new namespaces, or says why it
/// cannot.
pub(super) async fn run_lab(steps: &'static str) {
    // The lab runs in a child process in new network and mount namespaces:
    // whatever it builds goes away with it, and the machine's own network
    // is never touched.
    let unshare = ["--net", "--mount", "--propagation", "private"];
    let probe = Command::new("unshare")
        .args(unshare)
        .args(["ip", "link", "add", "jl0", "type", "bridge"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipped: cannot create network namespaces here ({}); needs root and iproute2",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no `unshare` ({e}); needs util-linux, root and iproute2");
            return;
        }
    }
    let exe = std::env::current_exe().expect("this test binary");
    let status = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("unshare");
        cmd.args(unshare)
            .arg(exe)
            .args([
                "--exact",
                "partitions::partitions_lab",
                "--ignored",
                "--nocapture",
            ])
            .env("JETLOCK_FAULT_LAB", steps);
        jetlock_testkit::server::dies_with_this_process(&mut cmd);
        cmd.status()
    })
    .await
    .unwrap()
    .expect("run the lab");
    assert!(
        status.success(),
        "the partition lab failed (its output is above): {status}"
    );
}

/// The lab of [`run_lab`]: does nothing unless run by it
/// (`JETLOCK_FAULT_LAB=holder`, `server` or `kinds`, in its own
/// namespaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the partitions_* tests in new namespaces; does nothing alone"]
async fn partitions_lab() {
    let Ok(steps) = std::env::var("JETLOCK_FAULT_LAB") else {
        return;
    };
    build_lab().expect("build the lab");
    let members: Vec<Member> = (1..=3)
        .map(|k| Member {
            host: format!("{LAB_NET}.{k}"),
            launcher: netns_exec(k),
        })
        .collect();
    common::init_tracing();
    let cluster = NatsCluster::start_on(&members).expect("start the cluster in its namespaces");
    let cluster = common::with_jetstream(cluster).await;
    if steps == "kinds" {
        let rig = Rig::bare("kinds-partition", cluster).await;
        let secs = super::kinds::fault_secs();
        return super::kinds::run(rig, super::kinds::Fault::IsolateServers, secs).await;
    }
    let mut rig = Rig::start_on("partitions", cluster).await;
    if steps == "server" {
        isolate_servers(&mut rig, fault_secs()).await;
    } else {
        cut_off_a_holder(&mut rig).await;
        delay_the_network(&mut rig, fault_secs()).await;
    }
    rig.finish().await;
}
