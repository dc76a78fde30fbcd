//! Backup cycles against Azurite over HTTP: every restore point equals its source snapshot
//! byte for byte, through writes, clears and a resize.

mod common;

use common::fixture::{content, create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use snapback::model::pages::{ByteRange, PAGE_SIZE};
use snapback::storage::PageBlobs;
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_points_equal_their_source_snapshots_over_many_cycles() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    let app = fx.app();
    let disk = app.config.disks[0].clone();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    let seed = 0x5eed_0001;
    let mut rng = Rng(seed);
    let mut size = 8 * MIB;
    create_disk(blobs.as_ref(), &source, size).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;

    // restore point -> (source snapshot, content) as captured when it was made
    let mut history: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for cycle in 0..9 {
        if cycle > 0 {
            // Random writes of 1..64 pages, some clears, and one resize.
            for _ in 0..6 {
                let pages = 1 + rng.below(64);
                let at = rng.below(size / PAGE_SIZE - pages) * PAGE_SIZE;
                write(
                    blobs.as_ref(),
                    &source,
                    at,
                    &rng.bytes((pages * PAGE_SIZE) as usize),
                )
                .await;
            }
            for _ in 0..2 {
                let pages = 1 + rng.below(32);
                let at = rng.below(size / PAGE_SIZE - pages) * PAGE_SIZE;
                blobs
                    .clear_pages(&source, ByteRange::new(at, at + pages * PAGE_SIZE), None)
                    .await
                    .unwrap();
            }
            if cycle == 5 {
                size += 3 * MIB;
                blobs
                    .resize(&source, size, &Default::default())
                    .await
                    .unwrap();
                write(
                    blobs.as_ref(),
                    &source,
                    size - MIB,
                    &rng.bytes(MIB as usize),
                )
                .await;
            }
        }
        let report = app.backup_disk(&disk, CancellationToken::new()).await;
        let rec = report
            .result
            .unwrap_or_else(|e| panic!("cycle {cycle} (seed {seed:#x}): {e}"));
        let b = rec.phase.restore_point().unwrap().0.to_string();
        let s = rec.phase.source().unwrap().to_string();
        let expected = content(blobs.as_ref(), &source, Some(&s)).await;
        let got = content(blobs.as_ref(), &backup, Some(&b)).await;
        assert_eq!(got.len(), expected.len(), "cycle {cycle}: size");
        assert!(
            got == expected,
            "cycle {cycle}: restore point {b} differs from source snapshot {s}"
        );
        if cycle > 0 {
            assert_eq!(rec.kind, snapback::model::record::CycleKind::Incremental);
            assert!(
                rec.stats.bytes_written < size / 2,
                "cycle {cycle} moved too much: {:?}",
                rec.stats
            );
        }
        history.insert(b, expected);
        // Exactly one snapback snapshot stays on the source: S(n).
        assert_eq!(tagged_snapshots(blobs.as_ref(), &source).await, vec![s]);
    }
    // Earlier restore points are unchanged, and `list` shows them all, oldest first.
    for (b, expected) in &history {
        assert!(
            &content(blobs.as_ref(), &backup, Some(b)).await == expected,
            "restore point {b} changed"
        );
    }
    let listed: Vec<String> = app
        .list(&disk)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.snapshot)
        .collect();
    assert_eq!(listed, history.keys().cloned().collect::<Vec<_>>());
}
