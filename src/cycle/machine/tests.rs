//! The machine's tests: every phase's transitions, the happy paths of a seed and an
//! incremental cycle, repairs and reseeds, and the transitions it refuses. In their own file
//! because they outgrow the machine itself, which reads best in one piece.

use super::*;
use crate::model::record::DiffBase;
use crate::source::managed_disk::MANAGED_DIFF_BOUNDARY;

fn id(s: &str) -> SnapshotId {
    SnapshotId::new(s)
}

/// The first step of every cycle: S(n) = "S1", 8 bytes.
fn take_s1(r: &mut CycleRecord) {
    let s1 = Outcome::SourceSnapshot {
        snapshot: id("S1"),
        size: 8,
    };
    advance(r, s1, 0).unwrap();
}

fn incremental() -> CycleRecord {
    let base = DiffBase {
        snapshot: id("S0"),
        backup_etag: Some("e0".into()),
    };
    CycleRecord::new("d", "t".into(), Some(base), 0)
}

fn applied(upto: u64, done: bool) -> Outcome {
    Outcome::Applied {
        upto,
        done,
        stats: CycleStats {
            bytes_written: 512,
            ..Default::default()
        },
    }
}

#[test]
fn incremental_happy_path() {
    let mut r = incremental();
    assert_eq!(r.kind, CycleKind::Incremental);
    let steps = [
        (
            Action::TakeSourceSnapshot,
            Outcome::SourceSnapshot {
                snapshot: id("S1"),
                size: 4096,
            },
        ),
        (
            Action::CheckDiffBase {
                base: id("S0"),
                expected_backup_etag: Some("e0".into()),
            },
            Outcome::DiffBaseOk,
        ),
        (
            Action::ApplyDiff {
                source: id("S1"),
                base: Some(id("S0")),
                size: 4096,
                from: 0,
                expected_backup_etag: Some("e0".into()),
            },
            applied(1024, false),
        ),
        (
            Action::ApplyDiff {
                source: id("S1"),
                base: Some(id("S0")),
                size: 4096,
                from: 1024,
                expected_backup_etag: None,
            },
            applied(4096, true),
        ),
        (
            Action::TakeBackupSnapshot { source: id("S1") },
            Outcome::BackupSnapshot {
                snapshot: id("B1"),
                etag: "e1".into(),
            },
        ),
        (Action::PruneSource { keep: id("S1") }, Outcome::Pruned),
    ];
    for (action, outcome) in steps {
        assert_eq!(next_action(&r), Some(action));
        advance(&mut r, outcome, 9).unwrap();
    }
    assert_eq!(next_action(&r), None);
    assert_eq!(r.finished_at(), Some(9));
    assert_eq!(r.stats.bytes_written, 1024);
    assert_eq!(r.phase.restore_point(), Some((&id("B1"), &id("S1"))));
}

#[test]
fn first_cycle_seeds_and_retries_a_failed_copy() {
    let mut r = CycleRecord::new("d", "t".into(), None, 0);
    assert_eq!(r.kind, CycleKind::Seed);
    take_s1(&mut r);
    assert_eq!(
        next_action(&r),
        Some(Action::StartCopy { source: id("S1") })
    );
    let started = |c: &str| Outcome::CopyStarted { copy_id: c.into() };
    advance(&mut r, started("c"), 0).unwrap();
    assert_eq!(
        next_action(&r),
        Some(Action::AwaitCopy {
            source: id("S1"),
            copy_id: "c".into()
        })
    );
    advance(&mut r, Outcome::CopyFailed { reason: "x".into() }, 0).unwrap();
    assert_eq!(
        next_action(&r),
        Some(Action::StartCopy { source: id("S1") })
    );
    advance(&mut r, started("c2"), 0).unwrap();
    advance(&mut r, Outcome::CopyDone, 0).unwrap();
    assert_eq!(
        next_action(&r),
        Some(Action::TakeBackupSnapshot { source: id("S1") })
    );
}

#[test]
fn a_copy_the_service_cannot_read_becomes_a_full_apply() {
    let mut r = incremental();
    take_s1(&mut r);
    let repair = Outcome::Repair {
        reason: "tampered".into(),
    };
    advance(&mut r, repair, 0).unwrap();
    let unavailable = Outcome::CopyUnavailable {
        reason: "no SAS".into(),
    };
    advance(&mut r, unavailable, 0).unwrap();
    assert_eq!(r.kind, CycleKind::Seed);
    assert_eq!(
        next_action(&r),
        Some(Action::ApplyDiff {
            source: id("S1"),
            base: None,
            size: 8,
            from: 0,
            expected_backup_etag: None,
        })
    );
}

#[test]
fn unusable_base_turns_the_cycle_into_a_seed_keeping_the_snapshot() {
    let mut r = incremental();
    take_s1(&mut r);
    let repair = Outcome::Repair {
        reason: "tampered".into(),
    };
    advance(&mut r, repair, 0).unwrap();
    assert_eq!(r.kind, CycleKind::Seed);
    assert_eq!(
        next_action(&r),
        Some(Action::StartCopy { source: id("S1") })
    );
}

#[test]
fn vanished_source_snapshot_mid_apply_reseeds_from_a_new_snapshot() {
    let mut r = incremental();
    take_s1(&mut r);
    advance(&mut r, Outcome::DiffBaseOk, 0).unwrap();
    advance(&mut r, applied(4, false), 0).unwrap();
    advance(&mut r, Outcome::SourceSnapshotGone, 0).unwrap();
    assert_eq!(next_action(&r), Some(Action::TakeSourceSnapshot));
    assert!(r.backup_touched);
    assert_eq!(r.kind, CycleKind::Seed);
    take_s1(&mut r);
    // Never a diff onto the partly applied backup: a full copy of the new S(n).
    assert_eq!(
        next_action(&r),
        Some(Action::StartCopy { source: id("S1") })
    );
}

/// A stopped apply records the backup's ETag; the resumed apply is handed it, and the
/// next progress checkpoint forgets it (writes may be in flight again).
#[test]
fn a_stopped_apply_hands_its_etag_to_the_resumed_one() {
    let mut r = incremental();
    take_s1(&mut r);
    advance(&mut r, Outcome::DiffBaseOk, 0).unwrap();
    let stopped = Outcome::Stopped {
        upto: 4,
        stats: CycleStats::default(),
        backup_etag: Some("e2".into()),
    };
    advance(&mut r, stopped, 0).unwrap();
    let resume = |r: &CycleRecord| match next_action(r) {
        Some(Action::ApplyDiff {
            from,
            expected_backup_etag,
            ..
        }) => (from, expected_backup_etag),
        other => panic!("{other:?}"),
    };
    assert_eq!(resume(&r), (4, Some("e2".into())));
    advance(&mut r, applied(6, false), 0).unwrap();
    assert_eq!(resume(&r), (6, None));
}

/// Records written before `backup_etag` existed load (as unknown), and an unknown one
/// is not written out, so older builds read newer records of this phase.
#[test]
fn apply_records_without_the_etag_load() {
    let old = r#"{"apply":{"source":"S1","size":8,"base":"S0","applied_upto":4}}"#;
    let phase: Phase = serde_json::from_str(old).unwrap();
    assert_eq!(
        phase,
        Phase::Apply {
            source: id("S1"),
            size: 8,
            base: Some(id("S0")),
            applied_upto: 4,
            backup_etag: None,
        }
    );
    assert_eq!(serde_json::to_string(&phase).unwrap(), old);
}

#[test]
fn invalid_transitions_are_reported_not_applied() {
    let mut r = incremental();
    let before = r.clone();
    let err = advance(&mut r, Outcome::Pruned, 0).unwrap_err();
    assert_eq!(err.phase, PhaseName::Snapshot);
    assert_eq!(r, before);
}

/// Every path through the machine, driven by every outcome in every phase: a record
/// that can prune always knows `S(n)` (and `B(n)`), and a finished one names its restore
/// point. (The types make the opposite unrepresentable; this shows the transitions never
/// leave the paths the types allow, e.g. by resetting to an earlier phase.)
#[test]
fn no_transition_reaches_prune_without_its_snapshots() {
    let outcomes = [
        Outcome::SourceSnapshot {
            snapshot: id("S1"),
            size: 8,
        },
        Outcome::SourceSnapshotGone,
        Outcome::DiffBaseOk,
        Outcome::Repair { reason: "r".into() },
        applied(4, false),
        applied(8, true),
        Outcome::Stopped {
            upto: 4,
            stats: CycleStats::default(),
            backup_etag: Some("e2".into()),
        },
        Outcome::CopyStarted {
            copy_id: "c".into(),
        },
        Outcome::CopyDone,
        Outcome::CopyFailed { reason: "f".into() },
        Outcome::CopyUnavailable { reason: "u".into() },
        Outcome::BackupSnapshot {
            snapshot: id("B1"),
            etag: "e1".into(),
        },
        Outcome::Pruned,
    ];
    let mut seen = 0;
    let mut todo = vec![
        (incremental(), 0),
        (CycleRecord::new("d", "t".into(), None, 0), 0),
    ];
    while let Some((r, depth)) = todo.pop() {
        if let Some(Action::PruneSource { keep }) = next_action(&r) {
            assert_eq!(keep, id("S1"));
            assert_eq!(r.phase.restore_point(), Some((&id("B1"), &id("S1"))));
            seen += 1;
        }
        if r.is_done() {
            assert!(r.phase.restore_point().is_some());
        }
        if depth == 9 {
            continue;
        }
        for o in &outcomes {
            let mut next = r.clone();
            if advance(&mut next, o.clone(), 1).is_ok() {
                todo.push((next, depth + 1));
            }
        }
    }
    assert!(seen > 0, "some path reaches Prune");
}

/// Issue 17, item 3: a re-created disk, a snapshot of another disk, a deleted base and
/// a resize across 4 TiB each re-seed; a resize on one side of it diffs.
#[test]
fn diff_bases_that_cannot_be_diffed_reseed() {
    let b = id("S0");
    let tib = 1u64 << 40;
    let verdict = |state: BaseState, size: u64| {
        base_verdict(&b, &state, size, Some(MANAGED_DIFF_BOUNDARY), "disk")
    };
    let present = |size| BaseState::Present { size };
    assert_eq!(verdict(present(tib), 2 * tib), None);
    assert_eq!(verdict(present(5 * tib), 6 * tib), None);
    assert_eq!(verdict(present(4 * tib), 4 * tib), None);
    assert!(verdict(present(4 * tib), 4 * tib + 512).is_some());
    assert!(verdict(present(2 * tib), 8 * tib)
        .unwrap()
        .contains("across 4096 GiB"));
    let recreated = BaseState::Recreated {
        was: "u1".into(),
        now: "u2".into(),
    };
    let reason = verdict(recreated, tib).unwrap();
    assert!(reason.contains("re-created"), "{reason}");
    // The warnings read as one sentence (they once carried the source's indentation).
    assert!(!reason.contains("  "), "{reason}");
    let reason = verdict(present(tib), 5 * tib).unwrap();
    assert!(!reason.contains("  "), "{reason}");
    assert!(verdict(BaseState::OtherSource, tib).is_some());
    assert!(verdict(BaseState::Gone, tib).is_some());
    // A page blob has no boundary.
    assert_eq!(base_verdict(&b, &present(tib), 8 * tib, None, "blob"), None);
}

#[test]
fn rebase_is_a_finished_seed_naming_its_restore_point() {
    let r = CycleRecord::rebased(
        "n",
        "t".into(),
        id("S0"),
        id("B0"),
        "e".into(),
        "x".into(),
        5,
    );
    assert_eq!(next_action(&r), None);
    assert_eq!(r.phase.restore_point(), Some((&id("B0"), &id("S0"))));
    assert_eq!(r.finished_at(), Some(5));
}
