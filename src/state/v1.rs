//! Cycle records as schema version 1 stored them (a flat bag of options), and their
//! conversion to today's [`CycleRecord`], for the migration to version 2. Nothing else reads
//! this format.

use crate::model::record::{CycleKind, CycleRecord, CycleStats, DiffBase, Phase};
use crate::model::SnapshotId;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum V1Kind {
    Seed,
    Incremental,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum V1Phase {
    Snapshot,
    Diff,
    Apply,
    Copy,
    BackupSnapshot,
    Prune,
    Done,
}

#[derive(Deserialize)]
pub(super) struct V1Record {
    tag: String,
    disk: String,
    kind: V1Kind,
    phase: V1Phase,
    base_snapshot: Option<String>,
    expected_backup_etag: Option<String>,
    backup_touched: bool,
    source_snapshot: Option<String>,
    source_size: u64,
    applied_upto: u64,
    copy_id: Option<String>,
    backup_snapshot: Option<String>,
    backup_etag: Option<String>,
    repair_reason: Option<String>,
    started_at: i64,
    finished_at: Option<i64>,
    stats: CycleStats,
}

impl V1Record {
    /// Today's record, or what the old one lacks for its phase (a record version 1 could
    /// hold but never acted on correctly, e.g. a prune without `S(n)`).
    pub(super) fn upgrade(self) -> Result<CycleRecord, String> {
        let need = |v: Option<String>, field: &str| {
            v.filter(|s| !s.is_empty())
                .map(SnapshotId::new)
                .ok_or_else(|| format!("version-1 record has no {field}"))
        };
        let incremental = matches!(self.kind, V1Kind::Incremental);
        let base = || -> Result<DiffBase, String> {
            Ok(DiffBase {
                snapshot: need(self.base_snapshot.clone(), "base_snapshot")?,
                backup_etag: self.expected_backup_etag.clone(),
            })
        };
        let size = self.source_size;
        let phase = match self.phase {
            V1Phase::Snapshot => Phase::Snapshot {
                base: if incremental { Some(base()?) } else { None },
            },
            V1Phase::Diff => Phase::Diff {
                source: need(self.source_snapshot, "source_snapshot")?,
                size,
                base: base()?,
            },
            V1Phase::Apply => Phase::Apply {
                source: need(self.source_snapshot, "source_snapshot")?,
                size,
                // Version 1 applied a diff iff a base was recorded (a seed by client copy
                // cleared it).
                base: self
                    .base_snapshot
                    .filter(|s| !s.is_empty())
                    .map(SnapshotId::new),
                applied_upto: self.applied_upto,
                backup_etag: None,
            },
            V1Phase::Copy => Phase::Copy {
                source: need(self.source_snapshot, "source_snapshot")?,
                size,
                copy_id: self.copy_id,
            },
            V1Phase::BackupSnapshot => Phase::BackupSnapshot {
                source: need(self.source_snapshot, "source_snapshot")?,
            },
            V1Phase::Prune => Phase::Prune {
                source: need(self.source_snapshot, "source_snapshot")?,
                backup_snapshot: need(self.backup_snapshot, "backup_snapshot")?,
                backup_etag: self
                    .backup_etag
                    .ok_or("version-1 record has no backup_etag")?,
            },
            V1Phase::Done => Phase::Done {
                source: need(self.source_snapshot, "source_snapshot")?,
                backup_snapshot: need(self.backup_snapshot, "backup_snapshot")?,
                backup_etag: self
                    .backup_etag
                    .ok_or("version-1 record has no backup_etag")?,
                finished_at: self
                    .finished_at
                    .ok_or("version-1 record has no finished_at")?,
            },
        };
        Ok(CycleRecord {
            id: 0,
            tag: self.tag,
            disk: self.disk,
            kind: if incremental {
                CycleKind::Incremental
            } else {
                CycleKind::Seed
            },
            phase,
            backup_touched: self.backup_touched,
            written_etag: None,
            repair_reason: self.repair_reason,
            started_at: self.started_at,
            stats: self.stats,
        })
    }
}
