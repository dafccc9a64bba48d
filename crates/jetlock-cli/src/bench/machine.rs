//! What the bench reads from `/proc`: the machine it ran on (CPUs, model,
//! memory, load) for the report, and a process's resident memory and CPU
//! time for the memory workload. Linux only; elsewhere the fields are
//! empty (`None`), never an error.

use serde::Serialize;
use std::time::Duration;

/// The machine, as the report shows it.
#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) cpu_model: Option<String>,
    pub(super) memory_mib: Option<u64>,
    /// 1-, 5- and 15-minute load averages when the run started: the other
    /// work on the machine (the bench's own processes are not running yet).
    pub(super) load_at_start: Option<[f64; 3]>,
}

impl Machine {
    pub(super) fn read() -> Machine {
        let file = |path: &str| std::fs::read_to_string(path).ok();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: file("/proc/cpuinfo").and_then(|t| cpu_model(&t)),
            memory_mib: file("/proc/meminfo")
                .and_then(|t| kib_field(&t, "MemTotal"))
                .map(|kib| kib / 1024),
            load_at_start: load_average(),
        }
    }

    /// One line for the markdown report.
    pub(super) fn describe(&self) -> String {
        let model = self.cpu_model.as_deref().unwrap_or("unknown model");
        let memory = self.memory_mib.map_or("unknown".to_owned(), |m| {
            format!("{:.1} GiB", m as f64 / 1024.0)
        });
        let load = self
            .load_at_start
            .map_or("unknown".to_owned(), |[a, b, c]| {
                format!("{a:.2} {b:.2} {c:.2}")
            });
        format!(
            "{} × {model}, {memory} memory; load average at start {load}",
            self.cpus
        )
    }
}

/// The 1-, 5- and 15-minute load averages now.
pub(super) fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_loadavg(&text)
}

/// Resident memory of process `pid`, in bytes.
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, "VmRSS").map(|kib| kib * 1024)
}

/// CPU time (user + system) process `pid` has used.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = stat_cpu_ticks(&text)?;
    (ticks_per_sec > 0).then(|| Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64))
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// A `Name:   1234 kB` line of `/proc/meminfo` or `/proc/<pid>/status`, in
/// KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key != name {
            return None;
        }
        let mut words = value.split_whitespace();
        let n = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then_some(n)
    })
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, in clock ticks.
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_model_and_kib_fields() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        let status = "Name:\tjetlock\nVmPeak:\t  123456 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        assert_eq!(kib_field(status, "VmRSS"), Some(20480));
        assert_eq!(kib_field(status, "Threads"), None, "no kB unit");
        assert_eq!(kib_field(status, "VmSwap"), None);
        let meminfo = "MemTotal:       24683520 kB\nMemFree:        18497536 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal"), Some(24_683_520));
    }

    #[test]
    fn reads_cpu_ticks_after_a_command_name_with_spaces_and_parens() {
        let stat =
            "4242 (jet lock) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(
            parse_loadavg("0.52 1.10 2.05 3/412 9999\n"),
            Some([0.52, 1.10, 2.05])
        );
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn this_process_has_resident_memory_and_cpu_time() {
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            assert!(rss_bytes(me).is_some_and(|b| b > 1 << 20));
            assert!(cpu_time(me).is_some());
            assert!(Machine::read().memory_mib.is_some_and(|m| m > 0));
        }
    }
}
