//! The per-disk plan: what is due at an instant (a tick, a retry, a resume), what a tick does
//! while a cycle runs or outside the window or during a hold, and how a cycle's end (its
//! error class) moves the next retry. Pure: the supervisor passes `now` in.

use super::backoff::{operator_retry_delay, retry_delay, OPERATOR_RETRY_MAX};
use super::calendar::DiskSchedule;
use crate::cycle::policy::ErrorClass;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// Why a cycle is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The cron schedule fired.
    Tick,
    /// A failed cycle is tried again.
    Retry,
    /// An unfinished cycle is continued (after a restart, or in the next window).
    Resume,
    /// Asked for through the control socket; ignores the window.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Tick => "schedule",
            Reason::Retry => "retry",
            Reason::Resume => "resume",
            Reason::Manual => "manual",
        }
    }
}

/// What the supervisor should do for a disk at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nothing is due.
    Idle,
    /// Start (or resume) a cycle.
    Start(Reason),
    /// Something was due but the disk's cycle is running: merged into it, not queued.
    Coalesced(Reason),
    /// A tick fired outside the window and is skipped (a retry or resume is postponed to
    /// the window's next opening instead).
    OutsideWindow(Reason),
    /// A tick fired while the backoff after a failure that needs an operator (or that named
    /// a wait) holds the disk: skipped; the planned retry comes at the hold's end.
    Held { until: DateTime<Utc> },
}

/// How a cycle ended, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Ok,
    /// Failed; the error's class sets the backoff.
    Failed(ErrorClass),
    /// Paused at a checkpoint because the window closed: resume in the next window.
    WindowClosed,
    /// Paused because the daemon stops or the disk was removed: nothing to plan.
    Stopped,
}

/// The per-disk scheduling state. Pure: the supervisor calls [`Planner::poll`] at (or after)
/// [`Planner::due`] and [`Planner::finished`] when a cycle ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planner {
    /// The next cron tick (unjittered).
    next_tick: Option<DateTime<Utc>>,
    /// When that tick fires (jittered).
    fire_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    resume_at: Option<DateTime<Utc>>,
    /// Ticks before this instant are skipped: the backoff after a failure that needs an
    /// operator, or that named its wait, is not cut short by the schedule.
    hold_until: Option<DateTime<Utc>>,
    /// Consecutive failed cycles (for `status`; only a success resets it).
    failures: u32,
    /// Failures since the backoff last started afresh (a success, a manual backup, SIGHUP):
    /// what the retry delay grows with.
    backoff_step: u32,
    /// The last failure needs an operator: alerted until a cycle ends otherwise.
    needs_operator: bool,
}

impl Planner {
    /// A disk's plan from `now`. `open_cycle`: the state database holds an unfinished cycle
    /// for it, which is resumed at once (or when the window opens).
    pub fn new(s: &DiskSchedule, now: DateTime<Utc>, open_cycle: bool, jitter: f64) -> Planner {
        let next_tick = s.next_tick(now);
        Planner {
            next_tick,
            fire_at: next_tick.map(|t| s.jittered(t, jitter)),
            retry_at: None,
            resume_at: open_cycle.then(|| s.next_window_open(now)),
            hold_until: None,
            failures: 0,
            backoff_step: 0,
            needs_operator: false,
        }
    }

    /// The earliest instant something is due for this disk (a held tick is not: the retry
    /// at the hold's end is).
    pub fn due(&self) -> Option<DateTime<Utc>> {
        let tick = self
            .fire_at
            .filter(|t| self.hold_until.is_none_or(|until| *t >= until));
        [tick, self.retry_at, self.resume_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next cron tick, for `status`.
    pub fn next_tick(&self) -> Option<DateTime<Utc>> {
        self.next_tick
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the last cycle failed in a way that needs an operator.
    pub fn needs_operator(&self) -> bool {
        self.needs_operator
    }

    /// Starts the backoff afresh: the operator acted (SIGHUP, a manual backup). Ticks are no
    /// longer held and the next failure waits the first delay again. `retry_now`: a disk
    /// whose last cycle failed is tried at `now` (SIGHUP; a manual backup is itself the try).
    pub fn afresh(&mut self, now: DateTime<Utc>, retry_now: bool) {
        self.backoff_step = 0;
        self.hold_until = None;
        if retry_now && self.failures > 0 {
            self.retry_at = Some(now);
        }
    }

    /// Consumes everything due at `now` and says what to do. Ticks missed while the process
    /// was asleep collapse into one; a tick while `running` is coalesced into that cycle.
    pub fn poll(
        &mut self,
        s: &DiskSchedule,
        now: DateTime<Utc>,
        running: bool,
        jitter: f64,
    ) -> Wake {
        let mut reason = None;
        let mut held = None;
        if self.fire_at.is_some_and(|t| t <= now) {
            self.next_tick = s.next_tick(now);
            self.fire_at = self.next_tick.map(|t| s.jittered(t, jitter));
            match self.hold_until.filter(|&until| now < until) {
                Some(until) => held = Some(until),
                None => reason = Some(Reason::Tick),
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.hold_until = None;
            reason = Some(Reason::Retry);
        }
        if self.resume_at.is_some_and(|t| t <= now) {
            self.resume_at = None;
            reason = Some(Reason::Resume);
        }
        let Some(reason) = reason else {
            return held.map_or(Wake::Idle, |until| Wake::Held { until });
        };
        if running {
            return Wake::Coalesced(reason);
        }
        if !s.in_window(now) {
            if reason != Reason::Tick {
                self.resume_at = Some(s.next_window_open(now));
            }
            return Wake::OutsideWindow(reason);
        }
        Wake::Start(reason)
    }

    /// Plans what follows a cycle that ended at `now`.
    pub fn finished(&mut self, s: &DiskSchedule, now: DateTime<Utc>, how: Finish) {
        match how {
            Finish::Ok => {
                self.failures = 0;
                self.backoff_step = 0;
                self.needs_operator = false;
                self.retry_at = None;
                self.resume_at = None;
                self.hold_until = None;
            }
            Finish::Failed(class) => {
                self.failures = self.failures.saturating_add(1);
                self.backoff_step = self.backoff_step.saturating_add(1);
                self.needs_operator = class.needs_operator();
                let after = |d: Duration| {
                    TimeDelta::from_std(d)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC)
                };
                let soon = retry_delay(self.backoff_step);
                let held = match class {
                    ErrorClass::Transient => None,
                    ErrorClass::NeedsOperator => {
                        Some(after(operator_retry_delay(self.backoff_step)))
                    }
                    // Never sooner than the backoff, never later than the operator cap: a
                    // wait named wrongly parks the disk for an hour at most.
                    ErrorClass::RetryAfter(wait) => {
                        Some(after(wait.min(OPERATOR_RETRY_MAX).max(soon)))
                    }
                };
                match held {
                    // The ticks until then are skipped; the retry is at the hold's end.
                    Some(at) => {
                        self.hold_until = Some(at);
                        self.retry_at = Some(at);
                    }
                    None => {
                        let at = after(soon);
                        self.hold_until = None;
                        // Retry only if it comes before the next tick; otherwise the tick is
                        // the retry.
                        self.retry_at = match self.fire_at {
                            Some(tick) if tick <= at => None,
                            _ => Some(at),
                        };
                    }
                }
            }
            Finish::WindowClosed => self.resume_at = Some(s.next_window_open(now)),
            Finish::Stopped => {}
        }
    }
}
