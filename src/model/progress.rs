//! Live progress of long work (a cycle's seed copy and apply, a restore's copies, a verify),
//! shared with whoever watches it: the daemon's `status`, metrics and progress log lines, and
//! the progress bar on a terminal (`crate::service::terminal`). Written by the worker, read anywhere;
//! no logic.

use crate::model::record::PhaseName;
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
    /// What the byte counts are about (`apply`, `seed copy`, `verify`, ...).
    work: Mutex<&'static str>,
    /// Bytes of the work done (for apply: the checkpoint offset reached).
    done: AtomicU64,
    /// Bytes of the work in all (for apply: the source snapshot's size).
    total: AtomicU64,
    /// When the work started in this process, and the count it started from (for the rate).
    work_start: Mutex<Option<(Instant, u64)>>,
}

/// A consistent-enough reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressView {
    pub phase: Activity,
    /// What `bytes_done` and `bytes_total` count (empty before any byte-counted work).
    pub work: &'static str,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second since the work started in this process.
    pub rate: Option<f64>,
    pub eta_seconds: Option<f64>,
}

impl Progress {
    pub fn set_phase(&self, phase: PhaseName) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Some(phase);
        }
    }

    /// Starts byte-counted work: `from` of `total` bytes are already done.
    pub fn start(&self, work: &'static str, from: u64, total: u64) {
        if let Ok(mut w) = self.work.lock() {
            *w = work;
        }
        self.total.store(total, Relaxed);
        self.done.store(from, Relaxed);
        if let Ok(mut s) = self.work_start.lock() {
            *s = Some((Instant::now(), from));
        }
    }

    pub fn set_done(&self, upto: u64) {
        self.done.store(upto, Relaxed);
    }

    /// The work is complete (a copy reported success: no count comes with it).
    pub fn complete(&self) {
        self.done.store(self.total.load(Relaxed), Relaxed);
    }

    pub fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Relaxed);
    }

    /// A polled count (e.g. a Copy Blob's `x-ms-copy-progress`): starts `work` the first time
    /// it is reported, then moves its count.
    pub fn report(&self, work: &'static str, done: u64, total: u64) {
        let same = self.work.lock().map(|w| *w == work).unwrap_or(false);
        if same && self.total.load(Relaxed) == total {
            self.set_done(done);
        } else {
            self.start(work, done, total);
        }
    }

    pub fn view(&self) -> ProgressView {
        let phase = self.phase.lock().ok().and_then(|p| *p);
        let work = self.work.lock().map(|w| *w).unwrap_or("");
        let (done, total) = (self.done.load(Relaxed), self.total.load(Relaxed));
        let start = self.work_start.lock().ok().and_then(|s| *s);
        let rate = start.and_then(|(at, from)| {
            let secs = at.elapsed().as_secs_f64();
            (secs > 0.5).then(|| done.saturating_sub(from) as f64 / secs)
        });
        let eta_seconds = rate
            .filter(|r| *r > 0.0)
            .map(|r| total.saturating_sub(done) as f64 / r);
        ProgressView {
            phase: phase.map_or(Activity::Starting, Activity::Phase),
            work,
            bytes_done: done,
            bytes_total: total,
            rate,
            eta_seconds,
        }
    }
}
