//! Azure's limits on a managed disk's incremental snapshots (docs/managed-disks.md,
//! "Limits") and a refusal for one of them: plain data, named by the cycle's errors and by
//! the `Source` trait, while `managed::limits` decides from ARM's answer which limit it was.

use std::time::Duration;

/// "You can create up to seven incremental snapshots per disk every five minutes."
pub const RATE_MAX: usize = 7;
pub const RATE_WINDOW: Duration = Duration::from_secs(300);
/// "A total of 500 incremental snapshots can be created for a single disk" (at any time).
pub const MAX_SNAPSHOTS: usize = 500;
/// From here on `snapback check` warns: 50 left is a few days of a frequent schedule.
pub const NEAR_MAX_SNAPSHOTS: usize = 450;
/// Premium SSD v2 / Ultra: "up to three total snapshots pending" while copying.
pub const MAX_PENDING: usize = 3;
/// "SAS URIs for at most five snapshots of a particular snapshot family at any given time."
pub const MAX_ACTIVE_SAS: usize = 5;
/// When a pending copy or another holder's SAS ends is not visible to snapback (a copy's
/// length depends on the disk, a SAS on whoever asked for it): the next attempt looks again
/// after this long, rather than at the next scheduled firing or after the daemon's backoff.
pub const RECHECK: Duration = Duration::from_secs(600);

/// Which limit, with what snapback counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// 7 per disk per 5 minutes; `listed_recent` of the disk's listed snapshots were created
    /// in the last 5 minutes.
    Rate { listed_recent: usize },
    /// 500 per disk.
    Count { listed: usize },
    /// 3 pending (background copy) per Premium SSD v2 / Ultra disk.
    Pending { pending: usize },
    /// 5 snapshots of a family with an active SAS.
    ActiveSas { active: usize },
}

/// A refusal for one of Azure's snapshot limits: the resource, ARM's status and code, the
/// limit and how long to wait (None: waiting does not help, the operator must act).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedLimit {
    pub kind: LimitKind,
    /// The resource refused: the snapshot being made, or the one whose access was asked.
    pub resource: String,
    pub status: u16,
    pub code: String,
    pub wait: Option<Duration>,
}

impl std::fmt::Display for ManagedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (r, s, c) = (&self.resource, self.status, &self.code);
        let wait = self.wait.map(|w| w.as_secs()).unwrap_or(0);
        match &self.kind {
            LimitKind::Rate { listed_recent } => write!(
                f,
                "{r}: HTTP {s} {c}: snapshot creation rate: Azure allows {RATE_MAX} incremental \
                 snapshots per disk every 5 minutes ({listed_recent} of the disk's listed \
                 snapshots were created in the last 5 minutes; deleted ones and those in other \
                 resource groups are not listed); the daemon's next attempt waits {wait} s. A schedule \
                 (or other tools snapshotting the disk) more frequent than that cannot be kept"
            ),
            LimitKind::Count { listed } => write!(
                f,
                "{r}: HTTP {s} {c}: snapshots per disk: Azure allows {MAX_SNAPSHOTS} incremental \
                 snapshots per disk and {listed} are listed; delete snapshots snapback did not \
                 make (it keeps one or two per chain) — waiting does not help"
            ),
            LimitKind::Pending { pending } => write!(
                f,
                "{r}: HTTP {s} {c}: pending snapshots: Azure allows {MAX_PENDING} snapshots of a \
                 Premium SSD v2 / Ultra disk whose background copy is still running, and \
                 {pending} are listed; the daemon's next attempt waits {wait} s"
            ),
            LimitKind::ActiveSas { active } => write!(
                f,
                "{r}: HTTP {s} {c}: SAS per disk family: Azure allows an active SAS on \
                 {MAX_ACTIVE_SAS} snapshots of one disk at once, and {active} others are listed \
                 with one (granted by another tool or installation; snapback ends its own); \
                 the daemon's next attempt waits {wait} s"
            ),
        }
    }
}
