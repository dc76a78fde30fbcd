//! A disk's schedule against Azure's snapshot limits: a premium account's one snapshot per
//! blob every 10 minutes, a managed disk's 7 per 5 minutes and 500 in all. Pure functions of
//! the schedule and a count, so they are tested without the service; the checks turn their
//! warnings into notes on passing rows.

use crate::config::Schedule;
use chrono::{DateTime, TimeDelta, Utc};

/// Premium page-blob accounts take one snapshot per blob every 10 minutes
/// (409 `SnaphotOperationRateExceeded`).
const PREMIUM_SNAPSHOT_INTERVAL: TimeDelta = TimeDelta::minutes(10);
/// Firings of a schedule scanned for its shortest gap (a day of minutes and more).
const SCHEDULE_SCAN: usize = 2000;

/// The warning for a disk whose schedule fires more often than every 10 minutes on a premium
/// account (SKU `Premium_*`), naming the disk, the account and the limit; None otherwise.
pub fn premium_schedule_warning(
    disk: &str,
    account: &str,
    sku: &str,
    schedule: Option<&Schedule>,
    from: DateTime<Utc>,
) -> Option<String> {
    if !sku.starts_with("Premium") {
        return None;
    }
    let schedule = schedule?;
    let gap = shortest_gap(schedule, from)?;
    (gap < PREMIUM_SNAPSHOT_INTERVAL).then(|| {
        format!(
            "warning: disk {disk}: schedule \"{}\" fires {} s apart at times, but account \
             '{account}' is {sku}, which allows one snapshot per blob every 10 minutes: \
             cycles closer than that fail with SnaphotOperationRateExceeded and wait 10 minutes",
            schedule.expr(),
            gap.num_seconds(),
        )
    })
}

/// The note on a managed disk's limits row: a warning when its schedule fires more than 7
/// times in some 5 minutes, or when its snapshot resource group lists 450 or more of its
/// snapshots (`listed`: the count, or why it is unknown).
pub fn managed_limits_note(
    disk: &str,
    schedule: Option<&Schedule>,
    listed: Result<usize, String>,
    from: DateTime<Utc>,
) -> String {
    use crate::source::managed_disk::limits::count_warning;
    use crate::source::snapshot_limits::{RATE_MAX, RATE_WINDOW};
    let mut notes = Vec::new();
    if let Some(schedule) = schedule {
        let most = most_firings_within(schedule, from, RATE_WINDOW);
        if most > RATE_MAX {
            notes.push(format!(
                "warning: disk {disk}: schedule \"{}\" fires {most} times within 5 minutes at \
                 times, but Azure allows {RATE_MAX} incremental snapshots per disk every 5 \
                 minutes: the cycles past the 7th are refused and wait for the window to pass",
                schedule.expr()
            ));
        }
    }
    match listed {
        Ok(n) => notes.extend(count_warning(disk, n)),
        Err(e) => notes.push(format!(
            "the disk's snapshots could not be listed ({e}): the 500-snapshot limit was not checked"
        )),
    }
    // Only this entry's schedule is known here.
    notes.push(
        "the 7-per-5-minutes limit counts every snapshot of the disk: other installations, \
         replicas' configs and other tools (Azure Backup, scripts) count too, and their \
         schedules cannot be seen from here"
            .into(),
    );
    notes.join("; ")
}

/// The most firings of `schedule` after `from` within any span shorter than `window`.
fn most_firings_within(
    schedule: &Schedule,
    from: DateTime<Utc>,
    window: std::time::Duration,
) -> usize {
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    let times: Vec<DateTime<Utc>> = schedule
        .cron()
        .iter_after(from)
        .take(SCHEDULE_SCAN)
        .collect();
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The shortest time between two consecutive firings of `schedule` after `from`.
fn shortest_gap(schedule: &Schedule, from: DateTime<Utc>) -> Option<TimeDelta> {
    let times: Vec<DateTime<Utc>> = schedule
        .cron()
        .iter_after(from)
        .take(SCHEDULE_SCAN)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_more_frequent_than_10_minutes_on_premium_is_a_warning() {
        let from = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let warn = |sku: &str, cron: &str| {
            let schedule = Schedule::parse(cron).unwrap();
            premium_schedule_warning("d1", "prem", sku, Some(&schedule), from)
        };
        let w = warn("Premium_LRS", "*/5 * * * *").expect("every 5 minutes on premium");
        assert!(
            w.contains("disk d1")
                && w.contains("'prem'")
                && w.contains("Premium_LRS")
                && w.contains("every 10 minutes")
                && w.contains("300 s"),
            "{w}"
        );
        // Only at times: every 5 minutes within one hour of the day still warns.
        assert!(warn("Premium_ZRS", "0,5 3 * * *").is_some());
        assert!(
            warn("Premium_LRS", "*/10 * * * *").is_none(),
            "10 minutes is kept"
        );
        assert!(warn("Premium_LRS", "0 */6 * * *").is_none());
        assert!(
            warn("Standard_RAGRS", "* * * * *").is_none(),
            "standard: no limit"
        );
        assert!(premium_schedule_warning("d1", "prem", "Premium_LRS", None, from).is_none());
    }

    #[test]
    fn a_managed_schedule_over_seven_per_five_minutes_is_a_warning() {
        let from = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let note = |cron: &str, listed: Result<usize, String>| {
            let schedule = Schedule::parse(cron).unwrap();
            managed_limits_note("d1", Some(&schedule), listed, from)
        };
        // Every minute: 5 in 5 minutes, kept.
        let n = note("* * * * *", Ok(2));
        assert!(!n.contains("warning"), "{n}");
        assert!(n.contains("cannot be seen from here"), "{n}");
        // 8 firings within 5 minutes once a day: refused past the 7th.
        let n = note("0,1,2,3,4 3 * * *", Ok(2));
        assert!(!n.contains("warning"), "5 firings: {n}");
        let n = note("0,0,1,1,2,2,3,3 3 * * *", Ok(2));
        assert!(!n.contains("warning"), "cron minutes are a set: {n}");
        assert_eq!(
            most_firings_within(
                &Schedule::parse("*/30 * * * * *").unwrap(),
                from,
                std::time::Duration::from_secs(300)
            ),
            10
        );
        let n = note("*/30 * * * * *", Ok(2));
        assert!(
            n.contains("warning: disk d1") && n.contains("fires 10 times within 5 minutes"),
            "{n}"
        );
        // Near 500 snapshots.
        let n = note("0 * * * *", Ok(480));
        assert!(n.contains("480 snapshots") && n.contains("500"), "{n}");
        let n = note("0 * * * *", Err("HTTP 403".into()));
        assert!(n.contains("HTTP 403") && n.contains("not checked"), "{n}");
    }
}
