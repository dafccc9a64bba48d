//! The worker processes: this same binary started as `jetlock demo
//! --worker ID`, each with its own NATS connection and jetlock session.
//! Chaos kills (SIGKILL) and pauses (SIGSTOP, later SIGCONT) them; a worker
//! that dies is replaced by a new one (`w2.0` by `w2.1`).
//!
//! No worker outlives the demo: each gets `PR_SET_PDEATHSIG` (the kernel
//! kills it when the demo dies, even by SIGKILL), and a [`Slot`] kills and
//! reaps its process when dropped. Children are reaped only by
//! [`Crew::supervise`], under the same lock that sends signals, so a signal
//! never reaches a recycled pid.

use super::access::Access;
use super::CliError;
use serde::Serialize;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Workers that exit on their own (not killed by chaos) before the demo
/// gives up, on top of one per worker slot.
const CRASH_ALLOWANCE: u64 = 3;

/// The environment variable naming a folder for the workers' logs.
const LOGS_ENV: &str = "JETLOCK_DEMO_LOGS";

/// How to start a worker.
pub struct WorkerCommand {
    pub exe: PathBuf,
    pub access: Access,
    pub layout: super::worker::Layout,
}

/// What happened to the workers.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CrewCounts {
    /// Workers killed with SIGKILL by chaos.
    pub kills: u64,
    /// Workers stopped with SIGSTOP by chaos (each resumed later).
    pub pauses: u64,
    /// Workers started to replace dead ones.
    pub respawns: u64,
    /// Workers that exited without being killed (a bug or a lost server).
    pub crashes: u64,
}

/// The running workers.
pub struct Crew {
    command: WorkerCommand,
    state: Mutex<CrewState>,
}

struct CrewState {
    slots: Vec<Slot>,
    counts: CrewCounts,
}

/// One worker process.
struct Slot {
    index: usize,
    incarnation: u32,
    id: String,
    child: Child,
    /// The worker's stderr (an anonymous temp file, gone when closed).
    log: File,
    resume_at: Option<Instant>,
    killed: bool,
}

impl Crew {
    /// A crew with no worker yet.
    pub fn new(command: WorkerCommand) -> Crew {
        Crew {
            command,
            state: Mutex::new(CrewState {
                slots: Vec::new(),
                counts: CrewCounts::default(),
            }),
        }
    }

    /// Starts `workers` more workers.
    pub fn launch(&self, workers: usize) -> Result<(), CliError> {
        let mut state = self.state();
        for _ in 0..workers {
            let index = state.slots.len();
            state.slots.push(spawn(&self.command, index, 0)?);
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CrewState> {
        self.state
            .lock()
            .expect("crew lock never poisoned: nothing in it panics")
    }

    /// SIGSTOPs `worker` for `pause`, if it runs and is not paused.
    pub fn pause(&self, worker: &str, pause: Duration) -> bool {
        let mut state = self.state();
        let Some(slot) = state.live(worker) else {
            return false;
        };
        if slot.resume_at.is_some() {
            return false;
        }
        slot.signal(libc::SIGSTOP);
        slot.resume_at = Some(Instant::now() + pause);
        state.counts.pauses += 1;
        true
    }

    /// SIGKILLs `worker`, if it runs; [`Crew::supervise`] replaces it.
    pub fn kill(&self, worker: &str) -> bool {
        let mut state = self.state();
        let Some(slot) = state.live(worker) else {
            return false;
        };
        slot.signal(libc::SIGKILL);
        slot.killed = true;
        state.counts.kills += 1;
        true
    }

    /// Resumes paused workers whose pause is over and replaces dead ones.
    /// Fails when workers keep exiting on their own.
    pub fn supervise(&self) -> Result<(), CliError> {
        let mut state = self.state();
        let now = Instant::now();
        for i in 0..state.slots.len() {
            let slot = &mut state.slots[i];
            if slot.resume_at.is_some_and(|at| at <= now) {
                slot.signal(libc::SIGCONT);
                slot.resume_at = None;
            }
            let Some(status) = slot.child.try_wait()? else {
                continue;
            };
            let (index, next, killed) = (slot.index, slot.incarnation + 1, slot.killed);
            if !killed {
                let tail = slot.log_tail();
                let id = slot.id.clone();
                state.counts.crashes += 1;
                if state.counts.crashes > state.slots.len() as u64 + CRASH_ALLOWANCE {
                    return Err(format!(
                        "demo workers keep exiting ({} so far); the last, {id}, {status}; its stderr ends with:\n{tail}",
                        state.counts.crashes
                    )
                    .into());
                }
            }
            state.slots[i] = spawn(&self.command, index, next)?;
            state.counts.respawns += 1;
        }
        Ok(())
    }

    pub fn counts(&self) -> CrewCounts {
        self.state().counts
    }

    /// Kills and reaps every worker.
    pub fn stop(&self) {
        self.state().slots.clear();
    }
}

impl CrewState {
    fn live(&mut self, worker: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == worker && !s.killed)
    }
}

/// Starts worker `w<index>.<incarnation>`.
fn spawn(command: &WorkerCommand, index: usize, incarnation: u32) -> Result<Slot, CliError> {
    let id = format!("w{index}.{incarnation}");
    // With JETLOCK_DEMO_LOGS=<dir>, each worker's log is kept there (set
    // JETLOCK_LOG too): what every worker did when a run stalls.
    let log = match std::env::var_os(LOGS_ENV) {
        Some(dir) => File::create(std::path::Path::new(&dir).join(format!("{id}.log")))?,
        None => tempfile::tempfile()?,
    };
    let mut cmd = Command::new(&command.exe);
    command.layout.pass_to(&mut cmd, &id);
    command.access.pass_to(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone()?);
    // Workers are spawned from the demo's main task, whose thread lives
    // as long as the process.
    jetlock_testkit::server::dies_with_this_process(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
        format!(
            "could not start demo worker {id} ({}): {e}",
            command.exe.display()
        )
    })?;
    Ok(Slot {
        index,
        incarnation,
        id,
        child,
        log,
        resume_at: None,
        killed: false,
    })
}

impl Slot {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a child we spawned and have not reaped (only
        // `supervise` and `drop` reap, under the crew lock).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// The last lines the worker wrote to stderr.
    fn log_tail(&mut self) -> String {
        jetlock_testkit::server::file_tail(&mut self.log, 4096, 20)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; std sends nothing to a child
        // it has already reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
