//! How long a run has left, on every progress line: each workload's time
//! planned from its settings (its windows, or its pairs at the last full
//! run's pace on the 2-core development machine), counted down as the
//! workloads start. An estimate: a loaded machine runs late, and the line
//! then says so.

use std::sync::Mutex;
use std::time::{Duration, Instant};

static PLAN: Mutex<Option<Plan>> = Mutex::new(None);

struct Plan {
    started: Instant,
    /// Workloads in the order they run, with their planned time.
    stages: Vec<(&'static str, Duration)>,
    /// The stage running, and since when.
    current: Option<(usize, Instant)>,
}

/// Sets the plan: the stages in run order.
pub(super) fn plan(stages: Vec<(&'static str, Duration)>) {
    *PLAN.lock().unwrap_or_else(|e| e.into_inner()) = Some(Plan {
        started: Instant::now(),
        stages,
        current: None,
    });
}

/// Marks the next stage named `name` as running.
pub(super) fn begin(name: &'static str) {
    let mut plan = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = plan.as_mut() {
        p.begin(name, Instant::now());
    }
}

/// ` [1:05 in, about 3:20 left]`, or nothing without a plan.
pub(super) fn suffix() -> String {
    let plan = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    plan.as_ref()
        .map_or_else(String::new, |p| p.suffix(Instant::now()))
}

impl Plan {
    fn begin(&mut self, name: &'static str, now: Instant) {
        let from = self.current.map_or(0, |(i, _)| i + 1);
        if let Some(i) = (from..self.stages.len()).find(|&i| self.stages[i].0 == name) {
            self.current = Some((i, now));
        }
    }

    fn suffix(&self, now: Instant) -> String {
        let p = self;
        let (done_before, current) = match p.current {
            Some((i, since)) => (i, Some((p.stages[i].1, now.duration_since(since)))),
            None => (0, None),
        };
        let ahead: Duration = p.stages[done_before..]
            .iter()
            .skip(usize::from(current.is_some()))
            .map(|s| s.1)
            .sum();
        let (this_left, late) = match current {
            Some((planned, spent)) => (planned.saturating_sub(spent), spent > planned),
            None => (Duration::ZERO, false),
        };
        let left = ahead + this_left;
        let late = if late { ", this step running late" } else { "" };
        format!(
            " [{} in, about {} left{late}]",
            clock(now.duration_since(p.started)),
            clock(left)
        )
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_planned_stages_as_they_begin() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut p = Plan {
            started: t0,
            stages: vec![
                ("latency", Duration::from_secs(60)),
                ("throughput", Duration::from_secs(30)),
                ("latency", Duration::from_secs(90)),
            ],
            current: None,
        };
        assert_eq!(p.suffix(at(0)), " [0:00 in, about 3:00 left]");
        p.begin("latency", at(0));
        assert_eq!(p.suffix(at(20)), " [0:20 in, about 2:40 left]");
        p.begin("throughput", at(70));
        assert_eq!(
            p.suffix(at(110)),
            " [1:50 in, about 1:30 left, this step running late]"
        );
        p.begin("latency", at(110));
        assert_eq!(p.suffix(at(110)), " [1:50 in, about 1:30 left]");
        p.begin("nothing planned", at(120));
        assert_eq!(p.suffix(at(200)), " [3:20 in, about 0:00 left]");
        assert_eq!(clock(Duration::from_secs(3725)), "62:05");
    }
}
