//! The open cycle's record travels with the data (issue 11, item 2), against Azurite with the
//! real binary: replica A is SIGKILLed mid-apply right after an apply checkpoint reached the
//! disk's lock blob; its lease is broken (standing for its expiry); replica B, with a state
//! directory of its own (another owner key), resumes that very cycle from the checkpoint
//! instead of re-seeding. A's local state still holds the cycle open; its next run must not
//! resume it. A lock blob whose body is not a record stops the cycle with an error naming it.

mod common;

use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::fixture::{
    break_lease, content, create_disk, sdk_blob_client, snapback_command as command,
    tagged_snapshots, write, Fixture, Rng, MIB,
};
use common::process::kill_at_failpoint;
use snapback::cycle::handover::{parse, AzureRecord};
use snapback::model::pages::{ByteRange, PAGE_SIZE};
use snapback::model::record::Phase;
use snapback::ownership::lock_blob;
use snapback::ownership::{DiskLease, OwnershipError};
use snapback::storage::lease::LeaseBlobs;
use snapback::storage::{BlobRef, ErrorKind, PageBlobs};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const SIZE: u64 = 64 * MIB;

/// Replica B: the same config with a state directory of its own.
fn replica_b(fx: &Fixture) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let state = fx.dir.path().join("state");
    let text = text.replace(
        &format!("state_dir = \"{}\"", state.display()),
        &format!("state_dir = \"{}-b\"", state.display()),
    );
    assert!(text.contains("state-b"), "config names its state directory");
    let path = fx.dir.path().join("replica-b.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Takes disk1's lease (its backup `backup`) as a test owner, as a cycle would.
async fn take_disk1(
    blobs: &Arc<snapback::azure::AzureBlobs>,
    backup: &BlobRef,
) -> Result<DiskLease, OwnershipError> {
    let owner = snapback::ownership::Owner {
        holder: "test-a".into(),
        writer: "w".into(),
        timing: Default::default(),
        previous_id: None,
    };
    DiskLease::acquire(
        blobs.clone(),
        blobs.as_ref(),
        "disk1",
        backup,
        &owner,
        CancellationToken::new(),
    )
    .await
}

/// Runs `snapback backup disk1` to success; returns its log.
fn backup(config: &Path, who: &str) -> String {
    let out: Output = command(config, &["backup", "disk1"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{who}: backup failed: {log}");
    log
}

fn status(config: &Path) -> serde_json::Value {
    let out = command(config, &["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).expect("status --json")
}

/// The record in the disk's lock blob, as the test reads it.
async fn record(fx: &Fixture) -> AzureRecord {
    let blobs = fx.blobs();
    let lock = lock_blob(&fx.backup("disk1"));
    let size = blobs.properties(&lock, None).await.unwrap().unwrap().size;
    let body = blobs
        .read(&lock, None, ByteRange::new(0, size))
        .await
        .unwrap();
    parse(&body).expect("the lock blob holds a record")
}

/// Seeds disk1 with replica A, writes a multi-MiB diff, and SIGKILLs A's next cycle right
/// after an apply checkpoint reached the lock blob. Returns that record.
async fn a_killed_mid_apply(fx: &Fixture) -> AzureRecord {
    let blobs = fx.blobs();
    let source = fx.source("disk1");
    let mut rng = Rng(0x0a11_0c47);
    create_disk(blobs.as_ref(), &source, SIZE).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;
    backup(&fx.config_path, "A, seed");
    for _ in 0..400 {
        let at = rng.below((SIZE - 64 * 1024) / PAGE_SIZE) * PAGE_SIZE;
        write(blobs.as_ref(), &source, at, &rng.bytes(64 * 1024)).await;
    }
    let mut a = command(&fx.config_path, &["backup", "disk1"]);
    a.env("SNAPBACK_FAILPOINT_PAUSE_AFTER_AZURE_CHECKPOINT", "1");
    let log = kill_at_failpoint(a, "A, paused at an Azure apply checkpoint");
    assert!(
        log.contains("failpoint: paused after Azure checkpoint"),
        "A reached an Azure apply checkpoint: {log}"
    );
    let rec = record(fx).await;
    let upto = rec.cycle.phase.applied_upto();
    assert!(
        matches!(upto, Some(u) if u > 0 && u < SIZE),
        "the record in Azure is mid-apply: {:?}",
        rec.cycle.phase
    );
    assert_eq!(
        status(&fx.config_path)[0]["phase"],
        "apply",
        "A's local state keeps the cycle open"
    );
    break_lease(fx, &lock_blob(&fx.backup("disk1"))).await;
    rec
}

fn cycle_of(s: &snapback::storage::SnapshotInfo) -> Option<&str> {
    s.metadata.get("snapback_cycle").map(String::as_str)
}

/// Restore points of disk1 (snapshot, cycle tag, source snapshot), oldest first.
async fn restore_points(fx: &Fixture) -> Vec<(String, String, String)> {
    let blobs = fx.blobs();
    let all = blobs.list_snapshots(&fx.backup("disk1")).await.unwrap();
    all.iter()
        .filter(|s| snapback::model::tags::is_restore_point(&s.metadata, "disk1"))
        .map(|s| {
            (
                s.snapshot.clone(),
                cycle_of(s).unwrap_or_default().to_string(),
                s.metadata["snapback_source_snapshot"].clone(),
            )
        })
        .collect()
}

/// Every restore point is unique to its cycle, and the newest equals the one snapshot
/// snapback keeps on the source.
async fn assert_chain_consistent(fx: &Fixture, points: usize, ctx: &str) {
    let blobs = fx.blobs();
    let rps = restore_points(fx).await;
    assert_eq!(rps.len(), points, "{ctx}: restore points {rps:?}");
    let mut tags: Vec<_> = rps.iter().map(|(_, t, _)| t.clone()).collect();
    tags.dedup();
    assert_eq!(tags.len(), points, "{ctx}: one restore point per cycle");
    let on_source = tagged_snapshots(blobs.as_ref(), &fx.source("disk1")).await;
    assert_eq!(
        on_source.len(),
        1,
        "{ctx}: one snapback snapshot on the source"
    );
    let (newest, _, s) = rps.last().unwrap();
    assert_eq!(
        s, &on_source[0],
        "{ctx}: the newest restore point records S(n)"
    );
    let got = content(blobs.as_ref(), &fx.backup("disk1"), Some(newest)).await;
    let want = content(blobs.as_ref(), &fx.source("disk1"), Some(&on_source[0])).await;
    assert!(got == want, "{ctx}: the newest restore point equals S(n)");
}

/// B resumes A's cycle: same cycle tag and S(n), no seed, exactly one restore point for it,
/// equal to S(n). Then A's next run finds its open cycle finished by B and does not resume
/// it: it records B's end and runs the next cycle incrementally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_resumes_the_cycle_a_dead_owner_left_mid_apply() {
    let fx = Fixture::new(&["disk1"]);
    let left = a_killed_mid_apply(&fx).await;
    let sn = left.cycle.phase.source().unwrap().to_string();
    let b = replica_b(&fx);

    let log = backup(&b, "B");
    let upto = left.cycle.phase.applied_upto().unwrap();
    assert!(
        log.contains("resuming the cycle another owner left open")
            && log.contains(&left.cycle.tag)
            && log.contains(&format!("applied_upto=Some({upto})")),
        "B imported A's cycle from the lock blob, at its checkpoint: {log}"
    );
    let rps = restore_points(&fx).await;
    assert_eq!(rps.len(), 2, "seed + the resumed cycle: {rps:?}");
    assert_eq!(
        rps[1].1, left.cycle.tag,
        "the restore point is of A's cycle"
    );
    assert_eq!(rps[1].2, sn, "... taken of A's S(n)");
    assert_chain_consistent(&fx, 2, "after B").await;
    let last = &status(&b)[0]["last_cycle"];
    assert_eq!(last["kind"], "incremental", "no seed: {last}");
    let total = last["bytes_written"].as_u64().unwrap();
    let by_b = total - left.cycle.stats.bytes_written;
    eprintln!(
        "A checkpointed {} of {SIZE} bytes in Azure ({} bytes written); B wrote {by_b} bytes \
         ({total} in all for the cycle)",
        left.cycle.phase.applied_upto().unwrap(),
        left.cycle.stats.bytes_written
    );
    assert!(by_b < SIZE, "B wrote less than the disk ({by_b} bytes)");
    let now = record(&fx).await;
    assert_eq!(now.cycle.tag, left.cycle.tag);
    assert!(matches!(now.cycle.phase, Phase::Done { .. }), "{now:?}");
    assert_ne!(
        now.writer, left.writer,
        "B wrote the record under its own lease"
    );

    // A's local state still holds the cycle open (phase apply): not resumed.
    let finished_point = rps[1].0.clone();
    let want = content(
        fx.blobs().as_ref(),
        &fx.backup("disk1"),
        Some(&finished_point),
    )
    .await;
    let log = backup(&fx.config_path, "A, again");
    assert!(
        log.contains("another owner ran this cycle further"),
        "A took B's end of its cycle: {log}"
    );
    assert!(!log.contains("resuming the cycle"), "{log}");
    let rps = restore_points(&fx).await;
    assert_chain_consistent(&fx, 3, "after A's next cycle").await;
    assert_eq!(rps[1].0, finished_point, "B's restore point stays");
    let got = content(
        fx.blobs().as_ref(),
        &fx.backup("disk1"),
        Some(&finished_point),
    )
    .await;
    assert!(got == want, "B's restore point is unchanged");
    assert_ne!(rps[2].1, left.cycle.tag, "A ran a new cycle");
    assert_eq!(
        status(&fx.config_path)[0]["last_cycle"]["kind"],
        "incremental",
        "A diffed from B's S(n), no seed"
    );
}

/// A's open cycle was finished by B, and B ran another cycle since: A's next run abandons its
/// open cycle (never resumed, no write from it) and runs a new one from the newest restore
/// point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_local_cycle_is_abandoned_once_another_owner_moved_on() {
    let fx = Fixture::new(&["disk1"]);
    let left = a_killed_mid_apply(&fx).await;
    let b = replica_b(&fx);
    backup(&b, "B");
    let blobs = fx.blobs();
    write(
        blobs.as_ref(),
        &fx.source("disk1"),
        4 * MIB,
        &[7u8; 256 * 1024],
    )
    .await;
    backup(&b, "B, next cycle");
    let before = restore_points(&fx).await;
    assert_eq!(before.len(), 3);

    let log = backup(&fx.config_path, "A, again");
    assert!(
        log.contains("the disk moved past this unfinished cycle") && log.contains(&left.cycle.tag),
        "A abandoned its stale cycle: {log}"
    );
    let rps = restore_points(&fx).await;
    assert_chain_consistent(&fx, 4, "after A's next cycle").await;
    assert_eq!(&rps[..3], &before[..], "earlier restore points stay");
    assert_eq!(
        rps.iter().filter(|(_, t, _)| t == &left.cycle.tag).count(),
        1,
        "the stale cycle made no second restore point"
    );
    assert_eq!(
        status(&fx.config_path)[0]["last_cycle"]["kind"],
        "incremental"
    );
}

/// A body that is not a record stops the cycle with an error naming the lock blob; nothing
/// is written to the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_an_error_naming_the_lock_blob() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("disk1"), MIB).await;
    backup(&fx.config_path, "seed");
    let lock: BlobRef = lock_blob(&fx.backup("disk1"));
    sdk_blob_client(&fx, &lock)
        .upload(bytes::Bytes::from_static(b"{not a record").into(), None)
        .await
        .unwrap();
    let out = fx.snapback(&["backup", "disk1"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("lock blob backup/backups/disk1.snapback-state")
            && log.contains("not a snapback record"),
        "the error names the lock blob and what is wrong: {log}"
    );
    assert_eq!(restore_points(&fx).await.len(), 1, "no cycle ran");
}

/// The record is written only by the lease holder and only `If-Match` its own last write:
/// after someone else wrote the lock blob (here: with the holder's lease id, as a second
/// process of one installation could), or once the lease is someone else's, the write is
/// refused with `Overwritten`, which stops the cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_write_after_someone_else_wrote_is_refused() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    let backup = fx.backup("disk1");
    let lock = lock_blob(&backup);
    let lease = take_disk1(&blobs, &backup).await.unwrap();
    let id = lease.lease_id().to_string();
    let body = |n: u8| bytes::Bytes::from(vec![b'x'; n as usize]);
    lease.write_record("disk1", "t1", body(1)).await.unwrap();
    lease.write_record("disk1", "t1", body(2)).await.unwrap();
    assert_eq!(lease.record(), body(2));

    let tamper = snapback::model::tags::lock_holder("someone", None, lease.chain(), lease.token());
    blobs
        .set_leased_metadata(&lock, &id, &tamper)
        .await
        .unwrap();
    match lease.write_record("disk1", "t1", body(3)).await {
        Err(OwnershipError::Overwritten { blob, source, .. }) => {
            assert_eq!(blob, lock);
            assert_eq!(source.kind, ErrorKind::PreconditionFailed);
        }
        other => panic!("a write over someone else's is refused: {other:?}"),
    }

    // The lease broken and taken by another owner: the old holder's write is refused too.
    break_lease(&fx, &lock).await;
    let other = snapback::ownership::random_lease_id();
    Arc::clone(&blobs)
        .acquire_lease(&lock, &other, 15)
        .await
        .unwrap();
    let props = blobs.properties(&lock, None).await.unwrap().unwrap();
    let stale = take_disk1(&blobs, &backup).await;
    assert!(
        matches!(stale, Err(OwnershipError::Held { .. })),
        "the lease is someone else's now"
    );
    match lease.write_record("disk1", "t1", body(4)).await {
        Err(OwnershipError::Overwritten { .. }) => {}
        other => panic!("a write without the lease is refused: {other:?}"),
    }
    let after = blobs.properties(&lock, None).await.unwrap().unwrap();
    assert_eq!(after.etag, props.etag, "nothing was written");
}

/// A record write applied by the service whose answer is lost: the client's retry meets the
/// ETag of the write that landed (412), finds its own body there, and the cycle goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_write_whose_answer_was_lost_stands() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("disk1"), MIB).await;
    backup(&fx.config_path, "seed");
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    // Put Blob on the lock blob: the first is its create-if-absent, the second the record
    // of the opened cycle.
    let rule = proxy.add(
        Rule::new(Fault::AnswerLost)
            .op(Op::PutBlob)
            .blob("backups/disk1.snapback-state")
            .nth(2, 2),
    );
    write(blobs.as_ref(), &fx.source("disk1"), 0, &[3u8; 64 * 1024]).await;
    let log = backup(&fx.config_path, "with a lost answer");
    assert_eq!(proxy.stats(rule).injected, 1, "the answer was lost");
    assert!(!log.contains("written by someone else"), "{log}");
    assert_chain_consistent(&fx, 2, "after the lost answer").await;
    assert!(matches!(record(&fx).await.cycle.phase, Phase::Done { .. }));
}

/// A record bound to another source follows the rebind rules, seen from Azure: replica B,
/// configured with a new source for the disk, sweeps the old source's snapshots of the chain
/// and seeds a new chain; earlier restore points stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_another_source_starts_a_new_chain() {
    let fx = Fixture::new(&["disk1"]);
    let blobs = fx.blobs();
    let (old, new) = (fx.source("disk1"), fx.source("other"));
    create_disk(blobs.as_ref(), &old, MIB).await;
    write(blobs.as_ref(), &old, 0, &[1u8; 64 * 1024]).await;
    backup(&fx.config_path, "A");
    assert_eq!(tagged_snapshots(blobs.as_ref(), &old).await.len(), 1);
    create_disk(blobs.as_ref(), &new, MIB).await;
    write(blobs.as_ref(), &new, 0, &[2u8; 128 * 1024]).await;
    let b = replica_b(&fx);
    let text = std::fs::read_to_string(&b).unwrap();
    std::fs::write(
        &b,
        text.replace("premium/vhds/disk1.vhd", "premium/vhds/other.vhd"),
    )
    .unwrap();

    let log = backup(&b, "B, re-pointed");
    assert!(
        log.contains("record in Azure is of another source or backup"),
        "{log}"
    );
    assert!(
        tagged_snapshots(blobs.as_ref(), &old).await.is_empty(),
        "the old source's snapshot is swept"
    );
    let rps = restore_points(&fx).await;
    assert_eq!(rps.len(), 2, "{rps:?}");
    let on_new = tagged_snapshots(blobs.as_ref(), &new).await;
    assert_eq!(on_new.len(), 1);
    assert_eq!(
        rps[1].2, on_new[0],
        "the new restore point is of the new source"
    );
    let got = content(blobs.as_ref(), &fx.backup("disk1"), Some(&rps[1].0)).await;
    let want = content(blobs.as_ref(), &new, Some(&on_new[0])).await;
    assert!(got == want, "the new restore point equals the new source");
    assert_eq!(record(&fx).await.source, "premium/vhds/other.vhd");
}

/// A record write cut in flight (its future dropped while the request is still held in the
/// network: an apply ended while a checkpoint was being written) lands afterwards. The owner's
/// next write meets that write's ETag, recognises its own body there, and writes over it:
/// never "written by someone else".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_write_cut_in_flight_is_recognised_by_its_content() {
    let fx = Fixture::new(&["disk1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let blobs: Arc<snapback::azure::AzureBlobs> = Arc::new(snapback::azure::AzureBlobs::new(
        fx.config().accounts.values(),
    ));
    let backup = fx.backup("disk1");
    let lock = lock_blob(&backup);
    let lease = take_disk1(&blobs, &backup).await.unwrap();
    let body = |n: u8| bytes::Bytes::from(vec![b'x'; n as usize]);
    lease.write_record("disk1", "t1", body(1)).await.unwrap();

    // The next write is held 1 s by the network; its sender gives up after 200 ms.
    let held = proxy.add(
        Rule::new(Fault::Delay(std::time::Duration::from_secs(1)))
            .op(Op::PutBlob)
            .blob("backups/disk1.snapback-state"),
    );
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        lease.write_record("disk1", "t1", body(2)),
    )
    .await;
    assert!(cut.is_err(), "the write was cut in flight");
    proxy.clear_rules();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(proxy.stats(held).injected, 1);
    let (_, landed) = blobs.read_lock_blob(&lock).await.unwrap().unwrap();
    assert_eq!(landed, body(2), "the cut write landed after all");

    lease
        .write_record("disk1", "t1", body(3))
        .await
        .expect("the next write recognises the cut one and writes over it");
    let (_, now) = blobs.read_lock_blob(&lock).await.unwrap().unwrap();
    assert_eq!(now, body(3));
    let refused = proxy
        .answered()
        .iter()
        .filter(|a| a.blob == "backups/disk1.snapback-state" && a.status == 412)
        .count();
    assert_eq!(refused, 1, "one write met the cut one's ETag");
    lease.release().await;
}
