//! A page-blob disk's check: every operation a cycle and a restore need, tried for real on
//! scratch objects (two source snapshots, a page blob beside the backup) that are removed
//! whatever happens. Apart because it is the one part of the check that writes.

use super::report::{CheckRow, Operation, Outcome};
use super::schedule_limits::premium_schedule_warning;
use super::{DiskCheck, TAG_CHECK};
use crate::azure::AzureBlobs;
use crate::config::{Config, CopyMode, DiskConfig};
use crate::model::pages::{ByteRange, PAGE_SIZE};
use crate::storage::{
    BlobError, BlobRef, ErrorKind, Fence, IfBlob, Metadata, NewPageBlob, PageBlobs, PageListQuery,
    Resource,
};
use bytes::Bytes;
use chrono::Utc;

/// Size of the scratch page blob.
const SCRATCH_SIZE: u64 = 8 * PAGE_SIZE;
/// The fencing token of the scratch blob: in the range cycles use (`ownership::FENCE_FLOOR`).
const CHECK_FENCE: u64 = crate::ownership::FENCE_FLOOR;

/// What the check created, removed at the end in reverse order of creation.
#[derive(Default)]
struct Scratch {
    source_snapshots: Vec<String>,
    created_container: bool,
    backup_blob: bool,
    backup_snapshots: Vec<String>,
}

/// A page-blob disk's check: the source side, the account's SKU, the backup side on a
/// scratch blob beside the backup, then the clean-up.
pub(super) async fn check_page_blob(
    blobs: &AzureBlobs,
    config: &Config,
    disk: &DiskConfig,
    source: BlobRef,
) -> Vec<CheckRow> {
    let backup = disk.backup.clone();
    let id = format!("{:08x}", rand::random::<u32>());
    let scratch = BlobRef::new(
        &backup.account,
        &backup.container,
        &format!("{}.snapback-check-{id}", backup.blob),
    );
    let mut cx = DiskCheck {
        config,
        disk,
        rows: Vec::new(),
    };
    let mut made = Scratch::default();
    run_source(blobs, &mut cx, &source, &id, &mut made).await;
    run_account_sku(blobs, &mut cx, &source).await;
    run_backup(blobs, &mut cx, &source, &scratch, &backup, &mut made).await;
    cleanup(blobs, &mut cx, &source, &scratch, made).await;
    cx.rows
}

/// Source side: properties, two scratch snapshots, list, diff, read.
async fn run_source(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    id: &str,
    made: &mut Scratch,
) {
    use Operation::*;
    let props = blobs.properties(source, None).await.and_then(|p| {
        p.ok_or_else(|| {
            BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(source),
                "get properties",
            )
        })
    });
    let Some(props) = cx.record(SourceRead, source, props) else {
        cx.skip(
            &[SourceSnapshot, SourceList, SourceDiff, SourceReadSnapshot],
            source,
            SourceRead,
        );
        return;
    };
    let tags: Metadata = [(TAG_CHECK.to_string(), id.to_string())].into();
    let first = blobs.create_snapshot(source, &tags).await;
    let first = cx.record(SourceSnapshot, source, first);
    let Some(first) = first else {
        cx.skip(
            &[SourceList, SourceDiff, SourceReadSnapshot],
            source,
            SourceSnapshot,
        );
        return;
    };
    made.source_snapshots.push(first.clone());
    // The diff needs a newer snapshot to compare with the first.
    let second = match blobs.create_snapshot(source, &tags).await {
        Ok(s) => {
            made.source_snapshots.push(s.clone());
            Some(s)
        }
        Err(e) => {
            cx.record::<()>(SourceDiff, source, Err(e));
            None
        }
    };
    let listed = blobs.list_snapshots(source).await.and_then(|list| {
        if list.iter().any(|s| s.snapshot == first) {
            Ok(())
        } else {
            Err(BlobError::bad_response(
                Resource::blob(source),
                200,
                "SnapshotNotListed",
                format!("list snapshots: the new snapshot {first} is not in the list"),
            ))
        }
    });
    cx.record(SourceList, source, listed);
    let Some(second) = second else {
        cx.skip(&[SourceReadSnapshot], source, SourceSnapshot);
        return;
    };
    let query = PageListQuery {
        snapshot: Some(&second),
        prev_snapshot: Some(&first),
        max_results: Some(100),
        ..Default::default()
    };
    let diff = blobs.page_ranges(source, &query).await.map(|_| ());
    cx.record(SourceDiff, source, diff);
    if props.size == 0 {
        let why = "the source blob is empty: nothing to read".to_string();
        cx.note(SourceReadSnapshot, source, Outcome::Pass, why);
        return;
    }
    let range = ByteRange::new(0, props.size.min(PAGE_SIZE));
    let read = blobs.read(source, Some(&second), range).await.map(|_| ());
    cx.record(SourceReadSnapshot, source, read);
}

/// The source account's SKU against the disk's schedule: a warning (a note on a pass, so the
/// check's exit status is unchanged) when a premium account cannot keep the schedule.
async fn run_account_sku(blobs: &AzureBlobs, cx: &mut DiskCheck<'_>, source: &BlobRef) {
    let note = match blobs.account_sku(source).await {
        Ok(sku) => {
            let sku = sku.unwrap_or_default();
            let schedule = cx.disk.schedule.as_ref();
            premium_schedule_warning(&cx.disk.name, &source.account, &sku, schedule, Utc::now())
                .unwrap_or_else(|| format!("account '{}' is {sku}", source.account))
        }
        // Not a permission a cycle needs: say what was not checked, without failing.
        Err(e) => format!("{e}; the premium 10-minute snapshot limit was not checked"),
    };
    cx.note(Operation::SourceAccountSku, source, Outcome::Pass, note);
}

/// Backup side, on the scratch blob: create, write, lease, snapshot, list, read, delete a
/// snapshot, copy from the source.
async fn run_backup(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    scratch: &BlobRef,
    backup: &BlobRef,
    made: &mut Scratch,
) {
    use Operation::*;
    let rest = [
        BackupWrite,
        BackupLease,
        BackupSnapshot,
        BackupList,
        BackupRead,
        BackupDelete,
        Copy,
    ];
    let created = async {
        // Create Container as a cycle does; remove it afterwards only when it surely did not
        // exist before (a SAS without read leaves that unknown: then it stays).
        let existed = blobs.container_exists(backup).await.unwrap_or(true);
        blobs.ensure_container(backup).await?;
        made.created_container = !existed;
        // Created as a seed creates the backup blob: tagged and with a fencing token.
        let new = NewPageBlob {
            metadata: [(TAG_CHECK.to_string(), "backup".to_string())].into(),
            sequence_number: Some(CHECK_FENCE),
            condition: IfBlob::Absent,
        };
        blobs.create_page_blob(scratch, SCRATCH_SIZE, &new).await
    }
    .await;
    if cx.record(BackupCreate, scratch, created).is_none() {
        cx.skip(&rest, scratch, BackupCreate);
        return;
    }
    made.backup_blob = true;
    // The writes of an apply, each fenced as a cycle fences them (the token raised first, as
    // an owner raises it when it takes a disk over), and a resize If-Match.
    let write = async {
        blobs
            .set_sequence_number(scratch, CHECK_FENCE + 1, &IfBlob::Any)
            .await?;
        let fence = Some(Fence(CHECK_FENCE + 1));
        blobs
            .put_pages(
                scratch,
                0,
                Bytes::from(vec![0x5a; PAGE_SIZE as usize]),
                fence,
            )
            .await?;
        let etag = blobs
            .clear_pages(scratch, ByteRange::new(0, PAGE_SIZE), fence)
            .await?;
        blobs
            .resize(scratch, SCRATCH_SIZE + PAGE_SIZE, &IfBlob::Is(etag))
            .await
    }
    .await;
    cx.record(BackupWrite, scratch, write);
    let lease = blobs.lease_and_release(scratch).await;
    cx.record(BackupLease, scratch, lease);
    let tags: Metadata = [(TAG_CHECK.to_string(), "backup".to_string())].into();
    let snap = blobs.create_snapshot(scratch, &tags).await;
    match cx.record(BackupSnapshot, scratch, snap) {
        Some(snap) => {
            made.backup_snapshots.push(snap.clone());
            let listed = blobs.list_snapshots(scratch).await.map(|_| ());
            cx.record(BackupList, scratch, listed);
            let read = blobs
                .read(scratch, Some(&snap), ByteRange::new(0, PAGE_SIZE))
                .await
                .map(|_| ());
            cx.record(BackupRead, scratch, read);
            let deleted = blobs.delete_snapshot(scratch, &snap).await;
            if cx.record(BackupDelete, scratch, deleted).is_some() {
                made.backup_snapshots.clear();
            }
        }
        None => cx.skip(
            &[BackupList, BackupRead, BackupDelete],
            scratch,
            BackupSnapshot,
        ),
    }
    match made.source_snapshots.last().cloned() {
        Some(snap) => copy(blobs, cx, source, &snap, scratch).await,
        None => cx.skip(&[Copy], scratch, SourceSnapshot),
    }
}

/// Copy Blob from a source snapshot onto the scratch blob (aborted at once: a check does not
/// copy a whole disk), then Put Page From URL when the disk may use server copy.
async fn copy(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    snapshot: &str,
    scratch: &BlobRef,
) {
    let tags: Metadata = [(TAG_CHECK.to_string(), "copy".to_string())].into();
    let started = async {
        let id = blobs
            .start_copy(scratch, source, Some(snapshot), &tags, &IfBlob::Any)
            .await?;
        blobs.abort_copy(scratch, &id).await
    }
    .await;
    if let Err(e) = started {
        // A source the backup service cannot be given read access to (a SAS-token account,
        // whose token is never forwarded; a managed identity) is seeded, and with
        // copy_mode = "auto"/"client" applied, through snapback: not a failure of the setup.
        if e.kind == ErrorKind::NoReadAccess && cx.disk.copy_mode != CopyMode::Server {
            cx.note(
                Operation::Copy,
                scratch,
                Outcome::Pass,
                format!("no server-side copy, cycles copy through snapback: {e}"),
            );
        } else {
            cx.record::<()>(Operation::Copy, scratch, Err(e));
        }
        return;
    }
    if cx.disk.copy_mode == CopyMode::Client {
        cx.record(Operation::Copy, scratch, Ok(()));
        return;
    }
    // Copy Blob may have left the scratch blob pending or resized: start from a fresh one.
    let server = async {
        blobs
            .create_page_blob(scratch, SCRATCH_SIZE, &NewPageBlob::default())
            .await?;
        blobs
            .put_pages_from_url(
                scratch,
                ByteRange::new(0, PAGE_SIZE),
                source,
                Some(snapshot),
                0,
                None,
            )
            .await
    }
    .await;
    match server {
        Ok(_) => cx.record(Operation::Copy, scratch, Ok(())),
        Err(e) if cx.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
            cx.note(
                Operation::Copy,
                scratch,
                Outcome::Pass,
                format!("Copy Blob ok; Put Page From URL refused, cycles copy through snapback (copy_mode = \"auto\"): {e}"),
            );
            None
        }
        Err(e) => cx.record::<()>(Operation::Copy, scratch, Err(e)),
    };
}

/// Removes every scratch object; anything left is a failed row naming it.
async fn cleanup(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    scratch: &BlobRef,
    made: Scratch,
) {
    let mut left = Vec::new();
    for snap in &made.backup_snapshots {
        if let Err(e) = blobs.delete_snapshot(scratch, snap).await {
            left.push(format!("{scratch} snapshot {snap}: {e}"));
        }
    }
    if made.backup_blob {
        if let Err(e) = blobs.delete_blob(scratch).await {
            left.push(format!("{scratch}: {e}"));
        }
    }
    if made.created_container {
        if let Err(e) = blobs.delete_container(scratch).await {
            left.push(format!(
                "container {}/{}: {e}",
                scratch.account, scratch.container
            ));
        }
    }
    let mut source_failed = false;
    for snap in &made.source_snapshots {
        let r = blobs.delete_snapshot(source, snap).await;
        if let Err(e) = &r {
            left.push(format!(
                "{source} snapshot {snap} (tagged {TAG_CHECK}): {e}"
            ));
        }
        source_failed |= r.is_err();
    }
    if !made.source_snapshots.is_empty() {
        let r = if source_failed {
            Err(BlobError::local(
                ErrorKind::Conflict,
                Resource::blob(source),
                "delete snapshots: not all were deleted, see the clean-up row",
            ))
        } else {
            Ok(())
        };
        cx.record(Operation::SourceDeleteSnapshot, source, r);
    }
    if left.is_empty() {
        cx.note(Operation::Cleanup, scratch, Outcome::Pass, String::new());
    } else {
        cx.note(
            Operation::Cleanup,
            scratch,
            Outcome::Fail,
            format!("left behind, delete by hand: {}", left.join("; ")),
        );
    }
}
