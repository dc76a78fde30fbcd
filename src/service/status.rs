//! What `status` and `list` report: each disk's state from the state database, and a
//! disk's restore points with the retention rules that keep them. Apart because these only
//! read and describe; the operations that change anything are elsewhere.

use super::{App, AppError};
use crate::config::DiskConfig;
use crate::model::record::{CycleRecord, CycleStats};
use crate::model::SnapshotId;
use serde::{Deserialize, Serialize};

/// One restore point, as `list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    /// The backup snapshot's timestamp, as Azure returns it.
    pub snapshot: String,
    /// The source snapshot it captured.
    pub source_snapshot: String,
    pub size: u64,
    /// The retention rules that keep it (`newest`, `last`, `hourly`, `daily`, `weekly`,
    /// `monthly`, `no-rules`, ...); empty: the next prune deletes it.
    pub kept_by: Vec<String>,
}

/// Per-disk status, as `status` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk: String,
    pub source: String,
    pub backup: String,
    /// Phase of the unfinished cycle, or "idle".
    pub phase: String,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_cycle: Option<LastCycle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastCycle {
    pub kind: String,
    pub backup_snapshot: Option<String>,
    pub source_snapshot: Option<String>,
    pub bytes_written: u64,
    pub bytes_cleared: u64,
    pub ranges: u64,
    pub requests: u64,
    pub seconds: i64,
}

/// One line for `status`, standalone or from the daemon.
impl std::fmt::Display for LastCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} ({} bytes written, {} cleared, {} ranges, {} requests, {}s)",
            self.kind,
            self.backup_snapshot.as_deref().unwrap_or("-"),
            self.bytes_written,
            self.bytes_cleared,
            self.ranges,
            self.requests,
            self.seconds
        )
    }
}

impl App {
    /// Restore points of a disk, oldest first, read from the backup account: the snapshots
    /// snapback tagged for this disk (so the list survives the loss of the state directory).
    pub async fn list(&self, disk: &DiskConfig) -> Result<Vec<RestorePoint>, AppError> {
        let snapshots =
            crate::restore::retention::restore_points(self.blobs.as_ref(), disk).await?;
        let points: Vec<_> = snapshots
            .iter()
            .map(|s| crate::restore::retention::Point::from_snapshot(&s.snapshot))
            .collect();
        let plan =
            crate::restore::retention::plan(&points, &disk.retention, self.clock.now(), &disk.tz);
        Ok(snapshots
            .into_iter()
            .zip(plan)
            .map(|(s, d)| RestorePoint {
                source_snapshot: s.source.to_string(),
                snapshot: s.snapshot,
                size: s.size,
                kept_by: d
                    .kept_by
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
            })
            .collect())
    }

    /// Status of every configured disk, from the state database (no network).
    pub fn status(&self) -> Result<Vec<DiskStatus>, AppError> {
        let mut out = Vec::new();
        for d in &self.config.disks {
            let state = self.store.disk(&d.name)?.unwrap_or_default();
            let open = self.store.open_cycle(&d.name)?;
            let last = self.store.last_finished_cycle(&d.name)?;
            out.push(DiskStatus {
                disk: d.name.clone(),
                source: d.source.to_string(),
                backup: d.backup.to_string(),
                phase: open
                    .map(|c| c.phase.name().as_str().to_string())
                    .unwrap_or_else(|| "idle".into()),
                last_success: state.last_success_at.map(format_time),
                last_error: state.last_error,
                last_cycle: last.map(|c| last_cycle(&c)),
            });
        }
        Ok(out)
    }
}

fn last_cycle(c: &CycleRecord) -> LastCycle {
    let CycleStats {
        bytes_written,
        bytes_cleared,
        ranges,
        requests,
    } = c.stats;
    LastCycle {
        kind: c.kind.label().to_string(),
        backup_snapshot: c.phase.restore_point().map(|(b, _)| b.to_string()),
        source_snapshot: c.phase.source().map(SnapshotId::to_string),
        bytes_written,
        bytes_cleared,
        ranges,
        requests,
        seconds: c.finished_at().unwrap_or(c.started_at) - c.started_at,
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn format_time(t: i64) -> String {
    crate::model::from_unix(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
