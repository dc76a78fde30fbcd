//! Restore and verify against Azurite over HTTP, through the `snapback` binary: restored
//! disks equal the source at the chosen time byte for byte, existing targets are refused,
//! `--rebase` starts a chain whose next cycle moves only what changed, and `verify` passes on
//! a good restore point and names the offset of a bad one.

mod common;

use common::fixture::{content, create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use snapback::model::pages::PAGE_SIZE;
use snapback::model::record::CycleKind;
use snapback::model::{tags, SnapshotId};
use snapback::restore::{PointSelector, RestoreRequest};
use snapback::storage::{BlobRef, PageBlobs};
use std::process::Output;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuse_rebase_and_verify() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    let app = fx.app();
    let disk = app.config.disks[0].clone();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    let size = 4 * MIB;
    let mut rng = Rng(0x05e5_707e);
    create_disk(blobs.as_ref(), &source, size).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;

    // Three cycles, each after different writes: (restore point, source snapshot, content).
    let mut points: Vec<(String, String, Vec<u8>)> = Vec::new();
    for cycle in 0..3 {
        if cycle > 0 {
            for _ in 0..4 {
                let pages = 1 + rng.below(32);
                let at = rng.below(size / PAGE_SIZE - pages) * PAGE_SIZE;
                let data = rng.bytes((pages * PAGE_SIZE) as usize);
                write(blobs.as_ref(), &source, at, &data).await;
            }
        }
        let rec = app
            .backup_disk(&disk, CancellationToken::new())
            .await
            .result
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let s = rec.phase.source().unwrap().to_string();
        let want = content(blobs.as_ref(), &source, Some(&s)).await;
        points.push((rec.phase.restore_point().unwrap().0.to_string(), s, want));
    }
    assert!(points[0].2 != points[1].2 && points[1].2 != points[2].2);

    // Old point by id, middle point by --at its capture time, newest by --at far ahead.
    let cases = [
        ("old.vhd", vec!["--snapshot", points[0].0.as_str()], 0),
        ("middle.vhd", vec!["--at", points[1].1.as_str()], 1),
        ("newest.vhd", vec!["--at", "2099-01-01T00:00:00Z"], 2),
    ];
    for (name, sel, idx) in &cases {
        let to = format!("premium/restores/{name}");
        let mut args = vec!["restore", "disk1"];
        args.extend(sel.iter().copied());
        args.extend(["--to", to.as_str()]);
        let out = fx.snapback(&args);
        assert!(out.status.success(), "restore {name}: {}", text(&out));
        let o = stdout(&out);
        assert!(o.contains(&points[*idx].0), "{name} names its point: {o}");
        assert!(
            o.contains("az disk create") && o.contains("az vm update"),
            "{o}"
        );
        let target = BlobRef::new("premium", "restores", name);
        let got = content(blobs.as_ref(), &target, None).await;
        assert_eq!(got.len(), points[*idx].2.len());
        assert!(
            got == points[*idx].2,
            "{name} differs from the source at that time"
        );
        let props = blobs.properties(&target, None).await.unwrap().unwrap();
        assert_eq!(
            tags::restore_state(&props.metadata),
            Some(tags::RestoreState::Complete)
        );
    }

    // An existing target is refused (exit 2) and left untouched; nothing else is left behind.
    let old = BlobRef::new("premium", "restores", "old.vhd");
    let etag = blobs.properties(&old, None).await.unwrap().unwrap().etag;
    let out = fx.snapback(&[
        "restore",
        "disk1",
        "--snapshot",
        &points[2].0,
        "--to",
        "premium/restores/old.vhd",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("premium/restores/old.vhd"),
        "{}",
        text(&out)
    );
    assert_eq!(
        blobs.properties(&old, None).await.unwrap().unwrap().etag,
        etag
    );
    assert!(content(blobs.as_ref(), &old, None).await == points[0].2);
    // Unknown restore point and bad time: exit 2 too, naming what is wrong.
    let out = fx.snapback(&[
        "restore",
        "disk1",
        "--snapshot",
        "2001-01-01T00:00:00.0000000Z",
        "--to",
        "premium/restores/x.vhd",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("2001-01-01T00:00:00.0000000Z"));
    let out = fx.snapback(&[
        "restore",
        "disk1",
        "--at",
        "last tuesday",
        "--to",
        "premium/restores/x.vhd",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(blobs
        .properties(&BlobRef::new("premium", "restores", "x.vhd"), None)
        .await
        .unwrap()
        .is_none());
    // --force replaces it.
    let out = fx.snapback(&[
        "restore",
        "disk1",
        "--snapshot",
        &points[2].0,
        "--to",
        "premium/restores/old.vhd",
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(content(blobs.as_ref(), &old, None).await == points[2].2);

    // --rebase: a new chain on the restored disk; its first cycle moves only the change.
    let out = fx.snapback(&[
        "restore",
        "disk1",
        "--snapshot",
        &points[1].0,
        "--to",
        "premium/vhds/disk1-new.vhd",
        "--rebase",
        "--name",
        "disk1-new",
        "--write-config",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = BlobRef::new("premium", "vhds", "disk1-new.vhd");
    assert!(content(blobs.as_ref(), &restored, None).await == points[1].2);
    let app2 = fx.app(); // reloads the config, which now has disk1-new
    let new_disk = app2
        .config
        .disk("disk1-new")
        .expect("stanza written")
        .clone();
    assert!(
        new_disk.backup.blob.starts_with("disk1.restore-"),
        "{:?}",
        new_disk.backup
    );
    let changed = rng.bytes(3 * PAGE_SIZE as usize);
    write(blobs.as_ref(), &restored, 64 * PAGE_SIZE, &changed).await;
    let report = app2.backup_disk(&new_disk, CancellationToken::new()).await;
    let rec = report
        .result
        .unwrap_or_else(|e| panic!("first cycle of the new chain: {e}"));
    assert_eq!(rec.kind, CycleKind::Incremental, "{rec:?}");
    assert_eq!(rec.stats.bytes_written, 3 * PAGE_SIZE, "{:?}", rec.stats);
    let nb = new_disk.backup.clone();
    assert!(
        content(
            blobs.as_ref(),
            &nb,
            rec.phase.restore_point().map(|(b, _)| b.as_str())
        )
        .await
            == content(
                blobs.as_ref(),
                &restored,
                rec.phase.source().map(|s| s.as_str())
            )
            .await
    );
    // The chain's two restore points (B(0) from the restore, B(1) from the cycle).
    assert_eq!(tagged_snapshots(blobs.as_ref(), &nb).await.len(), 2);
    // The original chain is untouched: still three restore points.
    assert_eq!(tagged_snapshots(blobs.as_ref(), &backup).await.len(), 3);

    // verify: the newest restore point equals its source snapshot.
    let out = fx.snapback(&["verify", "disk1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains(&points[2].0), "{}", text(&out));
    // An old point's source snapshot is gone (each cycle keeps only its own): not verifiable.
    let out = fx.snapback(&["verify", "disk1", "--snapshot", &points[0].0]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no longer exists"), "{}", text(&out));

    // A corrupted restore point. Snapshots are immutable, so corruption "behind snapback's
    // back" is staged the only honest way: flip one page of the backup base and snapshot it
    // with forged snapback metadata claiming the newest source snapshot. verify must fail
    // and name the first differing byte.
    let bad_at = 123 * PAGE_SIZE + 17;
    let mut page = content(blobs.as_ref(), &backup, None).await
        [(123 * PAGE_SIZE) as usize..(124 * PAGE_SIZE) as usize]
        .to_vec();
    page[17] ^= 0xFF;
    write(blobs.as_ref(), &backup, 123 * PAGE_SIZE, &page).await;
    let forged = blobs
        .create_snapshot(
            &backup,
            &tags::restore_point("disk1", "forged", &SnapshotId::new(points[2].1.clone())),
        )
        .await
        .unwrap();
    let out = fx.snapback(&["verify", "disk1", "--snapshot", &forged, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["mismatch"]["offset"], bad_at, "{v}");
    assert_eq!(v["mismatch"]["kind"], "content");
}

/// Measures a restore of a 64 MiB disk with every page written (promote + copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_full_64_mib_disk_is_measured() {
    let fx = Fixture::new(&["big"]);
    let blobs = fx.blobs();
    let app = fx.app();
    let disk = app.config.disks[0].clone();
    let source = fx.source("big");
    let size = 64 * MIB;
    create_disk(blobs.as_ref(), &source, size).await;
    let data = Rng(0xb16).bytes(size as usize);
    write(blobs.as_ref(), &source, 0, &data).await;
    let rec = app
        .backup_disk(&disk, CancellationToken::new())
        .await
        .result
        .expect("seed cycle");
    let point = rec.phase.restore_point().unwrap().0.to_string();
    let target = BlobRef::new("premium", "restores", "big.vhd");
    let started = Instant::now();
    let rep = app
        .restore(
            &disk,
            &RestoreRequest {
                point: PointSelector::Snapshot(point),
                target: target.clone(),
                rebase: None,
                force: false,
            },
            CancellationToken::new(),
        )
        .await
        .expect("restore");
    let total = started.elapsed().as_secs_f64();
    assert!(content(blobs.as_ref(), &target, None).await == data);
    assert_eq!(rep.size, size);
    // Without --rebase the promoted blob is removed.
    assert!(blobs
        .properties(&rep.promoted, None)
        .await
        .unwrap()
        .is_none());
    eprintln!(
        "MEASURE restore of {} bytes: promote {:.2}s + copy {:.2}s = {:.2}s total ({:.0} MiB/s)",
        rep.size,
        rep.promote_seconds,
        rep.copy_seconds,
        total,
        size as f64 / MIB as f64 / total
    );
}
