//! Retention against Azurite: `keep_last = 3` after five cycles leaves exactly three restore
//! points (backup snapshots and state rows), never touches snapshots snapback did not create,
//! keeps the chain incremental, and `prune --dry-run` / `list --json` show the plan.

mod common;

use common::fixture::{create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use snapback::model::pages::PAGE_SIZE;
use snapback::model::record::CycleKind;
use snapback::storage::{Metadata, PageBlobs};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_3_leaves_exactly_3_restore_points() {
    let fx = Fixture::with_extra(
        "[[disk]]\nname = \"disk1\"\nsource = \"premium/vhds/disk1.vhd\"\n\
         backup = \"backup/backups/disk1\"\nconcurrency = 4\nverify = \"after-cycle\"\n\
         retention = { keep_last = 3 }\n",
    );
    let blobs = fx.blobs();
    let app = fx.app();
    let disk = app.config.disks[0].clone();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    let mut rng = Rng(0x7e7e_0003);
    create_disk(blobs.as_ref(), &source, 2 * MIB).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;

    let mut made = Vec::new();
    for cycle in 0..5 {
        if cycle > 0 {
            let at = rng.below(2 * MIB / PAGE_SIZE - 4) * PAGE_SIZE;
            write(
                blobs.as_ref(),
                &source,
                at,
                &rng.bytes(4 * PAGE_SIZE as usize),
            )
            .await;
        }
        if cycle == 1 {
            // Someone else's snapshot of the backup blob, and one "tagged" for another disk.
            blobs
                .create_snapshot(&backup, &Metadata::new())
                .await
                .unwrap();
            let other = Metadata::from([("snapback_disk".to_string(), "other".to_string())]);
            blobs.create_snapshot(&backup, &other).await.unwrap();
        }
        let report = app.backup_disk(&disk, CancellationToken::new()).await;
        let rec = report
            .result
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        if cycle > 0 {
            // Pruning never breaks the chain: every later cycle stays incremental and small.
            assert_eq!(rec.kind, CycleKind::Incremental, "cycle {cycle}: {rec:?}");
            assert_eq!(rec.stats.bytes_written, 4 * PAGE_SIZE, "cycle {cycle}");
        }
        // after-cycle verify ran and passed on the new restore point.
        let v = report.verify.expect("verify ran").expect("verify ok");
        assert!(v.ok(), "cycle {cycle}: {v:?}");
        assert_eq!(
            v.restore_point,
            rec.phase.restore_point().unwrap().0.to_string()
        );
        let p = report.prune.expect("retention ran").expect("prune ok");
        assert_eq!(p.deleted.len(), usize::from(cycle >= 3), "cycle {cycle}");
        made.push(rec.phase.restore_point().unwrap().0.to_string());
    }

    let ours = tagged_snapshots(blobs.as_ref(), &backup).await;
    // tagged_snapshots counts any snapback_disk tag: ours (3) + the "other" disk's (1).
    assert_eq!(ours.len(), 4, "{ours:?}");
    let listed: Vec<String> = app
        .list(&disk)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.snapshot)
        .collect();
    assert_eq!(listed, made[2..].to_vec());
    let rows: Vec<String> = app
        .store
        .restore_points("disk1")
        .unwrap()
        .into_iter()
        .map(|r| r.snapshot)
        .collect();
    assert_eq!(
        rows,
        made[2..].to_vec(),
        "pruned rows are removed from the state"
    );
    let all = blobs.list_snapshots(&backup).await.unwrap();
    assert_eq!(
        all.len(),
        5,
        "3 restore points + 2 snapshots that are not ours"
    );

    // list --json shows the rule keeping each point, with the existing fields.
    let out = fx.snapback(&["list", "disk1", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for p in arr {
        assert!(p["snapshot"].is_string() && p["source_snapshot"].is_string());
        assert_eq!(p["size"], 2 * MIB);
    }
    assert_eq!(arr[2]["kept_by"], serde_json::json!(["newest", "last"]));
    assert_eq!(arr[0]["kept_by"], serde_json::json!(["last"]));

    // Tighter rules through the CLI: the dry run plans, deletes nothing; the real run deletes.
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        cfg.replace("keep_last = 3", "keep_last = 1"),
    )
    .unwrap();
    let out = fx.snapback(&["prune", "disk1", "--dry-run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("would delete").count(), 2, "{text}");
    assert_eq!(blobs.list_snapshots(&backup).await.unwrap().len(), 5);
    let out = fx.snapback(&["prune", "disk1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = blobs
        .list_snapshots(&backup)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.metadata.get("snapback_disk").map(String::as_str) == Some("disk1"))
        .map(|s| s.snapshot)
        .collect();
    assert_eq!(left, vec![made[4].clone()]);
    assert_eq!(blobs.list_snapshots(&backup).await.unwrap().len(), 3);
    // Unknown disk: exit 2.
    assert_eq!(
        fx.snapback(&["prune", "nope", "--dry-run"]).status.code(),
        Some(2)
    );
}
