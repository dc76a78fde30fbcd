//! Tests of the page-blob restore: promote, copy, cleanup on failure, `--at`, rebase, over
//! the in-memory storage. One file because they share the world of restore points they build.

use super::*;
use crate::storage::fake::MemBlobs;

const CONFIG: &str = "state_dir = \"/tmp/unused\"\n\
    [accounts.premium]\nendpoint = \"http://127.0.0.1:1/premium\"\nshared_key_env = \"X\"\n\
    [accounts.backup]\nendpoint = \"http://127.0.0.1:1/backup\"\nshared_key_env = \"X\"\n\
    [[disk]]\nname = \"d1\"\nsource = \"premium/vhds/d1.vhd\"\nbackup = \"backup/backups/d1\"\n\
    retention = { keep_last = 5, daily = 7 }\n";

struct World {
    blobs: MemBlobs,
    store: StateStore,
    disk: DiskConfig,
    points: Vec<(String, Vec<u8>)>,
}

/// Three restore points of d1 whose content differs, made by hand as a cycle would.
async fn world() -> World {
    let cfg = crate::config::Config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
    let disk = cfg.disks[0].clone();
    let blobs = MemBlobs::new();
    let (src, bk) = (disk.blob_source().unwrap().clone(), disk.backup.clone());
    let mut points = Vec::new();
    for i in 0..3u8 {
        blobs.write(&src, u64::from(i) * 4096, &[i + 1; 4096]);
        blobs.write(&bk, u64::from(i) * 4096, &[i + 1; 4096]);
        let s = blobs
            .create_snapshot(&src, &tags::source_snapshot("d1", "c"))
            .await
            .unwrap();
        let b = blobs
            .create_snapshot(
                &bk,
                &tags::restore_point("d1", "c", &SnapshotId::new(s.clone())),
            )
            .await
            .unwrap();
        points.push((b.clone(), blobs.content(&bk, Some(&b)).unwrap()));
    }
    World {
        blobs,
        store: StateStore::open_in_memory().unwrap(),
        disk,
        points,
    }
}

fn restorer(w: &World) -> Restorer<'_> {
    let mut r = Restorer::new(&w.blobs, &w.store, &w.disk);
    r.poll = (Duration::from_millis(1), Duration::from_millis(2));
    r
}

fn req(point: PointSelector, target: &BlobRef) -> RestoreRequest {
    RestoreRequest {
        point,
        target: target.clone(),
        rebase: None,
        force: false,
    }
}

/// A restore of the world's third (newest) restore point to `target`.
fn third_point(w: &World, target: &BlobRef) -> RestoreRequest {
    req(PointSelector::Snapshot(w.points[2].0.clone()), target)
}

#[tokio::test]
async fn restores_a_middle_point_and_cleans_up_the_promoted_blob() {
    let w = world().await;
    let target = BlobRef::new("premium", "vhds", "d1-restored.vhd");
    let (b, want) = &w.points[1];
    let rep = restorer(&w)
        .restore(&req(PointSelector::Snapshot(b.clone()), &target))
        .await
        .unwrap();
    assert_eq!(w.blobs.content(&target, None).unwrap(), *want);
    assert!(!rep.promoted_kept);
    assert!(
        w.blobs.content(&rep.promoted, None).is_none(),
        "promoted blob removed"
    );
    let meta = w
        .blobs
        .properties(&target, None)
        .await
        .unwrap()
        .unwrap()
        .metadata;
    assert_eq!(tags::restore_state(&meta), Some(RestoreState::Complete));
}

#[tokio::test]
async fn refuses_an_existing_target_without_force_and_writes_nothing() {
    let w = world().await;
    let target = BlobRef::new("premium", "vhds", "taken.vhd");
    w.blobs.write(&target, 0, &[9u8; 512]);
    let before = w.blobs.blob_names();
    let e = restorer(&w)
        .restore(&req(
            PointSelector::Snapshot(w.points[0].0.clone()),
            &target,
        ))
        .await
        .unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("taken.vhd"), "{e}");
    assert_eq!(w.blobs.blob_names(), before);
    assert_eq!(w.blobs.content(&target, None).unwrap(), vec![9u8; 512]);
    // With force it is replaced.
    let mut r = req(PointSelector::Snapshot(w.points[0].0.clone()), &target);
    r.force = true;
    restorer(&w).restore(&r).await.unwrap();
    assert_eq!(w.blobs.content(&target, None).unwrap(), w.points[0].1);
}

/// `--force` replaces an existing target only once the copy to it has started: every
/// failure before that leaves its bytes as they were.
#[tokio::test]
async fn force_keeps_the_existing_target_when_the_restore_fails_before_copying() {
    let mut w = world().await;
    let target = BlobRef::new("premium", "vhds", "kept.vhd");
    w.blobs.write(&target, 0, &[7u8; 1024]);
    let forced = |point| RestoreRequest {
        force: true,
        ..req(point, &target)
    };
    let before = w.blobs.blob_names();

    // The restore point does not exist.
    let e = restorer(&w)
        .restore(&forced(PointSelector::Snapshot(
            "2001-01-01T00:00:00.0000000Z".into(),
        )))
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::UnknownRestorePoint { .. }), "{e}");
    assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);

    // The promote copy fails (the backup cannot be read).
    w.blobs.fail_copies(1);
    let e = restorer(&w)
        .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
    assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);

    // Copy Blob to the target is refused at its start.
    w.blobs.refuse_copy_to = Some(target.clone());
    let e = restorer(&w)
        .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("kept.vhd"), "{e}");
    assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);
    assert_eq!(w.blobs.blob_names(), before, "promoted blob removed");

    // Once the copy can start, --force replaces it.
    w.blobs.refuse_copy_to = None;
    restorer(&w)
        .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
        .await
        .unwrap();
    assert_eq!(w.blobs.content(&target, None).unwrap(), w.points[1].1);
}

#[tokio::test]
async fn a_failed_copy_leaves_no_blob_behind() {
    let w = world().await;
    let target = BlobRef::new("premium", "vhds", "fails.vhd");
    let before = w.blobs.blob_names();
    w.blobs.fail_copies(1);
    let e = restorer(&w)
        .restore(&third_point(&w, &target))
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
    assert_eq!(w.blobs.blob_names(), before, "promoted blob removed");
    // Interrupted (Ctrl-C) while the promote copy is pending: aborted and removed.
    let mut r = restorer(&w);
    r.now += 1;
    w.blobs.fail_copies(0);
    let stop = CancellationToken::new();
    stop.cancel();
    r.stop = stop;
    let e = r.restore(&third_point(&w, &target)).await.unwrap_err();
    assert!(matches!(e, RestoreError::Interrupted { .. }), "{e}");
    assert_eq!(w.blobs.blob_names(), before, "interrupted: nothing left");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_copy_fails_naming_the_stall_and_leaves_no_blob_behind() {
    let mut w = world().await;
    w.blobs.copy_polls = u32::MAX;
    let target = BlobRef::new("premium", "vhds", "stalls.vhd");
    let before = w.blobs.blob_names();
    let mut r = restorer(&w);
    r.copy_stall = Duration::from_secs(5);
    let e = r.restore(&third_point(&w, &target)).await.unwrap_err();
    assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("stalled: pending at 0 of 12288 bytes copied, no progress for 5s"),
        "{msg}"
    );
    assert_eq!(
        w.blobs.blob_names(),
        before,
        "promoted blob aborted and removed"
    );
}

#[tokio::test]
async fn at_picks_the_newest_point_captured_at_or_before() {
    let w = world().await;
    let r = restorer(&w);
    // Fake snapshot ids are 2026-01-01T00:00:00.<tick>Z; source snapshots precede points.
    let second_source = {
        let bk = w.disk.backup.clone();
        let snaps = w.blobs.list_snapshots(&bk).await.unwrap();
        tags::source_of(&snaps[1].metadata).unwrap().to_string()
    };
    let at = parse_timestamp(&second_source).unwrap();
    let got = r.choose(&PointSelector::At(at)).await.unwrap();
    assert_eq!(got.snapshot, w.points[1].0);
    let e = r
        .choose(&PointSelector::At(
            parse_timestamp("2025-01-01T00:00:00Z").unwrap(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, RestoreError::NoRestorePointBefore { .. }));
}

#[tokio::test]
async fn rebase_records_a_chain_whose_next_cycle_is_incremental() {
    let w = world().await;
    let target = BlobRef::new("premium", "vhds", "d1-new.vhd");
    let mut r = third_point(&w, &target);
    r.rebase = Some(Rebase {
        name: "d1-new".into(),
    });
    let rep = restorer(&w).restore(&r).await.unwrap();
    let chain = rep.rebased.unwrap();
    let state = w.store.disk("d1-new").unwrap().unwrap();
    assert_eq!(
        state.base_snapshot.as_deref(),
        Some(chain.source_snapshot.as_str())
    );
    assert_eq!(state.backup, rep.promoted.to_string());
    assert_eq!(w.store.restore_points("d1-new").unwrap().len(), 1);
    // Run a cycle of the new disk: it must be incremental and move one page.
    let spec = crate::cycle::runner::DiskSpec {
        name: "d1-new".into(),
        source: crate::config::DiskSource::Blob(target.clone()),
        backup: rep.promoted.clone(),
        concurrency: 2,
        copy_mode: crate::config::CopyMode::Client,
    };
    w.blobs.write(&target, 8192, &[0xAB; 512]);
    let clock = crate::model::SystemClock;
    let runner = crate::cycle::runner::Runner::new(&w.blobs, &w.store, &clock, &spec);
    let rec = runner.run_cycle().await.unwrap();
    assert_eq!(rec.kind, crate::model::record::CycleKind::Incremental);
    assert_eq!(rec.stats.bytes_written, 512);
    let (b1, _) = rec.phase.restore_point().unwrap();
    assert_eq!(
        w.blobs.content(&rep.promoted, Some(b1.as_str())),
        w.blobs.content(&target, None)
    );
    // A name already in the state database is refused before anything is written.
    let mut again = req(
        PointSelector::Snapshot(w.points[0].0.clone()),
        &BlobRef::new("premium", "vhds", "x.vhd"),
    );
    again.rebase = Some(Rebase {
        name: "d1-new".into(),
    });
    assert!(restorer(&w).restore(&again).await.unwrap_err().is_usage());
}
