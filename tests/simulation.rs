//! Simulation of the cycle against the in-memory store: a crash after every action, a crash
//! between an action's effect and its persistence, and a failure at every storage call.
//! Fast and exhaustive; the same properties are tested against Azurite in tests/crash.rs.

use snapback::config::DiskSource;
use snapback::cycle::machine::next_action;
use snapback::cycle::runner::{DiskSpec, Runner};
use snapback::model::pages::ByteRange;
use snapback::model::record::CycleKind;
use snapback::model::{Clock, Timestamp};
use snapback::state::StateStore;
use snapback::storage::fake::MemBlobs;
use snapback::storage::{BlobRef, PageBlobs};

struct FixedClock;
impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        snapback::model::from_unix(1_764_000_000)
    }
}

fn disk() -> DiskSpec {
    DiskSpec {
        name: "d".into(),
        source: DiskSource::Blob(BlobRef::new("premium", "vhds", "d.vhd")),
        backup: BlobRef::new("backup", "backups", "d"),
        concurrency: 3,
        copy_mode: Default::default(),
    }
}

/// A runner that polls copies without waiting (the fake's copy needs two polls).
fn runner<'a>(blobs: &'a MemBlobs, store: &'a StateStore, d: &'a DiskSpec) -> Runner<'a> {
    let mut r = Runner::new(blobs, store, &FixedClock, d);
    r.copy_poll = (
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    r
}

/// A world after one completed seed cycle, with fresh writes and clears on the source.
async fn world() -> (MemBlobs, StateStore, DiskSpec) {
    let blobs = MemBlobs::new();
    let store = StateStore::open_in_memory().unwrap();
    let d = disk();
    blobs
        .create_page_blob(d.source.blob().unwrap(), 64 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(d.source.blob().unwrap(), 0, &[1u8; 4096]);
    blobs.write(d.source.blob().unwrap(), 16 * 512, &[2u8; 2048]);
    runner(&blobs, &store, &d).run_cycle().await.unwrap();
    // Changes for the incremental cycle under test: writes, a rewrite, a clear, a grow.
    blobs.write(d.source.blob().unwrap(), 512, &[3u8; 1024]);
    blobs.write(d.source.blob().unwrap(), 40 * 512, &[4u8; 512]);
    blobs
        .clear_pages(
            d.source.blob().unwrap(),
            ByteRange::new(16 * 512, 18 * 512),
            None,
        )
        .await
        .unwrap();
    blobs
        .resize(d.source.blob().unwrap(), 80 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(d.source.blob().unwrap(), 70 * 512, &[5u8; 512]);
    (blobs, store, d)
}

/// After a completed cycle: the newest restore point equals its source snapshot; there is
/// exactly `points` tagged backup snapshots and one tagged source snapshot.
fn check(blobs: &MemBlobs, store: &StateStore, d: &DiskSpec, points: usize, ctx: &str) {
    let rps = store.restore_points(&d.name).unwrap();
    assert_eq!(rps.len(), points, "{ctx}: restore points in the state");
    let backup_snaps = blobs.snapshot_ids(&d.backup);
    assert_eq!(backup_snaps.len(), points, "{ctx}: backup snapshots");
    let last = rps.last().unwrap();
    assert_eq!(
        blobs.content(&d.backup, Some(&last.snapshot)),
        blobs.content(d.source.blob().unwrap(), Some(&last.source_snapshot)),
        "{ctx}: restore point differs from its source snapshot"
    );
    assert_eq!(
        blobs.snapshot_ids(d.source.blob().unwrap()),
        vec![last.source_snapshot.clone()],
        "{ctx}: source snapshots"
    );
}

#[tokio::test]
async fn crash_after_every_action_resumes_the_same_cycle() {
    let mut k = 0;
    loop {
        let (blobs, store, d) = world().await;
        let r = runner(&blobs, &store, &d);
        let mut rec = r.open_or_resume().await.unwrap();
        let mut finished = false;
        for _ in 0..k {
            if !r.step(&mut rec).await.unwrap() {
                finished = true;
                break;
            }
        }
        if finished {
            check(&blobs, &store, &d, 2, "no crash");
            break;
        }
        // Crash: forget everything in memory; a new process reads the store.
        drop(r);
        let resumed = runner(&blobs, &store, &d).run_cycle().await.unwrap();
        assert_eq!(
            resumed.kind,
            CycleKind::Incremental,
            "crash after {k} steps"
        );
        check(&blobs, &store, &d, 2, &format!("crash after {k} steps"));
        k += 1;
    }
    assert_eq!(k, 5, "snapshot, diff, apply, backup-snapshot, prune");
}

#[tokio::test]
async fn crash_between_effect_and_persistence_never_duplicates() {
    let mut k = 0;
    loop {
        let (blobs, store, d) = world().await;
        let r = runner(&blobs, &store, &d);
        let mut rec = r.open_or_resume().await.unwrap();
        for _ in 0..k {
            r.step(&mut rec).await.unwrap();
        }
        let Some(action) = next_action(&rec) else {
            break;
        };
        // The action takes effect in storage, then the process dies before recording it.
        let _lost = r.execute(action.clone(), &mut rec.clone()).await.unwrap();
        drop(r);
        runner(&blobs, &store, &d).run_cycle().await.unwrap();
        check(&blobs, &store, &d, 2, &format!("crash inside {action:?}"));
        k += 1;
    }
}

#[tokio::test]
async fn failure_at_every_storage_call_then_resume() {
    let mut n = 0;
    loop {
        let (blobs, store, d) = world().await;
        blobs.fail_after(Some(n));
        let first = runner(&blobs, &store, &d).run_cycle().await;
        blobs.fail_after(None);
        let done_first_time = first.is_ok();
        if !done_first_time {
            runner(&blobs, &store, &d).run_cycle().await.unwrap();
        }
        check(&blobs, &store, &d, 2, &format!("failure at call {n}"));
        if done_first_time {
            break;
        }
        n += 1;
    }
    assert!(n > 10, "a cycle makes more than ten calls, saw {n}");
}

#[tokio::test]
async fn tampered_backup_and_deleted_base_reseed_and_keep_old_points() {
    for tamper in ["backup-written", "base-deleted"] {
        let (blobs, store, d) = world().await;
        let first_point = store.restore_points(&d.name).unwrap()[0].clone();
        let first_content = blobs.content(&d.backup, Some(&first_point.snapshot));
        match tamper {
            "backup-written" => blobs.write(&d.backup, 0, &[9u8; 512]),
            _ => blobs
                .delete_snapshot(d.source.blob().unwrap(), &first_point.source_snapshot)
                .await
                .unwrap(),
        }
        let rec = runner(&blobs, &store, &d).run_cycle().await.unwrap();
        assert_eq!(rec.kind, CycleKind::Seed, "{tamper}: repaired by a seed");
        assert!(rec.repair_reason.is_some(), "{tamper}: reason recorded");
        check(&blobs, &store, &d, 2, tamper);
        assert_eq!(
            blobs.content(&d.backup, Some(&first_point.snapshot)),
            first_content,
            "{tamper}: old point intact"
        );
    }
}

/// Server copy (Put Page From URL) reads nothing through snapback; `auto` falls back to
/// client copy where the service refuses; both end equal to the source snapshot. Tiny
/// listing segments, pages and one global permit change nothing but the request count.
#[tokio::test]
async fn copy_modes_segments_and_global_limit() {
    use snapback::config::CopyMode;
    use snapback::cycle::tuning::{ApplyTuning, Limits};
    for (mode, refuse) in [
        (CopyMode::Server, false),
        (CopyMode::Auto, false),
        (CopyMode::Auto, true),
        (CopyMode::Client, false),
    ] {
        let (mut blobs, store, mut d) = world().await;
        blobs.refuse_server_copy = refuse;
        d.copy_mode = mode;
        let mut r = runner(&blobs, &store, &d);
        r.tuning = ApplyTuning {
            segment: 8 * 512,
            page_results: 2,
            ..Default::default()
        };
        // One request and one 64 KiB buffer unit for the whole process.
        r.limits = Some(std::sync::Arc::new(Limits::new(1, 64 * 1024)));
        r.run_cycle().await.unwrap();
        let ctx = format!("{mode:?} refuse={refuse}");
        check(&blobs, &store, &d, 2, &ctx);
        let m = r.blobs.detail();
        let server = mode == CopyMode::Server || (mode == CopyMode::Auto && !refuse);
        if server {
            assert_eq!((m.reads, m.bytes_read), (0, 0), "{ctx}: {m:?}");
            assert!(m.puts_from_url > 0, "{ctx}: {m:?}");
        } else {
            assert!(m.reads > 0 && m.reads <= m.puts + m.clears, "{ctx}: {m:?}");
        }
    }
}

/// Requests that finish out of order, and a failure after every number of storage calls:
/// the checkpoint only covers finished work, so every resumed cycle ends equal to its source.
#[tokio::test]
async fn out_of_order_completion_then_failure_then_resume() {
    for fail_after in (4..40).step_by(3) {
        let (mut blobs, store, mut d) = world().await;
        // More, smaller batches: 40 scattered changed runs.
        for i in 0..40u64 {
            blobs.write(
                d.source.blob().unwrap(),
                (i * 2 + 1) * 512,
                &[i as u8 + 1; 512],
            );
        }
        blobs.jitter_ms = 5;
        d.concurrency = 8;
        blobs.fail_after(Some(fail_after));
        let r = runner(&blobs, &store, &d);
        assert!(r.run_cycle().await.is_err(), "fail_after {fail_after}");
        blobs.fail_after(None);
        runner(&blobs, &store, &d).run_cycle().await.unwrap();
        check(&blobs, &store, &d, 2, &format!("fail_after {fail_after}"));
    }
}

#[tokio::test]
async fn seed_without_copy_blob_copies_every_page_and_resumes_after_any_failure() {
    // A source the service cannot read (no SAS, e.g. a managed-identity account): the seed
    // copies every page of S(1) through snapback, resumably like any apply.
    let mut n = 0;
    loop {
        let mut blobs = MemBlobs::new();
        blobs.refuse_copy = true;
        let store = StateStore::open_in_memory().unwrap();
        let d = disk();
        blobs
            .create_page_blob(d.source.blob().unwrap(), 64 * 512, &Default::default())
            .await
            .unwrap();
        blobs.write(d.source.blob().unwrap(), 0, &[1u8; 4096]);
        blobs.write(d.source.blob().unwrap(), 20 * 512, &[2u8; 1024]);
        // An old backup base with other content: the seed must not keep any of it.
        blobs
            .create_page_blob(&d.backup, 64 * 512, &Default::default())
            .await
            .unwrap();
        blobs.write(&d.backup, 40 * 512, &[9u8; 512]);
        blobs
            .set_metadata(&d.backup, &snapback::model::tags::backup_base("d"))
            .await
            .unwrap();
        blobs.fail_after(Some(n));
        let first = runner(&blobs, &store, &d).run_cycle().await;
        blobs.fail_after(None);
        let done_first_time = first.is_ok();
        let rec = match first {
            Ok(rec) => rec,
            Err(_) => runner(&blobs, &store, &d).run_cycle().await.unwrap(),
        };
        assert_eq!(rec.kind, CycleKind::Seed, "failure at call {n}");
        check(
            &blobs,
            &store,
            &d,
            1,
            &format!("client seed, failure at call {n}"),
        );
        if done_first_time {
            assert_eq!(
                rec.stats.bytes_written,
                4096 + 1024,
                "only the source's pages are written"
            );
            break;
        }
        n += 1;
    }
    assert!(n > 5, "a seed makes more than five calls, saw {n}");
}

/// Every restore point in `store` but the first `seeded` equals the source as it is (it does
/// not change while the test runs); how many there are.
fn later_points_equal_the_source(
    blobs: &MemBlobs,
    (store, seeded): (&StateStore, usize),
    d: &DiskSpec,
    ctx: &str,
) -> usize {
    let now = blobs.content(d.source.blob().unwrap(), None);
    let points = store.restore_points(&d.name).unwrap();
    for p in points.iter().skip(seeded) {
        assert_eq!(
            blobs.content(&d.backup, Some(&p.snapshot)),
            now,
            "{ctx}: restore point {} differs from the source",
            p.snapshot
        );
    }
    points.len() - seeded
}

/// Owner A (token 10) stopped after each of its cycle's steps in turn; owner B, another
/// installation, raises the backup's token to 11 and runs a whole cycle; A then goes on. From
/// its first write to the backup, A is fenced (no write lands, nothing recorded after), every
/// restore point equals the source, and B's next cycle leaves one source snapshot.
#[tokio::test]
async fn a_stale_owner_is_fenced_whichever_step_it_resumes_at() {
    use snapback::storage::{Fence, IfBlob};
    for k in 0..5 {
        let (blobs, store_a, d) = world().await;
        let ctx = format!("A stopped after {k} steps");
        let raise = |token: u64| {
            let blobs = &blobs;
            let backup = d.backup.clone();
            async move {
                blobs
                    .set_sequence_number(&backup, token, &IfBlob::Any)
                    .await
                    .unwrap()
            }
        };
        raise(10).await;
        let mut a = runner(&blobs, &store_a, &d);
        a.fence = Some(Fence(10));
        let mut rec = a.open_or_resume().await.unwrap();
        for _ in 0..k {
            assert!(a.step(&mut rec).await.unwrap(), "{ctx}");
        }
        let store_b = StateStore::open_in_memory().unwrap();
        raise(11).await;
        let mut b = runner(&blobs, &store_b, &d);
        b.fence = Some(Fence(11));
        b.run_cycle().await.unwrap();
        let written = blobs.content(&d.backup, None);
        let a_result = async {
            while a.step(&mut rec).await? {}
            Ok::<_, snapback::cycle::error::CycleError>(())
        }
        .await;
        match a_result {
            Err(e) => assert!(e.is_fenced(), "{ctx}: {e}"),
            Ok(()) => panic!("{ctx}: A finished a cycle on B's backup"),
        }
        assert_eq!(
            blobs.content(&d.backup, None),
            written,
            "{ctx}: A wrote nothing"
        );
        assert_eq!(
            later_points_equal_the_source(&blobs, (&store_b, 0), &d, &ctx),
            1
        );
        assert_eq!(
            later_points_equal_the_source(&blobs, (&store_a, 1), &d, &ctx),
            0,
            "{ctx}: A recorded no restore point"
        );
        let mut b = runner(&blobs, &store_b, &d);
        b.fence = Some(Fence(11));
        b.run_cycle().await.unwrap();
        assert_eq!(
            later_points_equal_the_source(&blobs, (&store_b, 0), &d, &ctx),
            2
        );
        assert_eq!(
            blobs.snapshot_ids(d.source.blob().unwrap()).len(),
            1,
            "{ctx}: one source snapshot left"
        );
    }
}
