//! Runs: every cycle the supervisor starts gets a run id, and the run's result is kept under
//! it. A client that asked for a backup waits on *its* run, not on whatever the disk's
//! status shows next (an earlier cycle ending, a scheduled one starting).

use super::control::{Response, RunId, RunResult};
use crate::cycle::error::CycleError;
use crate::model::record::CycleRecord;
use std::collections::BTreeMap;

/// Ended runs remembered, oldest forgotten first: a client polls within a second of the end,
/// so this only bounds a daemon that runs for months.
const ENDED_KEPT: usize = 1024;

/// The daemon's runs, started and ended.
pub struct Runs {
    /// Drawn per daemon process: ids given before a restart are unknown to the next process.
    instance: String,
    next: u64,
    runs: BTreeMap<u64, Run>,
}

struct Run {
    disk: String,
    result: RunResult,
}

impl Default for Runs {
    fn default() -> Self {
        Runs {
            instance: format!("{:08x}", rand::random::<u32>()),
            next: 1,
            runs: BTreeMap::new(),
        }
    }
}

impl Runs {
    /// A new run of `disk`; its number (the supervisor's handle on the cycle).
    pub fn start(&mut self, disk: &str) -> u64 {
        let n = self.next;
        self.next += 1;
        self.runs.insert(
            n,
            Run {
                disk: disk.to_string(),
                result: RunResult::Running,
            },
        );
        n
    }

    /// Run `n` ended with `result`.
    pub fn end(&mut self, n: u64, result: RunResult) {
        if let Some(run) = self.runs.get_mut(&n) {
            run.result = result;
        }
        let ended = self
            .runs
            .values()
            .filter(|r| r.result != RunResult::Running)
            .count();
        if ended > ENDED_KEPT {
            let oldest = self
                .runs
                .iter()
                .find(|(_, r)| r.result != RunResult::Running)
                .map(|(n, _)| *n);
            if let Some(o) = oldest {
                self.runs.remove(&o);
            }
        }
    }

    /// The id clients know run `n` by.
    pub fn id(&self, n: u64) -> RunId {
        RunId(format!("{}-{n}", self.instance))
    }

    /// The answer to `Request::Run`.
    pub fn answer(&self, id: RunId) -> Response {
        let known =
            id.0.strip_prefix(&self.instance)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| self.runs.get(&n));
        match known {
            Some(run) => Response::Run {
                run: id,
                disk: run.disk.clone(),
                result: run.result.clone(),
            },
            None => Response::UnknownRun { run: id },
        }
    }
}

/// What a run that ended reports. `result` is `None` for a cycle stopped before it got a
/// concurrency slot; `stopped_because` says why a stopped cycle stopped.
pub fn result_of(
    result: Option<&Result<CycleRecord, CycleError>>,
    seconds: f64,
    cancelled: bool,
    stopped_because: &str,
) -> RunResult {
    let stopped = || RunResult::Stopped {
        reason: stopped_because.to_string(),
    };
    match result {
        None => stopped(),
        Some(Ok(rec)) => RunResult::Ok {
            restore_point: rec.phase.restore_point().map(|(b, _)| b.to_string()),
            seconds,
        },
        Some(Err(e)) if e.is_fenced() => RunResult::Fenced {
            error: e.to_string(),
        },
        Some(Err(e)) if e.is_owned_elsewhere() => RunResult::OwnedElsewhere {
            error: e.to_string(),
        },
        Some(Err(_)) if cancelled => stopped(),
        Some(Err(e)) => RunResult::Failed {
            error: e.to_string(),
            error_class: e.class().label().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_known_by_its_id_until_forgotten_and_never_by_another_process() {
        let mut runs = Runs::default();
        let a = runs.start("d1");
        let b = runs.start("d2");
        assert_ne!(runs.id(a), runs.id(b));
        assert!(matches!(
            runs.answer(runs.id(a)),
            Response::Run { result: RunResult::Running, ref disk, .. } if disk == "d1"
        ));
        let failed = RunResult::Failed {
            error: "boom".into(),
            error_class: "transient".into(),
        };
        runs.end(a, failed.clone());
        assert!(
            matches!(runs.answer(runs.id(a)), Response::Run { result, .. } if result == failed)
        );
        // Another daemon process's id, or nonsense: unknown.
        let restarted = Runs::default();
        assert!(matches!(
            restarted.answer(runs.id(a)),
            Response::UnknownRun { .. }
        ));
        assert!(matches!(
            runs.answer(RunId("nonsense".into())),
            Response::UnknownRun { .. }
        ));
        // Ended runs are forgotten oldest first; a running one never is.
        for _ in 0..ENDED_KEPT {
            let n = runs.start("d3");
            runs.end(n, RunResult::Stopped { reason: "x".into() });
        }
        assert!(matches!(
            runs.answer(runs.id(a)),
            Response::UnknownRun { .. }
        ));
        assert!(matches!(
            runs.answer(runs.id(b)),
            Response::Run {
                result: RunResult::Running,
                ..
            }
        ));
    }
}
