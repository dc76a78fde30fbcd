//! When a disk's next cycle is due: cron ticks in the disk's time zone, the backup window,
//! jitter, retries with backoff and resumption of paused cycles.
//!
//! The backoff follows the failed cycle's error class (`cycle::policy`): a failure that may
//! pass soon is retried soon ([`retry_delay`]); one that needs an operator is retried on a
//! slower schedule capped at an hour ([`operator_retry_delay`]) with the ticks in between
//! skipped; one whose error names a wait is retried after it. A manual backup or a SIGHUP
//! starts the backoff afresh ([`Planner::afresh`]).
//!
//! Everything here is pure: no clock is read and nothing sleeps. The instant `now` is always
//! passed in, so the supervisor runs it on the wall clock and the tests on a fake one.
//!
//! We evaluate cron expressions with `croner` directly rather than through
//! `tokio-cron-scheduler`: that crate owns its timers and reads the system clock itself, so a
//! window or a DST transition could only be tested by waiting for it, and its job model has
//! no room for our per-disk rules (coalescing, windows, retries, pause/resume). `croner`
//! gives us `next occurrence after T in zone Z` as a pure function, with the DST rules of the
//! Open Cron Pattern Specification: a fixed-time job (e.g. `30 2 * * *`) runs once on the
//! fall-back day (at the first 02:30) and once on the spring-forward day (at the first valid
//! minute after the gap), never twice and never zero times.

use crate::config::{DiskConfig, Window};
use crate::cycle::policy::ErrorClass;
use chrono::{DateTime, DurationRound, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::time::Duration;

/// First retry delay after a transient failure; each further failure doubles it.
pub const RETRY_BASE: Duration = Duration::from_secs(30);
/// Longest retry delay after transient failures: retried at least twice an hour.
pub const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// First retry after a failure that needs an operator: long enough not to hammer a refusing
/// service, short enough to notice a role assignment that was still propagating.
pub const OPERATOR_RETRY_BASE: Duration = Duration::from_secs(5 * 60);
/// Longest retry delay after failures that need an operator: a fix is noticed within the
/// hour even when nobody says so (SIGHUP, a manual backup).
pub const OPERATOR_RETRY_MAX: Duration = Duration::from_secs(60 * 60);
/// A window is searched minute by minute over this many minutes (two days and a DST hour):
/// any daily window opens and closes within it.
const WINDOW_SEARCH_MINUTES: i64 = 2 * 1440 + 60;
/// How far around a DST transition the tick search looks (no zone shifts by more).
const DST_LOOKAROUND: TimeDelta = TimeDelta::hours(2);
/// Upper bound on ticks walked in that search (a per-second schedule: 2 h = 7,200).
const MAX_DST_SCAN: usize = 100_000;
/// Ticks looked at for a schedule's longest gap: enough to cover two weekends of a
/// weekdays-only daily schedule.
const GAP_TICKS: usize = 16;

/// A disk's timing rules, parsed once.
#[derive(Debug, Clone)]
pub struct DiskSchedule {
    cron: Option<Cron>,
    tz: Tz,
    window: Option<Window>,
    jitter: Duration,
}

impl DiskSchedule {
    /// A disk's timing rules, from its config (parsed and checked when the config loaded).
    pub fn from_config(d: &DiskConfig) -> DiskSchedule {
        DiskSchedule {
            cron: d.schedule.as_ref().map(|s| s.cron().clone()),
            tz: d.tz,
            window: d.window,
            jitter: d.jitter.unwrap_or_default(),
        }
    }

    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// The first cron tick strictly after `after`, evaluated in the disk's zone; `None` for
    /// a disk without a schedule.
    ///
    /// Near a DST transition the search starts two hours earlier and walks croner's iterator:
    /// unlike a single `find_next_occurrence`, the iterator also yields the second instant
    /// of a repeated wall-clock time for interval jobs (an hourly job runs in both 02:00
    /// hours of a fall-back night, as elapsed time demands), while a fixed-time job still
    /// runs once. Elsewhere one lookup suffices.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::Offset;
        let cron = self.cron.as_ref()?;
        let offset = |t: DateTime<Utc>| t.with_timezone(&self.tz).offset().fix();
        let near_dst = offset(after - DST_LOOKAROUND) != offset(after)
            || offset(after + DST_LOOKAROUND) != offset(after);
        if !near_dst {
            let local = after.with_timezone(&self.tz);
            return cron
                .find_next_occurrence(&local, false)
                .ok()
                .map(|t| t.with_timezone(&Utc));
        }
        cron.clone()
            .iter_after((after - DST_LOOKAROUND).with_timezone(&self.tz))
            .take(MAX_DST_SCAN)
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after)
    }

    /// Whether a cycle may start at `t` (always, without a window).
    pub fn in_window(&self, t: DateTime<Utc>) -> bool {
        match self.window {
            None => true,
            Some(w) => {
                let local = t.with_timezone(&self.tz);
                w.contains((local.hour() * 60 + local.minute()) as u16)
            }
        }
    }

    /// When the window that contains `t` closes: the first minute boundary after `t` that is
    /// outside it. `None` without a window (nothing ever closes).
    pub fn window_close(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.window?;
        if !self.in_window(t) {
            return Some(t);
        }
        self.first_minute_after(t, |s, m| !s.in_window(m))
    }

    /// `t` if a cycle may start then, else the next minute boundary inside the window.
    pub fn next_window_open(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        if self.in_window(t) {
            return t;
        }
        self.first_minute_after(t, |s, m| s.in_window(m))
            .unwrap_or(t)
    }

    /// Steps over whole UTC minutes (so a DST jump of local time is just a jump of the
    /// minute-of-day we test, never a skipped or repeated instant).
    fn first_minute_after(
        &self,
        t: DateTime<Utc>,
        pred: impl Fn(&Self, DateTime<Utc>) -> bool,
    ) -> Option<DateTime<Utc>> {
        let minute = TimeDelta::minutes(1);
        let mut m = t.duration_trunc(minute).ok()? + minute;
        for _ in 0..WINDOW_SEARCH_MINUTES {
            if pred(self, m) {
                return Some(m);
            }
            m += minute;
        }
        None
    }

    /// The longest time between two of the next few ticks after `now`, plus the jitter: how
    /// long a healthy disk may go between cycles (the "no success for 2× the schedule"
    /// alert compares against it). `None` for a disk without a schedule.
    pub fn longest_gap(&self, now: DateTime<Utc>) -> Option<Duration> {
        let mut prev = self.next_tick(now)?;
        let mut longest = TimeDelta::zero();
        for _ in 0..GAP_TICKS {
            let Some(next) = self.next_tick(prev) else {
                break;
            };
            longest = longest.max(next - prev);
            prev = next;
        }
        Some(longest.to_std().unwrap_or_default() + self.jitter)
    }

    /// The jittered start for a tick: `tick + fraction * jitter`, `fraction` in `[0, 1)`.
    pub fn jittered(&self, tick: DateTime<Utc>, fraction: f64) -> DateTime<Utc> {
        let ms = (self.jitter.as_millis() as f64 * fraction.clamp(0.0, 1.0)) as i64;
        tick + TimeDelta::milliseconds(ms)
    }
}

/// Delay before the `failures`-th retry (1-based) after transient failures:
/// `RETRY_BASE * 2^(failures-1)`, capped at `RETRY_MAX`.
pub fn retry_delay(failures: u32) -> Duration {
    doubling(RETRY_BASE, RETRY_MAX, failures)
}

/// Delay before the `failures`-th retry (1-based) after failures that need an operator:
/// `OPERATOR_RETRY_BASE * 2^(failures-1)`, capped at `OPERATOR_RETRY_MAX`.
pub fn operator_retry_delay(failures: u32) -> Duration {
    doubling(OPERATOR_RETRY_BASE, OPERATOR_RETRY_MAX, failures)
}

fn doubling(base: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(max)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn disk(schedule: Option<&str>, tz: &str, window: Option<&str>) -> DiskConfig {
        let text = format!(
            "[accounts.a]\nendpoint = \"https://acct.blob.core.windows.net\"\nshared_key_env = \"K\"\n\
             [[disk]]\nname = \"d\"\nsource = \"a/vhds/src\"\nbackup = \"a/vhds/bak\"\n{}{}tz = \"{tz}\"\n",
            schedule.map(|s| format!("schedule = \"{s}\"\n")).unwrap_or_default(),
            window.map(|w| format!("window = \"{w}\"\n")).unwrap_or_default(),
        );
        crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
            .expect("valid test config")
            .disks
            .remove(0)
    }

    fn sched(schedule: Option<&str>, tz: &str, window: Option<&str>) -> DiskSchedule {
        DiskSchedule::from_config(&disk(schedule, tz, window))
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn longest_gap_covers_weekends_and_jitter() {
        let now = utc(2026, 11, 30, 10, 0, 0); // a Monday
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(
            sched(Some("0 */12 * * *"), "UTC", None).longest_gap(now),
            Some(h(12))
        );
        // Weekdays at 02:00: Friday to Monday is the longest gap.
        assert_eq!(
            sched(Some("0 2 * * 1-5"), "UTC", None).longest_gap(now),
            Some(h(72))
        );
        assert_eq!(sched(None, "UTC", None).longest_gap(now), None);
        let mut d = disk(Some("0 * * * *"), "UTC", None);
        d.jitter = Some(Duration::from_secs(600));
        let s = DiskSchedule::from_config(&d);
        assert_eq!(s.longest_gap(now), Some(h(1) + Duration::from_secs(600)));
    }

    /// Every tick in `(from, to)`, by repeated `next_tick` (what the planner does).
    fn ticks(s: &DiskSchedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(n) = s.next_tick(t) {
            if n >= to {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    #[test]
    fn five_and_six_field_expressions() {
        let s = sched(Some("*/2 * * * * *"), "UTC", None);
        assert_eq!(
            s.next_tick(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 0, 0, 2))
        );
        let s = sched(Some("0 */12 * * *"), "UTC", None);
        assert_eq!(
            s.next_tick(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 12, 0, 0))
        );
        assert_eq!(
            sched(None, "UTC", None).next_tick(utc(2026, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn ticks_follow_the_disk_time_zone() {
        // 01:00 in Paris is 00:00 UTC in winter, 23:00 UTC the day before in summer.
        let s = sched(Some("0 1 * * *"), "Europe/Paris", None);
        assert_eq!(
            s.next_tick(utc(2026, 1, 10, 12, 0, 0)),
            Some(utc(2026, 1, 11, 0, 0, 0))
        );
        assert_eq!(
            s.next_tick(utc(2026, 7, 10, 12, 0, 0)),
            Some(utc(2026, 7, 10, 23, 0, 0))
        );
    }

    #[test]
    fn daily_job_runs_exactly_once_on_both_dst_transition_days() {
        // Europe/Paris: 2026-03-29 02:00 -> 03:00 (gap), 2026-10-25 03:00 -> 02:00 (overlap).
        let s = sched(Some("30 2 * * *"), "Europe/Paris", None);
        let spring = ticks(&s, utc(2026, 3, 28, 12, 0, 0), utc(2026, 3, 30, 12, 0, 0));
        assert_eq!(spring.len(), 2, "{spring:?}");
        // 02:30 does not exist on 2026-03-29: it runs at 03:00 CEST (01:00 UTC), once.
        assert_eq!(spring[0], utc(2026, 3, 29, 1, 0, 0));
        assert_eq!(spring[1], utc(2026, 3, 30, 0, 30, 0));
        let autumn = ticks(&s, utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 26, 12, 0, 0));
        assert_eq!(autumn.len(), 2, "{autumn:?}");
        // The first 02:30 of the repeated hour (CEST, UTC+2), then 02:30 CET the next day.
        assert_eq!(autumn[0], utc(2026, 10, 25, 0, 30, 0));
        assert_eq!(autumn[1], utc(2026, 10, 26, 1, 30, 0));
    }

    #[test]
    fn hourly_job_follows_elapsed_hours_across_dst() {
        let s = sched(Some("0 * * * *"), "Europe/Paris", None);
        // Around each transition, ticks stay exactly one real hour apart: none lost, none
        // doubled (12:00 UTC is excluded, so 23 ticks in the 24 hours after it; on the
        // fall-back night both 02:00 hours get their tick).
        for day in [(3, 28), (10, 24)] {
            let from = utc(2026, day.0, day.1, 12, 0, 0);
            let t = ticks(&s, from, from + TimeDelta::hours(24));
            assert_eq!(t.len(), 23, "{t:?}");
            assert!(
                t.windows(2).all(|w| w[1] - w[0] == TimeDelta::hours(1)),
                "{t:?}"
            );
        }
    }

    #[test]
    fn window_wrapping_midnight() {
        let s = sched(None, "UTC", Some("22:00-06:00"));
        assert!(s.in_window(utc(2026, 1, 1, 23, 0, 0)));
        assert!(s.in_window(utc(2026, 1, 1, 5, 59, 59)));
        assert!(!s.in_window(utc(2026, 1, 1, 6, 0, 0)));
        assert!(!s.in_window(utc(2026, 1, 1, 12, 0, 0)));
        assert_eq!(
            s.window_close(utc(2026, 1, 1, 23, 10, 5)),
            Some(utc(2026, 1, 2, 6, 0, 0))
        );
        assert_eq!(
            s.next_window_open(utc(2026, 1, 2, 6, 0, 0)),
            utc(2026, 1, 2, 22, 0, 0)
        );
        assert_eq!(
            s.next_window_open(utc(2026, 1, 2, 23, 0, 0)),
            utc(2026, 1, 2, 23, 0, 0)
        );
        assert_eq!(
            sched(None, "UTC", None).window_close(utc(2026, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn window_in_local_time_across_dst() {
        // 01:00-03:00 Paris on spring-forward night lasts one real hour (02:00-03:00 is skipped).
        let s = sched(None, "Europe/Paris", Some("01:00-03:00"));
        let open = s.next_window_open(utc(2026, 3, 28, 12, 0, 0));
        assert_eq!(open, utc(2026, 3, 29, 0, 0, 0));
        assert_eq!(s.window_close(open), Some(utc(2026, 3, 29, 1, 0, 0)));
    }

    fn run(p: &mut Planner, s: &DiskSchedule, now: DateTime<Utc>, running: bool) -> Wake {
        p.poll(s, now, running, 0.0)
    }

    #[test]
    fn ticks_start_cycles_and_are_coalesced_while_running() {
        let s = sched(Some("0 * * * *"), "UTC", None);
        let t0 = utc(2026, 1, 1, 0, 30, 0);
        let mut p = Planner::new(&s, t0, false, 0.0);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 1, 0, 0)));
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 0, 59, 59), false),
            Wake::Idle
        );
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 1, 0, 0), false),
            Wake::Start(Reason::Tick)
        );
        // The 02:00 tick while the 01:00 cycle still runs is merged, not queued.
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 2, 0, 0), true),
            Wake::Coalesced(Reason::Tick)
        );
        p.finished(&s, utc(2026, 1, 1, 2, 10, 0), Finish::Ok);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 3, 0, 0)));
        // A process asleep for 5 hours runs one cycle, not five.
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 8, 0, 30), false),
            Wake::Start(Reason::Tick)
        );
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 9, 0, 0)));
    }

    #[test]
    fn jitter_delays_the_start_but_not_the_next_tick() {
        let mut d = disk(Some("0 * * * *"), "UTC", None);
        d.jitter = Some(Duration::from_secs(600));
        let s = DiskSchedule::from_config(&d);
        let mut p = Planner::new(&s, utc(2026, 1, 1, 0, 30, 0), false, 0.5);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 1, 5, 0)));
        assert_eq!(
            p.poll(&s, utc(2026, 1, 1, 1, 5, 0), false, 0.25),
            Wake::Start(Reason::Tick)
        );
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 2, 2, 30)));
    }

    #[test]
    fn failures_retry_with_backoff_before_the_next_tick() {
        assert_eq!(retry_delay(1), Duration::from_secs(30));
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(4), Duration::from_secs(240));
        assert_eq!(retry_delay(50), RETRY_MAX);
        let s = sched(Some("0 */6 * * *"), "UTC", None);
        let mut p = Planner::new(&s, utc(2026, 1, 1, 0, 30, 0), false, 0.0);
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 6, 0, 0), false),
            Wake::Start(Reason::Tick)
        );
        let mut now = utc(2026, 1, 1, 6, 1, 0);
        let mut delays = Vec::new();
        for _ in 0..4 {
            p.finished(&s, now, Finish::Failed(ErrorClass::Transient));
            let due = p.due().unwrap();
            delays.push((due - now).num_seconds());
            now = due;
            assert_eq!(run(&mut p, &s, now, false), Wake::Start(Reason::Retry));
        }
        assert_eq!(delays, vec![30, 60, 120, 240]);
        assert_eq!(p.failures(), 4);
        p.finished(&s, now, Finish::Ok);
        assert_eq!(p.failures(), 0);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 12, 0, 0)));
        // A retry that would come after the next tick is left to the tick.
        let mut p = Planner::new(&s, utc(2026, 1, 1, 11, 59, 50), false, 0.0);
        p.finished(
            &s,
            utc(2026, 1, 1, 11, 59, 50),
            Finish::Failed(ErrorClass::Transient),
        );
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 12, 0, 0)));
    }

    #[test]
    fn a_retry_waits_for_the_time_the_error_names() {
        // A tick every 2 minutes: the named wait holds them off.
        let s = sched(Some("*/2 * * * *"), "UTC", None);
        let now = utc(2026, 11, 30, 10, 0, 30);
        let mut p = Planner::new(&s, now, false, 0.0);
        let wait = |m: u64| Finish::Failed(ErrorClass::RetryAfter(Duration::from_secs(m * 60)));
        p.finished(&s, now, wait(10));
        let until = now + TimeDelta::minutes(10);
        assert_eq!(p.due(), Some(until), "the ticks in between are held");
        assert_eq!(
            run(&mut p, &s, utc(2026, 11, 30, 10, 2, 0), false),
            Wake::Held { until }
        );
        assert_eq!(run(&mut p, &s, until, false), Wake::Start(Reason::Retry));
        // Never earlier than the backoff, never later than the operator cap.
        p.finished(&s, until, wait(0));
        assert_eq!(p.due(), Some(until + TimeDelta::minutes(1)), "2nd: 60 s");
        p.finished(&s, until, wait(24 * 60));
        assert_eq!(p.due(), Some(until + TimeDelta::hours(1)));
    }

    #[test]
    fn a_failure_that_needs_an_operator_backs_off_to_an_hour_and_skips_ticks() {
        assert_eq!(operator_retry_delay(1), Duration::from_secs(300));
        assert_eq!(operator_retry_delay(2), Duration::from_secs(600));
        assert_eq!(operator_retry_delay(4), Duration::from_secs(2400));
        assert_eq!(operator_retry_delay(5), OPERATOR_RETRY_MAX);
        assert_eq!(operator_retry_delay(50), OPERATOR_RETRY_MAX);
        // Every minute: without the hold each tick would be a retry.
        let s = sched(Some("* * * * *"), "UTC", None);
        let mut now = utc(2026, 1, 1, 0, 0, 30);
        let mut p = Planner::new(&s, now, false, 0.0);
        let mut starts = Vec::new();
        for _ in 0..6 {
            p.finished(&s, now, Finish::Failed(ErrorClass::NeedsOperator));
            assert!(p.needs_operator());
            loop {
                now = p.due().unwrap();
                match run(&mut p, &s, now, false) {
                    Wake::Held { .. } => continue,
                    Wake::Start(r) => {
                        starts.push(((now - utc(2026, 1, 1, 0, 0, 0)).num_minutes(), r));
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let minutes: Vec<i64> = starts.iter().map(|s| s.0).collect();
        // 5, 10, 20, 40 minutes apart, then the one-hour cap.
        assert_eq!(minutes, vec![5, 15, 35, 75, 135, 195]);
        assert!(starts.iter().all(|s| s.1 == Reason::Retry));
        assert_eq!(p.failures(), 6);

        // SIGHUP: afresh, tried now, and a further failure waits the first delay again.
        p.finished(&s, now, Finish::Failed(ErrorClass::NeedsOperator));
        assert_eq!(
            p.due(),
            Some(now + TimeDelta::hours(1)),
            "capped; ticks held"
        );
        p.afresh(now, true);
        assert_eq!(p.due(), Some(now));
        assert_eq!(run(&mut p, &s, now, false), Wake::Start(Reason::Retry));
        p.finished(&s, now, Finish::Failed(ErrorClass::NeedsOperator));
        assert_eq!(
            p.poll(&s, now + TimeDelta::minutes(1), false, 0.0),
            Wake::Held {
                until: now + TimeDelta::minutes(5)
            }
        );
        assert_eq!(p.failures(), 8, "status still counts every failure");

        // A manual backup starts afresh without a retry of its own; a transient failure
        // after it is retried soon and no longer alerts.
        p.afresh(now, false);
        assert_eq!(p.due(), Some(now + TimeDelta::seconds(90)), "the next tick");
        p.finished(&s, now, Finish::Failed(ErrorClass::Transient));
        assert!(!p.needs_operator());
        assert_eq!(p.due(), Some(now + TimeDelta::seconds(30)));
        p.finished(&s, now, Finish::Ok);
        assert_eq!(p.failures(), 0);
    }

    #[test]
    fn window_closing_pauses_and_the_next_window_resumes() {
        // Hourly schedule, window 22:00-06:00.
        let s = sched(Some("0 * * * *"), "UTC", Some("22:00-06:00"));
        let mut p = Planner::new(&s, utc(2026, 1, 1, 4, 30, 0), false, 0.0);
        let start = utc(2026, 1, 1, 5, 0, 0);
        assert_eq!(run(&mut p, &s, start, false), Wake::Start(Reason::Tick));
        // The supervisor cancels the cycle when the window closes...
        assert_eq!(s.window_close(start), Some(utc(2026, 1, 1, 6, 0, 0)));
        // ...and the 06:00 tick (outside the window) is coalesced into the running cycle.
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 6, 0, 0), true),
            Wake::Coalesced(Reason::Tick)
        );
        p.finished(&s, utc(2026, 1, 1, 6, 0, 1), Finish::WindowClosed);
        // Daytime ticks are skipped; the paused cycle resumes when the window opens.
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 7, 0, 0), false),
            Wake::OutsideWindow(Reason::Tick)
        );
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 8, 0, 0)));
        let mut now = utc(2026, 1, 1, 8, 0, 0);
        while now < utc(2026, 1, 1, 22, 0, 0) {
            assert_eq!(
                run(&mut p, &s, now, false),
                Wake::OutsideWindow(Reason::Tick)
            );
            now = p.due().unwrap();
        }
        assert_eq!(now, utc(2026, 1, 1, 22, 0, 0));
        assert_eq!(run(&mut p, &s, now, false), Wake::Start(Reason::Resume));
        p.finished(&s, utc(2026, 1, 1, 22, 20, 0), Finish::Ok);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 23, 0, 0)));
    }

    #[test]
    fn open_cycle_at_startup_resumes_now_or_when_the_window_opens() {
        let s = sched(None, "UTC", Some("22:00-06:00"));
        let p = Planner::new(&s, utc(2026, 1, 1, 23, 0, 0), true, 0.0);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 23, 0, 0)));
        let p = Planner::new(&s, utc(2026, 1, 1, 12, 0, 0), true, 0.0);
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 22, 0, 0)));
        let p = Planner::new(&s, utc(2026, 1, 1, 12, 0, 0), false, 0.0);
        assert_eq!(p.due(), None);
    }

    #[test]
    fn retry_outside_the_window_waits_for_it() {
        let s = sched(Some("0 23 * * *"), "UTC", Some("22:00-06:00"));
        let mut p = Planner::new(&s, utc(2026, 1, 1, 5, 59, 0), false, 0.0);
        p.finished(
            &s,
            utc(2026, 1, 1, 5, 59, 50),
            Finish::Failed(ErrorClass::Transient),
        );
        let due = p.due().unwrap();
        assert_eq!(due, utc(2026, 1, 1, 6, 0, 20));
        assert_eq!(
            run(&mut p, &s, due, false),
            Wake::OutsideWindow(Reason::Retry)
        );
        assert_eq!(p.due(), Some(utc(2026, 1, 1, 22, 0, 0)));
        assert_eq!(
            run(&mut p, &s, utc(2026, 1, 1, 22, 0, 0), false),
            Wake::Start(Reason::Resume)
        );
    }
}
