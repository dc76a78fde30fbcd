//! Times as an operator types them for `restore --at`: RFC 3339, or a civil date-time in the
//! disk's time zone (with the DST folds and gaps resolved), and the compact UTC form a
//! promoted blob's name carries. Apart from the restore because it is pure calendar
//! arithmetic, with its own tests.

use crate::model::{parse_timestamp, Timestamp};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// Parses `--at`: an RFC 3339 time with offset (`2026-11-25T06:00:00Z`), or a civil date-time
/// (`2026-11-25T07:00`, `2026-11-25 07:00:00`) or date (`2026-11-25`, midnight) in `tz`.
///
/// A civil time repeated by a DST fall-back means its earlier instant; one skipped by a
/// spring-forward is read with the offset in force before the gap, so it lands as far after
/// the gap as it was into it (02:30 in a 02:00-03:00 gap is 03:30): the "compatible"
/// disambiguation of RFC 5545 and Temporal.
pub fn parse_time(s: &str, tz: &Tz) -> Result<Timestamp, String> {
    if let Some(t) = parse_timestamp(s).or_else(|| {
        // RFC 3339 without seconds (`2026-11-25T07:00+01:00`).
        DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%#z")
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }) {
        return Ok(t);
    }
    const CIVIL: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    let civil = CIVIL
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        });
    match civil {
        Some(dt) => local_to_utc(dt, tz).ok_or_else(|| {
            format!(
                "invalid time \"{s}\": out of range in time zone {}",
                tz.name()
            )
        }),
        None => Err(format!(
            "invalid time \"{s}\": use RFC 3339 (2026-11-25T06:00:00Z) or a local date-time \
             in the disk's time zone (2026-11-25T07:00)"
        )),
    }
}

/// The instant of a civil time in `tz`: the earlier one in a fold, and in a gap the civil
/// time read with the offset before the gap (see [`parse_time`]).
fn local_to_utc(dt: NaiveDateTime, tz: &Tz) -> Option<Timestamp> {
    if let Some(t) = tz.from_local_datetime(&dt).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // A gap: no offset `o` has `offset_at(dt - o) == o`. Reading `dt` with the offset after
    // the gap gives an instant before the transition (where the offset before is in force),
    // and with the offset before, one after it; the two offsets alternate.
    let offset_at = |o: i64| -> Option<i64> {
        let t = dt.checked_sub_signed(chrono::TimeDelta::seconds(o))?;
        Some(i64::from(
            tz.offset_from_utc_datetime(&t).fix().local_minus_utc(),
        ))
    };
    let a = offset_at(0)?;
    let b = offset_at(a)?;
    let before = a.min(b);
    dt.checked_sub_signed(chrono::TimeDelta::seconds(before))
        .map(|t| t.and_utc())
}

/// `20261125T070044Z` for unix seconds.
pub fn compact_time(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .filter(|t| (-9999..=9999).contains(&chrono::Datelike::year(t)))
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_offset_or_in_the_disk_time_zone() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let want = parse_timestamp("2026-07-01T05:00:00Z").unwrap();
        assert_eq!(parse_time("2026-07-01T05:00:00Z", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01T07:00:00+02:00", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01T07:00", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01 07:00:00", &paris), Ok(want));
        assert_eq!(
            parse_time("2026-07-01", &paris),
            Ok(parse_timestamp("2026-06-30T22:00:00Z").unwrap())
        );
        assert!(parse_time("yesterday", &paris)
            .unwrap_err()
            .contains("yesterday"));
    }

    #[test]
    fn dst_folds_take_the_earlier_instant_and_gaps_shift_forward() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let at = |s: &str| parse_timestamp(s).unwrap();
        // 25 Oct 2026: 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET).
        assert_eq!(
            parse_time("2026-10-25T02:30", &paris),
            Ok(at("2026-10-25T00:30:00Z"))
        );
        // 29 Mar 2026: 02:00-03:00 does not exist; 02:30 is read as 03:30 CEST.
        assert_eq!(
            parse_time("2026-03-29 02:30:00", &paris),
            Ok(at("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            parse_time("2026-03-29T03:00:00", &paris),
            Ok(at("2026-03-29T01:00:00Z"))
        );
        // A whole day skipped (Samoa, 30 Dec 2011, -10:00 to +14:00).
        let apia: Tz = "Pacific/Apia".parse().unwrap();
        assert_eq!(
            parse_time("2011-12-30", &apia),
            Ok(at("2011-12-30T10:00:00Z"))
        );
    }

    #[test]
    fn rfc3339_times_with_fractions_or_without_seconds() {
        let utc: Tz = "UTC".parse().unwrap();
        let t = parse_time("2026-11-25T07:00:09.7120000Z", &utc).unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 712_000_000);
        assert_eq!(
            parse_time("2026-11-25T08:00+01:00", &utc),
            Ok(parse_timestamp("2026-11-25T07:00:00Z").unwrap())
        );
    }

    #[test]
    fn compact_times() {
        assert_eq!(compact_time(1_795_590_044), "20261125T070044Z");
        assert_eq!(compact_time(0), "19700101T000000Z");
        assert_eq!(compact_time(i64::MAX), i64::MAX.to_string());
    }
}
