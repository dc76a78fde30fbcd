//! One disk's calendar: cron ticks in its time zone (with the DST rules described in the
//! parent module), its backup window, jitter, and the longest gap between ticks. Pure
//! functions of an instant; the planner asks them what is due.

use crate::config::{DiskConfig, Window};
use chrono::{DateTime, DurationRound, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::time::Duration;

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
