//! Tests of the schedule: the calendar (cron, time zones, DST, windows, jitter) and the plan
//! (coalescing, backoff, holds, windows pausing and resuming), through the module's public
//! API. One file because both share the helpers that build a disk's schedule.

use super::*;
use crate::config::DiskConfig;
use crate::cycle::policy::ErrorClass;
use chrono::TimeZone;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

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
