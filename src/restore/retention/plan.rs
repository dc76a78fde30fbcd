//! The retention plan, pure: restore points, the rules, the time and the time zone in; a
//! decision per point out (the semantics are in the parent module). Apart from the execution
//! so that every rule is tested on times alone, DST and leap days included.

use crate::config::Retention;
use crate::model::Timestamp;
use chrono::{Datelike, Offset, TimeDelta, Timelike};
use chrono_tz::Tz;
use serde::Serialize;

/// A point more than this far after `now` is never pruned: either the local clock or the
/// storage service's clock is wrong, and a plan made on a wrong clock must not delete. Within
/// it, ordinary clock skew (a snapshot stamped a second "after" the local clock) is ignored.
pub const FUTURE_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// Why a restore point is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// No retention rule is configured: everything is kept.
    NoRules,
    /// The newest restore point is always kept (it is also the base of the next cycle).
    Newest,
    /// Its time is more than [`FUTURE_TOLERANCE`] after `now`: never pruned on the word of a
    /// wrong clock.
    Future,
    /// Its snapshot id is not a readable timestamp: never pruned blind.
    UnknownTime,
    /// `keep_last`.
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::NoRules => "no-rules",
            Rule::Newest => "newest",
            Rule::Future => "future",
            Rule::UnknownTime => "unknown-time",
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restore point as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The backup snapshot id.
    pub snapshot: String,
    /// When it was taken; `None` if the id does not parse as a timestamp.
    pub time: Option<Timestamp>,
}

impl Point {
    /// A point named by an Azure snapshot id (an RFC 3339 UTC timestamp).
    pub fn from_snapshot(snapshot: &str) -> Point {
        Point {
            snapshot: snapshot.to_string(),
            time: crate::model::parse_timestamp(snapshot),
        }
    }
}

/// The plan for one point: the rules that keep it, or `None` if it is to be pruned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub point: Point,
    pub kept_by: Option<Vec<Rule>>,
}

impl Decision {
    pub fn is_kept(&self) -> bool {
        self.kept_by.is_some()
    }

    /// `"last,daily"`, or `"prune"`.
    pub fn label(&self) -> String {
        match &self.kept_by {
            Some(rules) => rules
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(","),
            None => "prune".into(),
        }
    }
}

/// Whether `rules` keep everything (no rule configured).
pub fn keeps_everything(rules: &Retention) -> bool {
    let Retention {
        keep_last,
        hourly,
        daily,
        weekly,
        monthly,
    } = rules;
    [keep_last, hourly, daily, weekly, monthly]
        .iter()
        .all(|r| r.is_none())
}

/// The period of a time under one rule, as a comparable key.
fn period(rule: Rule, t: Timestamp, tz: &Tz) -> (i32, i32, i32, i32) {
    let z = t.with_timezone(tz);
    let d = z.date_naive();
    // Month, day, hour and week numbers are small; `as` cannot truncate them.
    let (month, day) = (d.month() as i32, d.day() as i32);
    match rule {
        Rule::Hourly => (
            // The offset tells apart the two 02:00 hours of a DST fall-back.
            d.year() * 10_000 + month * 100 + day,
            z.hour() as i32,
            z.offset().fix().local_minus_utc(),
            0,
        ),
        Rule::Daily => (d.year(), month, day, 0),
        Rule::Weekly => {
            let w = d.iso_week();
            (w.year(), w.week() as i32, 0, 0)
        }
        Rule::Monthly => (d.year(), month, 0, 0),
        _ => (0, 0, 0, 0),
    }
}

/// Decides, for each point, which rules keep it. The result is in the order of `points`.
pub fn plan(points: &[Point], rules: &Retention, now: Timestamp, tz: &Tz) -> Vec<Decision> {
    let mut kept: Vec<Vec<Rule>> = vec![Vec::new(); points.len()];
    if keeps_everything(rules) {
        for k in &mut kept {
            k.push(Rule::NoRules);
        }
    } else {
        // Newest first; points without a time are kept and take no part in the grid.
        let mut order: Vec<(usize, Timestamp)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.time.map(|t| (i, t)))
            .collect();
        order.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| points[b.0].snapshot.cmp(&points[a.0].snapshot))
        });
        // `None` only when `now` is at the end of time: then nothing is in the future.
        let future_after = now.checked_add_signed(FUTURE_TOLERANCE);
        for (i, p) in points.iter().enumerate() {
            match p.time {
                None => kept[i].push(Rule::UnknownTime),
                Some(t) if future_after.is_some_and(|f| t > f) => kept[i].push(Rule::Future),
                Some(_) => {}
            }
        }
        if let Some(&(newest, _)) = order.first() {
            kept[newest].push(Rule::Newest);
        }
        if let Some(n) = rules.keep_last {
            for &(i, _) in order.iter().take(n as usize) {
                kept[i].push(Rule::Last);
            }
        }
        let periodic = [
            (Rule::Hourly, rules.hourly),
            (Rule::Daily, rules.daily),
            (Rule::Weekly, rules.weekly),
            (Rule::Monthly, rules.monthly),
        ];
        for (rule, count) in periodic {
            let Some(count) = count else { continue };
            let mut periods = 0u32;
            let mut last = None;
            for &(i, t) in &order {
                if periods >= count {
                    break;
                }
                let key = period(rule, t, tz);
                if last != Some(key) {
                    // The first point met in a period is its newest.
                    kept[i].push(rule);
                    periods += 1;
                    last = Some(key);
                }
            }
        }
    }
    points
        .iter()
        .zip(kept)
        .map(|(p, mut k)| {
            k.sort();
            k.dedup();
            Decision {
                point: p.clone(),
                kept_by: (!k.is_empty()).then_some(k),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_unix;

    fn ts(s: &str) -> Timestamp {
        crate::model::parse_timestamp(s).unwrap()
    }

    fn pts(times: &[&str]) -> Vec<Point> {
        times.iter().map(|t| Point::from_snapshot(t)).collect()
    }

    fn rules(
        keep_last: Option<u32>,
        hourly: Option<u32>,
        daily: Option<u32>,
        weekly: Option<u32>,
        monthly: Option<u32>,
    ) -> Retention {
        Retention {
            keep_last,
            hourly,
            daily,
            weekly,
            monthly,
        }
    }

    fn labels(points: &[Point], r: &Retention, now: &str, tz: &str) -> Vec<String> {
        let tz: Tz = tz.parse().unwrap();
        plan(points, r, ts(now), &tz)
            .iter()
            .map(Decision::label)
            .collect()
    }

    const NOW: &str = "2030-06-01T00:00:00Z";

    #[test]
    fn no_rules_keeps_everything() {
        let p = pts(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        assert_eq!(
            labels(&p, &Retention::default(), NOW, "UTC"),
            ["no-rules", "no-rules"]
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_n_and_zero_keeps_only_the_newest() {
        let p = pts(&[
            "2026-01-01T00:00:00.0000001Z",
            "2026-01-01T00:00:00.0000002Z",
            "2026-01-01T00:00:00.0000003Z",
            "2026-01-01T00:00:00.0000004Z",
            "2026-01-01T00:00:00.0000005Z",
        ]);
        assert_eq!(
            labels(&p, &rules(Some(3), None, None, None, None), NOW, "UTC"),
            ["prune", "prune", "last", "last", "newest,last"]
        );
        assert_eq!(
            labels(&p, &rules(Some(0), None, None, None, None), NOW, "UTC"),
            ["prune", "prune", "prune", "prune", "newest"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_with_points() {
        // Three points on day 1, two on day 2, a gap, one on day 5.
        let p = pts(&[
            "2026-05-01T01:00:00Z",
            "2026-05-01T09:00:00Z",
            "2026-05-01T23:00:00Z",
            "2026-05-02T08:00:00Z",
            "2026-05-02T10:00:00Z",
            "2026-05-05T12:00:00Z",
        ]);
        // daily = 3 reaches back over the gap to day 1 (restic semantics).
        assert_eq!(
            labels(&p, &rules(None, None, Some(3), None, None), NOW, "UTC"),
            ["prune", "prune", "daily", "prune", "daily", "newest,daily"]
        );
        assert_eq!(
            labels(&p, &rules(None, None, Some(2), None, None), NOW, "UTC"),
            ["prune", "prune", "prune", "prune", "daily", "newest,daily"]
        );
    }

    #[test]
    fn rules_combine_a_point_survives_if_any_rule_keeps_it() {
        let p = pts(&[
            "2026-03-01T10:00:00Z",
            "2026-04-01T10:00:00Z",
            "2026-04-20T10:00:00Z",
            "2026-04-21T10:00:00Z",
            "2026-04-21T11:00:00Z",
        ]);
        assert_eq!(
            labels(
                &p,
                &rules(Some(1), None, Some(2), None, Some(3)),
                NOW,
                "UTC"
            ),
            [
                "monthly",
                "prune",
                "daily",
                "prune",
                "newest,last,daily,monthly"
            ]
        );
    }

    #[test]
    fn days_are_local_dates_in_the_disk_time_zone() {
        // 22:30Z and 23:30Z on 1 Jan are the same UTC day but 23:30 and 00:30 in Paris.
        let p = pts(&["2026-01-01T22:30:00Z", "2026-01-01T23:30:00Z"]);
        let r = rules(None, None, Some(5), None, None);
        assert_eq!(labels(&p, &r, NOW, "UTC"), ["prune", "newest,daily"]);
        assert_eq!(
            labels(&p, &r, NOW, "Europe/Paris"),
            ["daily", "newest,daily"]
        );
    }

    #[test]
    fn dst_fall_back_repeated_hour_counts_as_two_hours() {
        // Paris, 25 Oct 2026: 02:30 CEST (00:30Z) and 02:30 CET (01:30Z) are both "02:30".
        let p = pts(&["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"]);
        let hourly = rules(None, Some(24), None, None, None);
        assert_eq!(
            labels(&p, &hourly, NOW, "Europe/Paris"),
            ["hourly", "newest,hourly"]
        );
        // ...and the 25-hour day is still one day.
        let daily = rules(None, None, Some(5), None, None);
        assert_eq!(
            labels(&p, &daily, NOW, "Europe/Paris"),
            ["prune", "newest,daily"]
        );
    }

    #[test]
    fn dst_spring_forward_day_is_one_day_and_hours_stay_distinct() {
        // Paris, 29 Mar 2026: 01:30 CET (00:30Z), then 03:30 CEST (01:30Z); 02:xx never exists.
        let p = pts(&[
            "2026-03-28T22:59:00Z", // 23:59 on the 28th
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T21:59:00Z", // 23:59 CEST on the 29th
            "2026-03-29T22:01:00Z", // 00:01 on the 30th
        ]);
        assert_eq!(
            labels(
                &p,
                &rules(None, None, Some(3), None, None),
                NOW,
                "Europe/Paris"
            ),
            ["daily", "prune", "prune", "daily", "newest,daily"]
        );
        assert_eq!(
            labels(
                &p,
                &rules(None, Some(4), None, None, None),
                NOW,
                "Europe/Paris"
            ),
            ["prune", "hourly", "hourly", "hourly", "newest,hourly"]
        );
    }

    #[test]
    fn month_ends_and_leap_days() {
        let p = pts(&[
            "2028-01-31T23:59:59Z",
            "2028-02-01T00:00:00Z",
            "2028-02-29T12:00:00Z", // leap day
            "2028-03-01T00:00:00Z",
        ]);
        let monthly = rules(None, None, None, None, Some(12));
        assert_eq!(
            labels(&p, &monthly, NOW, "UTC"),
            ["monthly", "prune", "monthly", "newest,monthly"]
        );
        // In New York (UTC-5), 1 Mar 00:00Z is still 29 Feb, and 1 Feb 00:00Z is 31 Jan.
        assert_eq!(
            labels(&p, &monthly, NOW, "America/New_York"),
            ["prune", "monthly", "prune", "newest,monthly"]
        );
        let monthly2 = rules(None, None, None, None, Some(2));
        assert_eq!(
            labels(&p, &monthly2, NOW, "UTC"),
            ["prune", "prune", "monthly", "newest,monthly"]
        );
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_new_year() {
        // Thu 31 Dec 2026 and Fri 1 Jan 2027 are both in ISO week 53 of 2026; Mon 4 Jan 2027
        // starts week 1 of 2027.
        let p = pts(&[
            "2026-12-31T12:00:00Z",
            "2027-01-01T12:00:00Z",
            "2027-01-04T12:00:00Z",
        ]);
        assert_eq!(
            labels(&p, &rules(None, None, None, Some(10), None), NOW, "UTC"),
            ["prune", "weekly", "newest,weekly"]
        );
    }

    #[test]
    fn future_points_and_unreadable_ids_are_never_pruned() {
        let mut p = pts(&["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]);
        p.push(Point {
            snapshot: "not-a-time".into(),
            time: None,
        });
        p.push(Point::from_snapshot("2031-01-01T00:00:00Z"));
        assert_eq!(
            labels(&p, &rules(Some(1), None, None, None, None), NOW, "UTC"),
            ["prune", "prune", "unknown-time", "newest,future,last"]
        );
    }

    #[test]
    fn small_clock_skew_is_not_future() {
        let p = pts(&["2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"]);
        let r = rules(Some(1), None, None, None, None);
        assert_eq!(
            labels(&p, &r, "2026-01-01T00:00:00Z", "UTC"),
            ["prune", "newest,last"]
        );
        assert_eq!(
            labels(&p, &r, "2025-12-31T23:50:00Z", "UTC"),
            ["future", "newest,future,last"]
        );
    }

    #[test]
    fn input_order_does_not_matter() {
        let p = pts(&[
            "2026-05-02T10:00:00Z",
            "2026-05-01T09:00:00Z",
            "2026-05-02T08:00:00Z",
        ]);
        assert_eq!(
            labels(&p, &rules(None, None, Some(1), None, None), NOW, "UTC"),
            ["newest,daily", "prune", "prune"]
        );
    }

    #[test]
    fn azure_snapshot_ids_parse_with_seven_fractional_digits() {
        let t = Point::from_snapshot("2026-11-25T07:00:09.7120000Z")
            .time
            .unwrap();
        assert_eq!(t.timestamp(), 1_795_590_009);
        assert_eq!(t.timestamp_subsec_nanos(), 712_000_000);
        let tick = ts("2026-01-01T00:00:00.0000001Z");
        assert_eq!(tick.timestamp_subsec_nanos(), 100);
        assert!(Point::from_snapshot("not-a-time").time.is_none());
        assert_eq!(
            crate::model::format_timestamp(t),
            "2026-11-25T07:00:09.712Z"
        );
        assert_eq!(
            crate::model::format_timestamp(ts("2026-01-01T00:00:00Z")),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn timestamps_clamp_and_the_end_of_time_is_not_a_panic() {
        assert_eq!(from_unix(0).timestamp(), 0);
        assert_eq!(
            from_unix(i64::MAX),
            chrono::DateTime::<chrono::Utc>::MAX_UTC
        );
        assert_eq!(
            from_unix(i64::MIN),
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        );
        let p = pts(&["2026-01-01T00:00:00Z"]);
        let r = rules(Some(1), None, None, None, None);
        let tz: Tz = "UTC".parse().unwrap();
        let got = plan(&p, &r, from_unix(i64::MAX), &tz);
        assert_eq!(got[0].label(), "newest,last");
    }
}
