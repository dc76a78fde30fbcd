//! Request counts of the apply phase against Azurite for a known diff: Put Page count is the
//! minimum for the diff, reads never exceed puts, exactly the changed bytes are written; and
//! `copy_mode = "server"` (Put Page From URL) makes a restore point equal to its source
//! snapshot with no byte read by snapback; `auto` falls back to client copy on a 501.

mod common;

use common::fixture::{content, create_disk, write, Fixture, Rng, MIB};
use snapback::config::CopyMode;
use snapback::cycle::metered::MeterCounts;
use snapback::cycle::runner::{DiskSpec, Runner};
use snapback::model::pages::ByteRange;
use snapback::model::SystemClock;
use snapback::service::disk_spec;
use snapback::state::StateStore;
use snapback::storage::PageBlobs;
use std::time::Duration;

const KIB: u64 = 1024;

/// Runs one cycle with a fresh meter; returns its per-kind counts.
async fn cycle(fx: &Fixture, blobs: &dyn PageBlobs, spec: &DiskSpec) -> MeterCounts {
    let store = StateStore::open(&fx.config().state_dir).unwrap();
    let mut r = Runner::new(blobs, &store, &SystemClock, spec);
    r.copy_poll = (Duration::from_millis(10), Duration::from_millis(50));
    if let Err(e) = r.run_cycle().await {
        panic!(
            "cycle failed: {e}\nAzurite stderr:\n{}",
            fx.azurite.stderr()
        );
    }
    r.blobs.detail()
}

/// The newest restore point equals the source snapshot it records.
async fn check_last_point(fx: &Fixture, blobs: &dyn PageBlobs, spec: &DiskSpec, ctx: &str) {
    let store = StateStore::open(&fx.config().state_dir).unwrap();
    let rp = store.restore_points(&spec.name).unwrap().pop().unwrap();
    assert!(
        content(blobs, &spec.backup, Some(&rp.snapshot)).await
            == content(
                blobs,
                spec.source.blob().unwrap(),
                Some(&rp.source_snapshot)
            )
            .await,
        "{ctx}: restore point differs from its source snapshot"
    );
}

/// A known diff: one 10 MiB run (3 puts), twenty 4 KiB writes 12 KiB apart (20 puts, one
/// read), one lone 4 KiB write (1 put) and one cleared 64 KiB (1 clear). Returns
/// (minimum puts, changed bytes).
async fn known_diff(blobs: &dyn PageBlobs, fx: &Fixture, rng: &mut Rng) -> (u64, u64) {
    let src = fx.source("d");
    write(blobs, &src, MIB / 2, &rng.bytes(10 * MIB as usize)).await;
    for i in 0..20 {
        write(
            blobs,
            &src,
            12 * MIB + i * 16 * KIB,
            &rng.bytes(4 * KIB as usize),
        )
        .await;
    }
    write(blobs, &src, 20 * MIB, &rng.bytes(4 * KIB as usize)).await;
    blobs
        .clear_pages(&src, ByteRange::new(24 * MIB, 24 * MIB + 64 * KIB), None)
        .await
        .unwrap();
    (3 + 20 + 1, 10 * MIB + 20 * 4 * KIB + 4 * KIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_and_server_copy() {
    let fx = Fixture::new(&["d"]);
    let blobs = fx.blobs();
    let blobs = blobs.as_ref();
    let mut spec = disk_spec(&fx.config().disks[0]);
    let mut rng = Rng(0x9e7f_0005);
    create_disk(blobs, spec.source.blob().unwrap(), 32 * MIB).await;
    write(
        blobs,
        spec.source.blob().unwrap(),
        24 * MIB,
        &rng.bytes(MIB as usize),
    )
    .await;
    cycle(&fx, blobs, &spec).await; // seed

    // Client copy.
    let (min_puts, changed) = known_diff(blobs, &fx, &mut rng).await;
    let m = cycle(&fx, blobs, &spec).await;
    assert_eq!(m.puts, min_puts, "{m:?}");
    assert_eq!(m.bytes_put, changed, "{m:?}");
    assert_eq!((m.clears, m.bytes_cleared), (1, 64 * KIB), "{m:?}");
    assert!(m.reads <= m.puts, "{m:?}");
    assert_eq!(
        m.reads, 5,
        "3 for the 10 MiB run, 1 for the 20 small writes, 1 lone: {m:?}"
    );
    assert_eq!(m.page_lists, 1, "{m:?}");
    check_last_point(&fx, blobs, &spec, "client").await;

    // Server copy: the service reads S(n); snapback reads nothing.
    spec.copy_mode = CopyMode::Server;
    let (min_puts, changed) = known_diff(blobs, &fx, &mut rng).await;
    let m = cycle(&fx, blobs, &spec).await;
    assert_eq!((m.reads, m.bytes_read, m.puts), (0, 0, 0), "{m:?}");
    assert_eq!(m.puts_from_url, min_puts, "{m:?}");
    assert_eq!(m.bytes_from_url, changed, "{m:?}");
    check_last_point(&fx, blobs, &spec, "server").await;

    // Auto: the service refuses (501) the first Put Page From URL; client copy takes over.
    spec.copy_mode = CopyMode::Auto;
    // Batches already in flight finish server-side; every later one is copied by snapback.
    let (min_puts, _) = known_diff(blobs, &fx, &mut rng).await;
    fx.azurite
        .inject_fault("501", 1, "/backup/backups/d?comp=page");
    let m = cycle(&fx, blobs, &spec).await;
    assert!(m.puts_from_url >= 1, "{m:?}");
    assert_eq!(m.puts + m.puts_from_url - 1, min_puts, "one refused: {m:?}");
    assert!(m.reads > 0 && m.reads <= m.puts, "{m:?}");
    check_last_point(&fx, blobs, &spec, "auto").await;
}
