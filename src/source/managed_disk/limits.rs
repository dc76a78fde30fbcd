//! Azure's limits on a managed disk's incremental snapshots (docs/managed-disks.md,
//! "Limits"), and which one a refusal hit.
//!
//! ARM answers the creation-rate limit, the pending-snapshot limit and the SAS-per-family
//! limit with the same status and code (the emulator: 409 `OperationNotAllowed`; Azure
//! documents the limits, not their codes). The message is not a contract, so the choice is
//! made on the status, the code and what snapback can count itself: the disk's snapshots in
//! the snapshot resource group as ARM lists them (creation times, background copy state,
//! `ActiveSAS`). Snapshots deleted since, or in other resource groups, are not listed: the
//! counts are a lower bound, and the messages say so.

use crate::arm::Snapshot;
use crate::source::snapshot_limits::{
    LimitKind, ManagedLimit, MAX_ACTIVE_SAS, MAX_PENDING, MAX_SNAPSHOTS, NEAR_MAX_SNAPSHOTS,
    RATE_MAX, RATE_WINDOW, RECHECK,
};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The codes under which ARM refuses an operation for one of the limits above.
const LIMIT_CODES: &[&str] = &["OperationNotAllowed"];

/// What snapback sees of the disk when ARM refuses.
pub struct Facts<'a> {
    /// The disk's snapshots in the snapshot resource group, as listed after the refusal.
    pub listing: &'a [Snapshot],
    /// The disk copies its snapshots in the background (Premium SSD v2, Ultra).
    pub background_copy: bool,
    pub now: DateTime<Utc>,
}

fn limit_code(status: Option<u16>, code: Option<&str>) -> Option<(u16, String)> {
    match (status, code) {
        (Some(409), Some(c)) if LIMIT_CODES.contains(&c) => Some((409, c.to_string())),
        _ => None,
    }
}

fn is_pending(s: &Snapshot) -> bool {
    let p = &s.properties;
    p.completion_percent.is_some_and(|c| c < 100.0)
        || p.snapshot_access_state.as_deref() == Some("Pending")
}

fn created(s: &Snapshot) -> Option<DateTime<Utc>> {
    let t = s.properties.time_created.as_deref()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The limit a refused snapshot `PUT` hit. The candidates are the three limits on
/// creating one; the pending and count limits need the listing to show them, the rate
/// limit is what remains (its creations may have been deleted since: snapback deletes
/// `S(n-1)` every cycle).
pub fn on_create(
    status: Option<u16>,
    code: Option<&str>,
    resource: &str,
    facts: &Facts<'_>,
) -> Option<ManagedLimit> {
    let (status, code) = limit_code(status, code)?;
    let of = |kind, wait| ManagedLimit {
        kind,
        resource: resource.to_string(),
        status,
        code: code.clone(),
        wait,
    };
    let pending = facts.listing.iter().filter(|s| is_pending(s)).count();
    if facts.background_copy && pending >= MAX_PENDING {
        return Some(of(LimitKind::Pending { pending }, Some(RECHECK)));
    }
    if facts.listing.len() >= MAX_SNAPSHOTS {
        return Some(of(
            LimitKind::Count {
                listed: facts.listing.len(),
            },
            None,
        ));
    }
    let window = chrono::TimeDelta::from_std(RATE_WINDOW).unwrap_or(chrono::TimeDelta::MAX);
    let mut recent: Vec<DateTime<Utc>> = facts
        .listing
        .iter()
        .filter_map(created)
        .filter(|t| *t <= facts.now && facts.now - *t < window)
        .collect();
    recent.sort();
    // With 7 listed in the window, a slot frees when the oldest of the newest 7 leaves it;
    // with fewer, the others were deleted and their times are unknown: the whole window.
    let wait = match recent.len().checked_sub(RATE_MAX) {
        Some(i) => (recent[i] + window - facts.now)
            .to_std()
            .unwrap_or(RATE_WINDOW)
            .clamp(Duration::from_secs(1), RATE_WINDOW),
        None => RATE_WINDOW,
    };
    Some(of(
        LimitKind::Rate {
            listed_recent: recent.len(),
        },
        Some(wait),
    ))
}

/// The limit a refused read `beginGetAccess` of snapshot `resource` hit: the SAS-per-family
/// limit when the listing shows 5 others of the disk with an active SAS; None otherwise
/// (then the refusal stays what ARM said: a snapshot still copying is waited for before
/// access is asked, and a `DenyAll` one is refused before).
pub fn on_access(
    status: Option<u16>,
    code: Option<&str>,
    resource: &str,
    facts: &Facts<'_>,
) -> Option<ManagedLimit> {
    let (status, code) = limit_code(status, code)?;
    let active = facts
        .listing
        .iter()
        .filter(|s| !s.id.eq_ignore_ascii_case(resource))
        .filter(|s| s.properties.disk_state.as_deref() == Some("ActiveSAS"))
        .count();
    (active >= MAX_ACTIVE_SAS).then(|| ManagedLimit {
        kind: LimitKind::ActiveSas { active },
        resource: resource.to_string(),
        status,
        code,
        wait: Some(RECHECK),
    })
}

/// Of a disk's listed snapshots, a warning when they near the 500-snapshot limit.
pub fn count_warning(disk: &str, listed: usize) -> Option<String> {
    (listed >= NEAR_MAX_SNAPSHOTS).then(|| {
        format!(
            "warning: disk {disk} has {listed} snapshots in its snapshot resource group; Azure \
             allows {MAX_SNAPSHOTS} incremental snapshots per disk, after which every cycle's \
             snapshot is refused (snapback keeps one or two per chain: delete the others)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, created: &str) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "id": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/snapshots/{name}"),
            "name": name,
            "location": "westeurope",
            "properties": {"creationData": {"createOption": "Copy"}, "timeCreated": created, "diskSizeBytes": 1048576}
        }))
        .expect("a snapshot body")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn facts(listing: &[Snapshot], background_copy: bool) -> Facts<'_> {
        Facts {
            listing,
            background_copy,
            now: at("2026-12-07T12:05:00Z"),
        }
    }

    /// ARM's refusal of a snapshot PUT (409 `OperationNotAllowed` on `S`), decided with
    /// `listing` as the disk's snapshots.
    fn refused(listing: &[Snapshot], background_copy: bool) -> Option<ManagedLimit> {
        on_create(
            Some(409),
            Some("OperationNotAllowed"),
            "S",
            &facts(listing, background_copy),
        )
    }

    #[test]
    fn only_a_409_with_the_limit_code_is_a_limit() {
        let f = facts(&[], false);
        assert!(on_create(Some(409), Some("Conflict"), "s", &f).is_none());
        assert!(on_create(Some(400), Some("OperationNotAllowed"), "s", &f).is_none());
        assert!(on_create(Some(409), None, "s", &f).is_none());
        assert!(on_access(Some(429), Some("OperationNotAllowed"), "s", &f).is_none());
    }

    #[test]
    fn the_rate_wait_is_until_the_oldest_of_the_last_seven_leaves_the_window() {
        // 8 listed: 12:00:30 .. 12:04:00 (7 in the window) and one at 11:50 (outside).
        let mut listing = vec![snap("old", "2026-12-07T11:50:00Z")];
        for (i, t) in [
            "12:00:30", "12:01:00", "12:02:00", "12:02:30", "12:03:00", "12:03:30", "12:04:00",
        ]
        .iter()
        .enumerate()
        {
            listing.push(snap(&format!("s{i}"), &format!("2026-12-07T{t}Z")));
        }
        let l = refused(&listing, false).expect("a limit");
        assert_eq!(l.kind, LimitKind::Rate { listed_recent: 7 });
        // 12:00:30 + 5 min = 12:05:30: 30 s from now.
        assert_eq!(l.wait, Some(Duration::from_secs(30)));
        assert_eq!(
            (l.status, l.code.as_str(), l.resource.as_str()),
            (409, "OperationNotAllowed", "S")
        );
        assert!(l
            .to_string()
            .contains("7 incremental snapshots per disk every 5 minutes"));
    }

    #[test]
    fn a_rate_refusal_with_deleted_snapshots_waits_the_whole_window() {
        let listing = vec![snap("s1", "2026-12-07T12:04:00Z")];
        let l = refused(&listing, false).unwrap();
        assert_eq!(l.kind, LimitKind::Rate { listed_recent: 1 });
        assert_eq!(l.wait, Some(RATE_WINDOW));
    }

    #[test]
    fn pending_copies_decide_only_for_background_copy_disks() {
        let mut listing = Vec::new();
        for i in 0..3 {
            let mut s = snap(&format!("p{i}"), "2026-12-07T11:00:00Z");
            s.properties.completion_percent = Some(40.0);
            listing.push(s);
        }
        let l = refused(&listing, true).unwrap();
        assert_eq!(l.kind, LimitKind::Pending { pending: 3 });
        assert_eq!(l.wait, Some(RECHECK));
        // The same listing on a disk that does not copy in the background: the rate.
        let l = refused(&listing, false).unwrap();
        assert!(matches!(l.kind, LimitKind::Rate { .. }));
    }

    #[test]
    fn five_hundred_listed_is_the_count_limit_and_no_wait() {
        let listing: Vec<Snapshot> = (0..500)
            .map(|i| snap(&format!("s{i}"), "2026-11-01T00:00:00Z"))
            .collect();
        let l = refused(&listing, false).unwrap();
        assert_eq!(l.kind, LimitKind::Count { listed: 500 });
        assert_eq!(l.wait, None);
        assert!(count_warning("d", 449).is_none());
        assert!(count_warning("d", 450).unwrap().contains("450 snapshots"));
    }

    #[test]
    fn the_sas_limit_needs_five_other_active_grants_listed() {
        let mut listing: Vec<Snapshot> = (0..5)
            .map(|i| snap(&format!("a{i}"), "2026-12-07T11:00:00Z"))
            .collect();
        for s in &mut listing[..4] {
            s.properties.disk_state = Some("ActiveSAS".into());
        }
        let me = listing[4].id.clone();
        let f = facts(&listing, false);
        assert!(on_access(Some(409), Some("OperationNotAllowed"), &me, &f).is_none());
        listing.push(snap("a5", "2026-12-07T11:00:00Z"));
        listing[5].properties.disk_state = Some("ActiveSAS".into());
        let f = facts(&listing, false);
        let l = on_access(Some(409), Some("OperationNotAllowed"), &me, &f).unwrap();
        assert_eq!(l.kind, LimitKind::ActiveSas { active: 5 });
        assert_eq!(l.wait, Some(RECHECK));
        assert!(l.to_string().contains("SAS per disk family"));
    }
}
