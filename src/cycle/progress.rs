//! Live progress of a running cycle, shared with whoever watches it (the daemon's `status`,
//! metrics and progress log lines). Written by the runner, read anywhere; no logic.

use super::machine::PhaseName;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// What a disk is doing, as `status` and the `snapback_cycle_phase` metric report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activity {
    /// No cycle runs.
    Idle,
    /// A cycle was started and has not reached its first action yet.
    Starting,
    Phase(PhaseName),
}

impl Activity {
    /// Every activity a running daemon reports (a finished cycle is idle again).
    pub const ALL: [Activity; 8] = [
        Activity::Idle,
        Activity::Starting,
        Activity::Phase(PhaseName::Snapshot),
        Activity::Phase(PhaseName::Diff),
        Activity::Phase(PhaseName::Apply),
        Activity::Phase(PhaseName::Copy),
        Activity::Phase(PhaseName::BackupSnapshot),
        Activity::Phase(PhaseName::Prune),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Starting => "starting",
            Activity::Phase(p) => p.as_str(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<Option<PhaseName>>,
    /// Apply: the checkpoint offset reached (bytes of the disk below it are done).
    done: AtomicU64,
    /// Apply: the source snapshot's size.
    total: AtomicU64,
    /// When apply started in this process, and the offset it started from (for the rate).
    apply_start: Mutex<Option<(Instant, u64)>>,
}

/// A consistent-enough reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressView {
    pub phase: Activity,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second since apply started in this process.
    pub rate: Option<f64>,
    pub eta_seconds: Option<f64>,
}

impl Progress {
    pub fn set_phase(&self, phase: PhaseName) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Some(phase);
        }
    }

    pub fn start_apply(&self, from: u64, total: u64) {
        self.total.store(total, Relaxed);
        self.done.store(from, Relaxed);
        if let Ok(mut s) = self.apply_start.lock() {
            *s = Some((Instant::now(), from));
        }
    }

    pub fn set_done(&self, upto: u64) {
        self.done.store(upto, Relaxed);
    }

    pub fn view(&self) -> ProgressView {
        let phase = self.phase.lock().ok().and_then(|p| *p);
        let (done, total) = (self.done.load(Relaxed), self.total.load(Relaxed));
        let start = self.apply_start.lock().ok().and_then(|s| *s);
        let rate = start.and_then(|(at, from)| {
            let secs = at.elapsed().as_secs_f64();
            (secs > 0.5).then(|| done.saturating_sub(from) as f64 / secs)
        });
        let eta_seconds = rate
            .filter(|r| *r > 0.0)
            .map(|r| total.saturating_sub(done) as f64 / r);
        ProgressView {
            phase: phase.map_or(Activity::Starting, Activity::Phase),
            bytes_done: done,
            bytes_total: total,
            rate,
            eta_seconds,
        }
    }
}
