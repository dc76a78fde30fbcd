//! A backup cycle's persisted record: its kind, phase, diff base and statistics. Plain data
//! with the few rules that keep it consistent (`replace_etag`, `rebased`): the state store
//! persists it, the lock blob carries it for a takeover (`cycle::handover`), hooks and
//! `status` report it, and the cycle's machine (`cycle::machine`) moves it from phase to
//! phase. It lives here, below all of them, so the state store needs nothing of the cycle.

use crate::model::SnapshotId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Seed copies the whole source snapshot; Incremental applies the diff since `S(n-1)`.
/// For people (logs, `status`): what the runner does follows from the phase's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CycleKind {
    Seed,
    Incremental,
}

impl CycleKind {
    pub fn label(self) -> &'static str {
        match self {
            CycleKind::Seed => "seed",
            CycleKind::Incremental => "incremental",
        }
    }
}

/// The chain's position an incremental cycle starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffBase {
    /// `S(n-1)`.
    pub snapshot: SnapshotId,
    /// The backup ETag the last restore point left; checked before the first write. None
    /// when there is nothing to check (this cycle may have written to the backup already).
    pub backup_etag: Option<String>,
}

/// Where a cycle stands, with the data that phase needs: a phase cannot be reached without
/// what it acts on (Apply has `S(n)`, Prune has `S(n)` and `B(n)`), so a resumed record never
/// acts on a missing field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Take `S(n)`; with a base the cycle is incremental, without it a seed.
    Snapshot {
        base: Option<DiffBase>,
    },
    Diff {
        source: SnapshotId,
        size: u64,
        base: DiffBase,
    },
    Apply {
        source: SnapshotId,
        size: u64,
        /// `S(n-1)`; None: a seed by client copy (every page of `S(n)`).
        base: Option<SnapshotId>,
        /// Checkpoint: every change below this offset is in the backup.
        applied_upto: u64,
        /// The backup's ETag when this apply last stopped with its writes settled (or when
        /// the diff phase checked it, before the first write): a resumed apply compares it
        /// with the backup before writing, so a foreign write while the cycle was parked is
        /// never built upon. None: unknown (the previous run was killed mid-apply, or this
        /// record predates the field).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup_etag: Option<String>,
    },
    Copy {
        source: SnapshotId,
        size: u64,
        /// The pending Copy Blob, once started.
        copy_id: Option<String>,
    },
    BackupSnapshot {
        source: SnapshotId,
    },
    Prune {
        source: SnapshotId,
        backup_snapshot: SnapshotId,
        backup_etag: String,
    },
    Done {
        source: SnapshotId,
        backup_snapshot: SnapshotId,
        backup_etag: String,
        finished_at: i64,
    },
}

/// A phase's name, for logs, `status`, metrics and the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PhaseName {
    Snapshot,
    Diff,
    Apply,
    Copy,
    BackupSnapshot,
    Prune,
    Done,
}

impl PhaseName {
    pub const ALL: [PhaseName; 7] = [
        PhaseName::Snapshot,
        PhaseName::Diff,
        PhaseName::Apply,
        PhaseName::Copy,
        PhaseName::BackupSnapshot,
        PhaseName::Prune,
        PhaseName::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Snapshot => "snapshot",
            PhaseName::Diff => "diff",
            PhaseName::Apply => "apply",
            PhaseName::Copy => "copy",
            PhaseName::BackupSnapshot => "backup-snapshot",
            PhaseName::Prune => "prune",
            PhaseName::Done => "done",
        }
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Phase {
    pub fn name(&self) -> PhaseName {
        match self {
            Phase::Snapshot { .. } => PhaseName::Snapshot,
            Phase::Diff { .. } => PhaseName::Diff,
            Phase::Apply { .. } => PhaseName::Apply,
            Phase::Copy { .. } => PhaseName::Copy,
            Phase::BackupSnapshot { .. } => PhaseName::BackupSnapshot,
            Phase::Prune { .. } => PhaseName::Prune,
            Phase::Done { .. } => PhaseName::Done,
        }
    }

    /// `S(n)`, once taken.
    pub fn source(&self) -> Option<&SnapshotId> {
        match self {
            Phase::Snapshot { .. } => None,
            Phase::Diff { source, .. }
            | Phase::Apply { source, .. }
            | Phase::Copy { source, .. }
            | Phase::BackupSnapshot { source }
            | Phase::Prune { source, .. }
            | Phase::Done { source, .. } => Some(source),
        }
    }

    /// The apply checkpoint, in Apply.
    pub fn applied_upto(&self) -> Option<u64> {
        match self {
            Phase::Apply { applied_upto, .. } => Some(*applied_upto),
            _ => None,
        }
    }

    /// The restore point `B(n)` and the `S(n)` it equals, once taken.
    pub fn restore_point(&self) -> Option<(&SnapshotId, &SnapshotId)> {
        match self {
            Phase::Prune {
                source,
                backup_snapshot,
                ..
            }
            | Phase::Done {
                source,
                backup_snapshot,
                ..
            } => Some((backup_snapshot, source)),
            _ => None,
        }
    }
}

/// Counters of one cycle, for logs, `status` and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStats {
    /// Bytes written with Put Page.
    pub bytes_written: u64,
    /// Bytes cleared with Clear Page.
    pub bytes_cleared: u64,
    /// Diff items (page and clear ranges) received.
    pub ranges: u64,
    /// Storage requests issued (each operation once, retries not counted).
    pub requests: u64,
}

impl CycleStats {
    pub fn add(&mut self, other: &CycleStats) {
        self.bytes_written += other.bytes_written;
        self.bytes_cleared += other.bytes_cleared;
        self.ranges += other.ranges;
        self.requests += other.requests;
    }
}

/// Everything needed to resume a cycle, persisted after every step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleRecord {
    /// Database row id (not serialised into the record itself).
    #[serde(skip)]
    pub id: i64,
    /// Random tag written into the metadata of the snapshots this cycle creates, so they can
    /// be found again after a crash (unique even if the state database is recreated).
    pub tag: String,
    pub disk: String,
    pub kind: CycleKind,
    pub phase: Phase,
    /// Set once this cycle may have written to the backup base (its ETag no longer proves
    /// anything about tampering).
    pub backup_touched: bool,
    /// The backup's ETag when this cycle's last write (apply or copy) ended: the restore point
    /// is taken `If-Match` on it, so a foreign write after that is never laundered into a
    /// restore point. None in records written before it existed (the step reads it then).
    #[serde(default)]
    pub written_etag: Option<String>,
    /// Why an incremental cycle turned into a seed.
    pub repair_reason: Option<String>,
    pub started_at: i64,
    pub stats: CycleStats,
}

impl CycleRecord {
    /// A new cycle: incremental from `base` (`S(n-1)` and the backup ETag the last restore
    /// point left) when the chain has one, else a seed.
    pub fn new(disk: &str, tag: String, base: Option<DiffBase>, now: i64) -> Self {
        CycleRecord {
            id: 0,
            tag,
            disk: disk.to_string(),
            kind: if base.is_some() {
                CycleKind::Incremental
            } else {
                CycleKind::Seed
            },
            phase: Phase::Snapshot { base },
            backup_touched: false,
            written_etag: None,
            repair_reason: None,
            started_at: now,
            stats: CycleStats::default(),
        }
    }

    /// A finished seed whose restore point `backup_snapshot` equals `source` although no
    /// cycle copied it (restore `--rebase`: both are copies of one restore point). The next
    /// cycle of the disk is incremental from `source`.
    pub fn rebased(
        disk: &str,
        tag: String,
        source: SnapshotId,
        backup_snapshot: SnapshotId,
        backup_etag: String,
        reason: String,
        now: i64,
    ) -> Self {
        CycleRecord {
            phase: Phase::Done {
                source,
                backup_snapshot,
                backup_etag,
                finished_at: now,
            },
            repair_reason: Some(reason),
            ..CycleRecord::new(disk, tag, None, now)
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done { .. })
    }

    /// Replaces every backup ETag this record expects or recorded that equals `from` with
    /// `to`: the new owner's raise of the fencing token changed the backup's ETag and nothing
    /// else (see `ownership`). Returns whether anything changed.
    pub fn replace_etag(&mut self, from: &str, to: &str) -> bool {
        let mut changed = false;
        let mut swap = |e: &mut String| {
            if e == from {
                *e = to.to_string();
                changed = true;
            }
        };
        match &mut self.phase {
            Phase::Snapshot {
                base:
                    Some(DiffBase {
                        backup_etag: Some(e),
                        ..
                    }),
            }
            | Phase::Diff {
                base:
                    DiffBase {
                        backup_etag: Some(e),
                        ..
                    },
                ..
            }
            | Phase::Apply {
                backup_etag: Some(e),
                ..
            }
            | Phase::Prune { backup_etag: e, .. }
            | Phase::Done { backup_etag: e, .. } => swap(e),
            _ => {}
        }
        if let Some(e) = &mut self.written_etag {
            swap(e);
        }
        changed
    }

    pub fn finished_at(&self) -> Option<i64> {
        match self.phase {
            Phase::Done { finished_at, .. } => Some(finished_at),
            _ => None,
        }
    }
}
