//! The backup cycle as a pure state machine: a persisted [`CycleRecord`], the [`Action`] it
//! calls for next, and how an [`Outcome`] moves it on. No I/O here; `runner` executes actions
//! and persists records. The invariants this implements are in `docs/design.md`.

use crate::model::record::{CycleKind, CycleRecord, CycleStats, Phase, PhaseName};
use crate::model::{BaseState, SnapshotId};

/// What the runner must do next, with everything it needs to do it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Find the source snapshot tagged with this cycle, or take one.
    TakeSourceSnapshot,
    /// Check the backup base and the diff base are what the chain expects.
    CheckDiffBase {
        base: SnapshotId,
        /// None once this cycle may have written to the backup (nothing to compare).
        expected_backup_etag: Option<String>,
    },
    /// Resize the backup to `size`, then apply the diff `base..source` (every page of
    /// `source` without a base) from `from` on.
    ApplyDiff {
        source: SnapshotId,
        base: Option<SnapshotId>,
        size: u64,
        from: u64,
        /// The backup's ETag the apply must find before its first write; None: unknown.
        expected_backup_etag: Option<String>,
    },
    /// Start Copy Blob of `source` over the backup base.
    StartCopy { source: SnapshotId },
    /// Wait for the copy `copy_id` of `source` to finish.
    AwaitCopy { source: SnapshotId, copy_id: String },
    /// Find the backup snapshot tagged with this cycle, or take one recording `source`.
    TakeBackupSnapshot { source: SnapshotId },
    /// Delete every tagged source snapshot of the disk except `keep`.
    PruneSource { keep: SnapshotId },
}

/// What executing an action found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    SourceSnapshot {
        snapshot: SnapshotId,
        size: u64,
    },
    /// The source snapshot vanished (deleted by someone): take a new one.
    SourceSnapshotGone,
    DiffBaseOk,
    /// The diff cannot be applied (backup changed, base gone, backup missing): seed instead.
    Repair {
        reason: String,
    },
    /// Apply progress: everything below `upto` is written; `done` at the end of the diff.
    Applied {
        upto: u64,
        done: bool,
        stats: CycleStats,
    },
    /// Apply stopped (a stop request, or a failed request) with every write it sent settled:
    /// everything below `upto` is written, and the backup then had `backup_etag` (None when
    /// it could not be read or writes may still land).
    Stopped {
        upto: u64,
        stats: CycleStats,
        backup_etag: Option<String>,
    },
    CopyStarted {
        copy_id: String,
    },
    CopyDone,
    /// The copy failed or was aborted: start it again.
    CopyFailed {
        reason: String,
    },
    /// The service cannot read the source (no SAS can be made for it): seed by copying every
    /// page of `S(n)` through snapback instead (Apply with no diff base).
    CopyUnavailable {
        reason: String,
    },
    BackupSnapshot {
        snapshot: SnapshotId,
        etag: String,
    },
    Pruned,
}

/// An outcome that makes no sense in the current phase: a bug, never a user error.
#[derive(Debug, thiserror::Error)]
#[error("cycle {cycle} of disk {disk}: outcome {outcome} is invalid in phase {phase}")]
pub struct InvalidTransition {
    pub disk: String,
    pub cycle: i64,
    pub phase: PhaseName,
    pub outcome: String,
}

/// Whether an incremental cycle may diff `S(n)` (of `size`) against `base`: None, or the
/// reason it re-seeds instead (a repair, with a warning). `boundary`: a size no diff can
/// cross ([`crate::source::managed_disk::MANAGED_DIFF_BOUNDARY`] for managed disks).
pub fn base_verdict(
    base: &SnapshotId,
    state: &BaseState,
    size: u64,
    boundary: Option<u64>,
    source: &str,
) -> Option<String> {
    match state {
        BaseState::Gone => Some(format!("diff base snapshot {base} was deleted")),
        BaseState::OtherSource => Some(format!(
            "diff base snapshot {base} is not a snapshot of {source}"
        )),
        BaseState::Recreated { was, now } => Some(format!(
            "{source} was deleted and re-created since diff base snapshot {base} was taken \
             (sourceUniqueId {was}, now {now}): a new chain starts on the new disk"
        )),
        BaseState::Present { size: before } => boundary
            .filter(|&b| (*before <= b) != (size <= b))
            .map(|b| {
                format!(
                    "{source} was resized from {before} to {size} bytes, across {} GiB: \
                     incremental snapshots cannot be diffed across that size, so a new \
                     chain starts",
                    b >> 30
                )
            }),
    }
}

/// The next action for a record, or None when the cycle is done.
pub fn next_action(rec: &CycleRecord) -> Option<Action> {
    Some(match &rec.phase {
        Phase::Snapshot { .. } => Action::TakeSourceSnapshot,
        Phase::Diff { base, .. } => Action::CheckDiffBase {
            base: base.snapshot.clone(),
            expected_backup_etag: base.backup_etag.clone().filter(|_| !rec.backup_touched),
        },
        Phase::Apply {
            source,
            size,
            base,
            applied_upto,
            backup_etag,
        } => Action::ApplyDiff {
            source: source.clone(),
            base: base.clone(),
            size: *size,
            from: *applied_upto,
            expected_backup_etag: backup_etag.clone(),
        },
        Phase::Copy {
            source,
            copy_id: Some(id),
            ..
        } => Action::AwaitCopy {
            source: source.clone(),
            copy_id: id.clone(),
        },
        Phase::Copy { source, .. } => Action::StartCopy {
            source: source.clone(),
        },
        Phase::BackupSnapshot { source } => Action::TakeBackupSnapshot {
            source: source.clone(),
        },
        Phase::Prune { source, .. } => Action::PruneSource {
            keep: source.clone(),
        },
        Phase::Done { .. } => return None,
    })
}

/// Moves a record on by an outcome. `now` stamps the end of the cycle.
pub fn advance(rec: &mut CycleRecord, outcome: Outcome, now: i64) -> Result<(), InvalidTransition> {
    use Outcome as O;
    use Phase as P;
    let phase = std::mem::replace(&mut rec.phase, P::Snapshot { base: None });
    let (next, outcome) = match (phase, outcome) {
        (P::Snapshot { base }, O::SourceSnapshot { snapshot, size }) => (
            match base {
                None => P::Copy {
                    source: snapshot,
                    size,
                    copy_id: None,
                },
                Some(base) => P::Diff {
                    source: snapshot,
                    size,
                    base,
                },
            },
            None,
        ),
        (P::Diff { source, size, base }, O::DiffBaseOk) => (
            P::Apply {
                source,
                size,
                // What the diff phase just found: the apply checks it again before writing.
                backup_etag: base.backup_etag.filter(|_| !rec.backup_touched),
                base: Some(base.snapshot),
                applied_upto: 0,
            },
            None,
        ),
        (P::Diff { source, size, .. } | P::Apply { source, size, .. }, O::Repair { reason }) => {
            rec.kind = CycleKind::Seed;
            rec.repair_reason = Some(reason);
            (
                P::Copy {
                    source,
                    size,
                    copy_id: None,
                },
                None,
            )
        }
        (P::Apply { .. }, O::SourceSnapshotGone) => {
            // The backup holds part of a diff whose S(n) is gone. A new S(n) diffed against
            // S(n-1) would not fix it: a page applied from the old S(n) and cleared on the
            // source since was never in S(n-1), so no diff from S(n-1) names it and it would
            // stay stale. Only a full copy of a new S(n) makes the backup equal to it.
            rec.backup_touched = true;
            rec.kind = CycleKind::Seed;
            rec.repair_reason =
                Some("the source snapshot vanished during apply; re-seeding from a new one".into());
            (P::Snapshot { base: None }, None)
        }
        (P::Copy { .. }, O::SourceSnapshotGone) => {
            rec.backup_touched = true;
            (P::Snapshot { base: None }, None)
        }
        (
            P::Apply {
                source, size, base, ..
            },
            O::Applied { upto, done, stats },
        ) => {
            rec.backup_touched = true;
            rec.stats.add(&stats);
            let next = if done {
                P::BackupSnapshot { source }
            } else {
                // Writes may be in flight: the backup's ETag is unknown until they settle.
                P::Apply {
                    source,
                    size,
                    base,
                    applied_upto: upto,
                    backup_etag: None,
                }
            };
            (next, None)
        }
        (
            P::Apply {
                source, size, base, ..
            },
            O::Stopped {
                upto,
                stats,
                backup_etag,
            },
        ) => {
            rec.backup_touched = true;
            rec.stats.add(&stats);
            (
                P::Apply {
                    source,
                    size,
                    base,
                    applied_upto: upto,
                    backup_etag,
                },
                None,
            )
        }
        (P::Copy { source, size, .. }, O::CopyStarted { copy_id }) => {
            rec.backup_touched = true;
            (
                P::Copy {
                    source,
                    size,
                    copy_id: Some(copy_id),
                },
                None,
            )
        }
        (P::Copy { source, size, .. }, O::CopyDone) => {
            rec.stats.bytes_written += size;
            (P::BackupSnapshot { source }, None)
        }
        (P::Copy { source, size, .. }, O::CopyFailed { .. }) => (
            P::Copy {
                source,
                size,
                copy_id: None,
            },
            None,
        ),
        (P::Copy { source, size, .. }, O::CopyUnavailable { .. }) => {
            // Seed by client copy: Apply with no diff base.
            rec.kind = CycleKind::Seed;
            (
                P::Apply {
                    source,
                    size,
                    base: None,
                    applied_upto: 0,
                    // A seed from offset 0 makes the backup blob anew: nothing to check.
                    backup_etag: None,
                },
                None,
            )
        }
        (P::BackupSnapshot { .. }, O::Repair { reason }) => {
            // The backup changed after this cycle's last write: what it holds is not S(n).
            // A new seed (from a new S(n); prune sweeps this one) rewrites it whole.
            rec.kind = CycleKind::Seed;
            rec.repair_reason = Some(reason);
            rec.backup_touched = true;
            rec.written_etag = None;
            (P::Snapshot { base: None }, None)
        }
        (P::BackupSnapshot { source }, O::BackupSnapshot { snapshot, etag }) => (
            P::Prune {
                source,
                backup_snapshot: snapshot,
                backup_etag: etag,
            },
            None,
        ),
        (
            P::Prune {
                source,
                backup_snapshot,
                backup_etag,
            },
            O::Pruned,
        ) => (
            P::Done {
                source,
                backup_snapshot,
                backup_etag,
                finished_at: now,
            },
            None,
        ),
        (phase, outcome) => (phase, Some(outcome)),
    };
    rec.phase = next;
    match outcome {
        None => Ok(()),
        Some(outcome) => Err(InvalidTransition {
            disk: rec.disk.clone(),
            cycle: rec.id,
            phase: rec.phase.name(),
            outcome: format!("{outcome:?}"),
        }),
    }
}

#[cfg(test)]
mod tests;
