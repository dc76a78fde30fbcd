//! The backup cycle as a pure state machine: a persisted [`CycleRecord`], the [`Action`] it
//! calls for next, and how an [`Outcome`] moves it on. No I/O here; `runner` executes actions
//! and persists records. The invariants this implements are in `docs/design.md`.

use serde::{Deserialize, Serialize};

/// Seed copies the whole source snapshot; Incremental applies the diff since the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CycleKind {
    Seed,
    Incremental,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Snapshot,
    Diff,
    Apply,
    Copy,
    BackupSnapshot,
    Prune,
    Done,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Snapshot => "snapshot",
            Phase::Diff => "diff",
            Phase::Apply => "apply",
            Phase::Copy => "copy",
            Phase::BackupSnapshot => "backup-snapshot",
            Phase::Prune => "prune",
            Phase::Done => "done",
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
    /// `S(n-1)`, the diff base (incremental only).
    pub base_snapshot: Option<String>,
    /// The backup ETag the last restore point left; checked before the first write.
    pub expected_backup_etag: Option<String>,
    /// Set once this cycle may have written to the backup base (its ETag no longer proves
    /// anything about tampering).
    pub backup_touched: bool,
    /// `S(n)`, once taken.
    pub source_snapshot: Option<String>,
    pub source_size: u64,
    /// Apply checkpoint: every change below this offset is in the backup.
    pub applied_upto: u64,
    /// Pending Copy Blob (seed).
    pub copy_id: Option<String>,
    /// `B(n)`, once taken, and the backup ETag right after it.
    pub backup_snapshot: Option<String>,
    pub backup_etag: Option<String>,
    /// Why an incremental cycle turned into a seed.
    pub repair_reason: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub stats: CycleStats,
}

impl CycleRecord {
    /// A new cycle: a seed when there is no diff base yet, else incremental.
    pub fn new(
        disk: &str,
        tag: String,
        base_snapshot: Option<String>,
        expected_backup_etag: Option<String>,
        now: i64,
    ) -> Self {
        CycleRecord {
            id: 0,
            tag,
            disk: disk.to_string(),
            kind: if base_snapshot.is_some() {
                CycleKind::Incremental
            } else {
                CycleKind::Seed
            },
            phase: Phase::Snapshot,
            base_snapshot,
            expected_backup_etag,
            backup_touched: false,
            source_snapshot: None,
            source_size: 0,
            applied_upto: 0,
            copy_id: None,
            backup_snapshot: None,
            backup_etag: None,
            repair_reason: None,
            started_at: now,
            finished_at: None,
            stats: CycleStats::default(),
        }
    }
}

/// What the runner must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Find the source snapshot tagged with this cycle, or take one.
    TakeSourceSnapshot,
    /// Check the backup base and the diff base are what the chain expects.
    CheckDiffBase,
    /// Resize the backup, then apply the diff from `applied_upto`.
    ApplyDiff,
    /// Start Copy Blob of `S(n)` over the backup base.
    StartCopy,
    /// Wait for the copy `copy_id` to finish.
    AwaitCopy,
    /// Find the backup snapshot tagged with this cycle, or take one.
    TakeBackupSnapshot,
    /// Delete every tagged source snapshot of the disk except `S(n)`.
    PruneSource,
}

/// What executing an action found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    SourceSnapshot {
        snapshot: String,
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
        snapshot: String,
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
    pub phase: &'static str,
    pub outcome: String,
}

/// The next action for a record, or None when the cycle is done.
pub fn next_action(rec: &CycleRecord) -> Option<Action> {
    Some(match rec.phase {
        Phase::Snapshot => Action::TakeSourceSnapshot,
        Phase::Diff => Action::CheckDiffBase,
        Phase::Apply => Action::ApplyDiff,
        Phase::Copy if rec.copy_id.is_some() => Action::AwaitCopy,
        Phase::Copy => Action::StartCopy,
        Phase::BackupSnapshot => Action::TakeBackupSnapshot,
        Phase::Prune => Action::PruneSource,
        Phase::Done => return None,
    })
}

/// Moves a record on by an outcome. `now` stamps the end of the cycle.
pub fn advance(rec: &mut CycleRecord, outcome: Outcome, now: i64) -> Result<(), InvalidTransition> {
    use Outcome as O;
    use Phase as P;
    match (rec.phase, outcome) {
        (P::Snapshot, O::SourceSnapshot { snapshot, size }) => {
            rec.source_snapshot = Some(snapshot);
            rec.source_size = size;
            rec.phase = match rec.kind {
                CycleKind::Seed => P::Copy,
                CycleKind::Incremental => P::Diff,
            };
        }
        (P::Diff, O::DiffBaseOk) => rec.phase = P::Apply,
        (P::Diff | P::Apply, O::Repair { reason }) => {
            rec.kind = CycleKind::Seed;
            rec.repair_reason = Some(reason);
            rec.applied_upto = 0;
            rec.phase = P::Copy;
        }
        (P::Apply | P::Copy, O::SourceSnapshotGone) => {
            // A new S(n) is diffed against the same S(n-1): every page written after S(n-1)
            // shows up again, so what was half applied is applied again in full.
            rec.source_snapshot = None;
            rec.applied_upto = 0;
            rec.copy_id = None;
            rec.backup_touched = true;
            rec.phase = P::Snapshot;
        }
        (P::Apply, O::Applied { upto, done, stats }) => {
            rec.applied_upto = upto;
            rec.backup_touched = true;
            rec.stats.add(&stats);
            if done {
                rec.phase = P::BackupSnapshot;
            }
        }
        (P::Copy, O::CopyStarted { copy_id }) => {
            rec.copy_id = Some(copy_id);
            rec.backup_touched = true;
        }
        (P::Copy, O::CopyDone) => {
            rec.stats.bytes_written += rec.source_size;
            rec.phase = P::BackupSnapshot;
        }
        (P::Copy, O::CopyFailed { .. }) => rec.copy_id = None,
        (P::Copy, O::CopyUnavailable { .. }) => {
            rec.base_snapshot = None;
            rec.applied_upto = 0;
            rec.phase = P::Apply;
        }
        (P::BackupSnapshot, O::BackupSnapshot { snapshot, etag }) => {
            rec.backup_snapshot = Some(snapshot);
            rec.backup_etag = Some(etag);
            rec.phase = P::Prune;
        }
        (P::Prune, O::Pruned) => {
            rec.phase = P::Done;
            rec.finished_at = Some(now);
        }
        (phase, outcome) => {
            return Err(InvalidTransition {
                disk: rec.disk.clone(),
                cycle: rec.id,
                phase: phase.as_str(),
                outcome: format!("{outcome:?}"),
            })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first step of every cycle: S(n) = "S1", 8 bytes.
    fn take_s1(r: &mut CycleRecord) {
        let s1 = Outcome::SourceSnapshot {
            snapshot: "S1".into(),
            size: 8,
        };
        advance(r, s1, 0).unwrap();
    }

    fn incremental() -> CycleRecord {
        CycleRecord::new("d", "t".into(), Some("S0".into()), Some("e0".into()), 0)
    }

    #[test]
    fn incremental_happy_path() {
        let mut r = incremental();
        assert_eq!(r.kind, CycleKind::Incremental);
        let steps = [
            (
                Action::TakeSourceSnapshot,
                Outcome::SourceSnapshot {
                    snapshot: "S1".into(),
                    size: 4096,
                },
            ),
            (Action::CheckDiffBase, Outcome::DiffBaseOk),
            (
                Action::ApplyDiff,
                Outcome::Applied {
                    upto: 1024,
                    done: false,
                    stats: CycleStats::default(),
                },
            ),
            (
                Action::ApplyDiff,
                Outcome::Applied {
                    upto: 4096,
                    done: true,
                    stats: CycleStats {
                        bytes_written: 512,
                        ..Default::default()
                    },
                },
            ),
            (
                Action::TakeBackupSnapshot,
                Outcome::BackupSnapshot {
                    snapshot: "B1".into(),
                    etag: "e1".into(),
                },
            ),
            (Action::PruneSource, Outcome::Pruned),
        ];
        for (action, outcome) in steps {
            assert_eq!(next_action(&r), Some(action));
            advance(&mut r, outcome, 9).unwrap();
        }
        assert_eq!(next_action(&r), None);
        assert_eq!(r.phase, Phase::Done);
        assert_eq!(r.finished_at, Some(9));
        assert_eq!(r.stats.bytes_written, 512);
        assert_eq!(r.backup_snapshot.as_deref(), Some("B1"));
    }

    #[test]
    fn first_cycle_seeds_and_retries_a_failed_copy() {
        let mut r = CycleRecord::new("d", "t".into(), None, None, 0);
        assert_eq!(r.kind, CycleKind::Seed);
        take_s1(&mut r);
        assert_eq!(next_action(&r), Some(Action::StartCopy));
        advance(
            &mut r,
            Outcome::CopyStarted {
                copy_id: "c".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(next_action(&r), Some(Action::AwaitCopy));
        advance(&mut r, Outcome::CopyFailed { reason: "x".into() }, 0).unwrap();
        assert_eq!(next_action(&r), Some(Action::StartCopy));
        advance(
            &mut r,
            Outcome::CopyStarted {
                copy_id: "c2".into(),
            },
            0,
        )
        .unwrap();
        advance(&mut r, Outcome::CopyDone, 0).unwrap();
        assert_eq!(next_action(&r), Some(Action::TakeBackupSnapshot));
    }

    #[test]
    fn a_copy_the_service_cannot_read_becomes_a_full_apply() {
        let mut r = incremental();
        take_s1(&mut r);
        advance(
            &mut r,
            Outcome::Repair {
                reason: "tampered".into(),
            },
            0,
        )
        .unwrap();
        advance(
            &mut r,
            Outcome::CopyUnavailable {
                reason: "no SAS".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(
            (r.kind, r.phase, r.base_snapshot.as_deref()),
            (CycleKind::Seed, Phase::Apply, None)
        );
        assert_eq!(next_action(&r), Some(Action::ApplyDiff));
    }

    #[test]
    fn unusable_base_turns_the_cycle_into_a_seed_keeping_the_snapshot() {
        let mut r = incremental();
        take_s1(&mut r);
        advance(
            &mut r,
            Outcome::Repair {
                reason: "tampered".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(r.kind, CycleKind::Seed);
        assert_eq!(r.source_snapshot.as_deref(), Some("S1"));
        assert_eq!(next_action(&r), Some(Action::StartCopy));
    }

    #[test]
    fn vanished_source_snapshot_restarts_from_snapshot_and_skips_etag_check() {
        let mut r = incremental();
        take_s1(&mut r);
        advance(&mut r, Outcome::DiffBaseOk, 0).unwrap();
        advance(
            &mut r,
            Outcome::Applied {
                upto: 4,
                done: false,
                stats: CycleStats::default(),
            },
            0,
        )
        .unwrap();
        advance(&mut r, Outcome::SourceSnapshotGone, 0).unwrap();
        assert_eq!(
            (r.phase, r.applied_upto, r.backup_touched),
            (Phase::Snapshot, 0, true)
        );
    }

    #[test]
    fn invalid_transitions_are_reported_not_applied() {
        let mut r = incremental();
        let before = r.clone();
        let err = advance(&mut r, Outcome::Pruned, 0).unwrap_err();
        assert!(err.to_string().contains("phase snapshot"));
        assert_eq!(r, before);
    }
}
