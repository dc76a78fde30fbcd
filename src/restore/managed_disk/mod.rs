//! `restore --to-managed-disk`: a restore point written into a new managed disk
//! (docs/managed-disks.md, "Restore").
//!
//! The disk is created empty for upload (`createOption: Upload`, `uploadSizeBytes` = size +
//! the 512-byte VHD footer), written through its write SAS — the restore point's allocated
//! ranges, read from the backup account and put in 4 MiB pages (zero chunks skipped: an
//! upload disk reads as zeros), then the fixed-VHD footer —, and its upload ended with
//! `endGetAccess`. An existing disk is refused unless `force`, which deletes it first.
//! An interrupted restore leaves a disk awaiting upload; running again with `--force`
//! replaces it.
//!
//! With `rebase` the disk's chain restarts on the new disk (see `rebase`).
//!
//! Beside this file: `upload_size`, the sizes an Upload disk may have; `commands`, the `az`
//! commands printed to swap the new disk into a VM.

mod commands;
mod upload_size;

pub use commands::{swap_commands, swap_commands_for};
pub use upload_size::{needs_rounding, upload_disk_size, MAX_UPLOAD_DISK, MIN_UPLOAD_DISK};

use crate::arm::{Access, Arm, ArmErrorKind, ResourceGroup, ResourceId, Tags, UploadDiskSpec};
use crate::config::{DiskConfig, DiskSource};
use crate::model::pages::MAX_PUT_BYTES;
use crate::model::{tags, SnapshotId};
use crate::ownership::DiskLease;
use crate::restore::chain::{finish_first_cycle, leased_etag, FirstCycle, Leasing};
use crate::restore::verify::{allocated_ranges, union_chunks};
use crate::restore::vhd;
use crate::restore::{blob_err, PointSelector, RestoreError, Restorer};
use crate::source::managed_disk::props::{plan_upload, Overrides, RecordedDisk};
use crate::source::managed_disk::{arm_err, ManagedDiskSource};
use crate::source::Source;
use crate::state::StateStore;
use crate::storage::copy::{CopyEnd, CopyWait};
use crate::storage::{retry_unanswered, ExportBlobs, IfBlob, PageBlobs};
use futures::TryStreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// ARM and the data plane behind its SAS URLs (built once, by `service`; the in-memory
/// fake in the simulation tests).
pub type Clients<'a> = (&'a Arc<dyn Arm>, &'a Arc<dyn ExportBlobs>);

/// How long the write SAS of the upload is asked for (ended as soon as the upload is done).
const WRITE_SAS_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct ManagedRestoreRequest {
    pub point: PointSelector,
    pub target: ResourceId,
    /// e.g. `Premium_LRS`; Azure's default if None.
    pub sku: Option<String>,
    pub zone: Option<String>,
    /// Replace an existing disk of that name.
    pub force: bool,
    /// Restart the disk's chain on the new disk.
    pub rebase: bool,
    /// `--os-type`, `--hyper-v-generation`, `--disk-encryption-set`: override what the
    /// restore point recorded of the source disk (`crate::source::managed_disk::props`).
    pub os_type: Option<String>,
    pub hyper_v_generation: Option<String>,
    pub disk_encryption_set: Option<String>,
}

/// The chain `--rebase` restarted on the new disk; its next cycle is incremental.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ManagedRebase {
    /// `S(0)`: the new disk's first snapshot resource.
    pub source_snapshot: String,
    /// `B(0)`: the backup blob's snapshot with the same bytes.
    pub restore_point: String,
    /// The old disk's snapshot resources deleted (the old chain's `S(n)`).
    pub retired: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ManagedRestoreReport {
    pub disk: String,
    pub restore_point: String,
    pub source_snapshot: String,
    /// The restore point's size: the bytes restored.
    pub size: u64,
    /// The new disk's size (the upload is 512 bytes more): `size`, or more where Azure's
    /// upload minimum or MiB granularity made the disk larger ([`upload_disk_size`]).
    pub disk_size: u64,
    pub target: String,
    pub location: String,
    pub bytes_written: u64,
    pub seconds: f64,
    pub rebased: Option<ManagedRebase>,
    /// The new disk's `osType` (None: a data disk), as created.
    pub os_type: Option<String>,
    pub hyper_v_generation: Option<String>,
    /// The disk encryption set it was created with (customer-managed key), if any.
    pub disk_encryption_set: Option<String>,
    /// Whether the restore point recorded the source disk's properties (points taken
    /// before records were kept did not: the new disk then has only what the flags give).
    pub recorded: bool,
    /// A Trusted Launch disk: the bytes of VM guest state uploaded with it.
    pub guest_state: Option<u64>,
}

/// Writes restore point `req.point` of `disk` into the new managed disk `req.target`;
/// `copy_stall` bounds the rebase's copy (`copy_stall_timeout`).
///
/// With `--rebase` the whole restore runs under the disk's lease, taken first: while a
/// replica runs a cycle of the disk, nothing is done and the error names it.
pub async fn restore(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    disk: &DiskConfig,
    clients: Clients<'_>,
    req: &ManagedRestoreRequest,
    copy_stall: Duration,
    leasing: Option<&Leasing>,
) -> Result<ManagedRestoreReport, RestoreError> {
    let managed = matches!(disk.source, DiskSource::Managed { .. });
    let lease = match leasing.filter(|_| req.rebase && managed) {
        Some(l) => Some(l.acquire(blobs, &disk.name, &disk.backup).await?),
        None => None,
    };
    let report = restore_under(blobs, store, disk, clients, req, copy_stall, lease.as_ref()).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    report
}

async fn restore_under(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    disk: &DiskConfig,
    (arm, sas): Clients<'_>,
    req: &ManagedRestoreRequest,
    copy_stall: Duration,
    lease: Option<&DiskLease>,
) -> Result<ManagedRestoreReport, RestoreError> {
    let started = Instant::now();
    let target = req.target.to_string();
    let chosen = Restorer::new(blobs, store, disk).choose(&req.point).await?;
    // The new disk goes where the backed-up disk is.
    let DiskSource::Managed {
        disk: source,
        snapshot_group,
    } = &disk.source
    else {
        return Err(RestoreError::ManagedTarget {
            target,
            reason: format!(
                "disk {} is a page blob; restore it with --to, then import the blob (`az disk create --source`)",
                disk.name
            ),
        });
    };
    let arm_fail = |what: String, id: &ResourceId| {
        let id = id.clone();
        move |e| RestoreError::Blob {
            what,
            source: arm_err(&id, e),
        }
    };
    let recorded = recorded_disk(blobs, disk, &chosen.snapshot, &target).await?;
    let overrides = Overrides {
        os_type: req.os_type.clone(),
        hyper_v_generation: req.hyper_v_generation.clone(),
        sku: req.sku.clone(),
        zone: req.zone.clone(),
        disk_encryption_set: req.disk_encryption_set.clone(),
    };
    let refused = |reason: String| RestoreError::ManagedTarget {
        target: target.clone(),
        reason,
    };
    let problems = overrides.problems();
    if !problems.is_empty() {
        return Err(refused(problems.join("; ")));
    }
    let plan = plan_upload(recorded.as_ref(), &overrides).map_err(refused)?;
    // A Trusted Launch disk is uploaded with its VM guest state, read and checked against
    // the restore point's record before anything is created.
    let guest = if plan.is_trusted_launch() {
        Some(
            guest_state_of(blobs, disk, &chosen)
                .await?
                .map_err(refused)?,
        )
    } else {
        None
    };
    // Before anything is read or created: a size no Upload disk can take is refused here.
    upload_disk_size(chosen.size, false).map_err(refused)?;
    // The recorded location: the source disk may be gone. Older points: the disk's now.
    let location = match &plan.location {
        Some(l) => l.clone(),
        None => {
            arm.get_disk(source)
                .await
                .map_err(arm_fail(format!("read disk {source}"), source))?
                .location
        }
    };
    match arm.get_disk(&req.target).await {
        Ok(existing) if !req.force => {
            return Err(RestoreError::TargetExists {
                target,
                detail: format!(
                    " ({} bytes, state {})",
                    existing.properties.disk_size_bytes.unwrap_or(0),
                    existing
                        .properties
                        .disk_state
                        .as_deref()
                        .unwrap_or("unknown")
                ),
            })
        }
        Ok(_) => {
            tracing::warn!(target = %target, "--force: deleting the existing disk");
            arm.end_get_access(&req.target)
                .await
                .map_err(arm_fail(format!("end access to {target}"), &req.target))?;
            arm.delete_disk(&req.target)
                .await
                .map_err(arm_fail(format!("delete {target}"), &req.target))?;
        }
        Err(e) if e.kind() == ArmErrorKind::NotFound => {}
        Err(e) => return Err(arm_fail(format!("read disk {target}"), &req.target)(e)),
    }
    let point = SnapshotId::new(chosen.snapshot.clone());
    let tags: Tags = crate::model::tags::restored(
        crate::model::tags::RestoreState::Complete,
        &disk.name,
        &point,
        None,
    );
    let mut spec = UploadDiskSpec {
        location: location.clone(),
        upload_size_bytes: chosen.size + vhd::FOOTER_SIZE,
        sku: plan.sku.clone(),
        zone: plan.zone.clone(),
        tags,
    };
    // The restore point's own size first: a disk equal to the source is always preferred
    // (and `--rebase` needs it). Azure refuses an Upload disk under 20 MiB or not a whole
    // number of MiB (400); on that refusal of a size that breaks that documented rule, the
    // disk is made at the next size Azure takes. A 400 for anything else stays an error.
    let mut disk_size = chosen.size;
    let created = match arm
        .create_upload_disk(&req.target, &spec, &plan.recipe)
        .await
    {
        Err(e) if e.status() == Some(400) && needs_rounding(chosen.size) => {
            disk_size = upload_disk_size(chosen.size, req.rebase)
                .map_err(|reason| refused(format!("{reason} (ARM refused the exact size: {e})")))?;
            tracing::warn!(target = %target, restore_point = chosen.size, disk = disk_size, code = e.code().unwrap_or(""), "Azure refused an Upload disk of the restore point's size: the disk is made larger, the rest reads as zeros");
            spec.upload_size_bytes = disk_size + vhd::FOOTER_SIZE;
            arm.create_upload_disk(&req.target, &spec, &plan.recipe)
                .await
        }
        other => other,
    };
    created.map_err(arm_fail(format!("create {target}"), &req.target))?;
    let grant = arm
        .grant_access(
            &req.target,
            Access::Write,
            WRITE_SAS_LIFETIME,
            guest.is_some(),
        )
        .await
        .map_err(arm_fail(format!("write access to {target}"), &req.target))?;
    let write = grant.sas;

    let backup = &disk.backup;
    let ranges = allocated_ranges(blobs, backup, Some(&chosen.snapshot))
        .await
        .map_err(blob_err(format!("page ranges of restore point {point}")))?;
    let chunks = union_chunks(&ranges, &[], chosen.size, MAX_PUT_BYTES);
    let written: u64 = futures::stream::iter(chunks.into_iter().map(Ok::<_, RestoreError>))
        .map_ok(|r| {
            let (write, target) = (&write, &target);
            let snapshot = chosen.snapshot.as_str();
            async move {
                let data = retry_unanswered("the restore point", || {
                    blobs.read(backup, Some(snapshot), r)
                })
                .await
                .map_err(blob_err(format!("read restore point {snapshot} {r}")))?;
                // The upload disk reads as zeros where nothing is written.
                if data.iter().all(|b| *b == 0) {
                    return Ok(0);
                }
                sas.put_pages(target, write, r.start, data)
                    .await
                    .map_err(blob_err(format!("write {target} {r}")))?;
                Ok(r.len())
            }
        })
        .try_buffered(disk.concurrency.max(1))
        .try_fold(0u64, |a, n| async move { Ok(a + n) })
        .await?;
    // The bytes past the restore point (up to `disk_size`) are never written: an upload disk
    // reads as zeros where nothing is put. The footer closes the disk, not the restore point.
    let footer = vhd::fixed_footer(
        disk_size,
        chrono::Utc::now().timestamp(),
        rand::random::<[u8; 16]>(),
    );
    sas.put_pages(
        &target,
        &write,
        disk_size,
        bytes::Bytes::copy_from_slice(&footer),
    )
    .await
    .map_err(blob_err(format!("write the VHD footer of {target}")))?;
    if let Some(data) = &guest {
        upload_guest_state(sas.as_ref(), &target, grant.guest_state.as_ref(), data).await?;
    }
    // Ends the upload: the disk becomes an ordinary unattached disk.
    arm.end_get_access(&req.target)
        .await
        .map_err(arm_fail(format!("end the upload of {target}"), &req.target))?;
    let rebased = if req.rebase {
        // Under the disk's lease, as a cycle: no replica writes the backup meanwhile, and one
        // that held it before is fenced off by the token this lease raised.
        let old = (source, snapshot_group);
        Some(
            rebase(
                blobs,
                store,
                disk,
                (arm, sas),
                &req.target,
                old,
                &chosen,
                copy_stall,
                lease,
            )
            .await?,
        )
    } else {
        None
    };
    Ok(ManagedRestoreReport {
        disk: disk.name.clone(),
        restore_point: chosen.snapshot,
        source_snapshot: chosen.source_snapshot,
        size: chosen.size,
        disk_size,
        target,
        location,
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
        rebased,
        os_type: plan.recipe.os_type.clone(),
        hyper_v_generation: plan.recipe.hyper_v_generation.clone(),
        disk_encryption_set: plan
            .recipe
            .encryption
            .as_ref()
            .and_then(|e| e.disk_encryption_set_id.clone()),
        recorded: recorded.is_some(),
        guest_state: guest.as_ref().map(|d| d.len() as u64),
    })
}

/// The VM guest state copy restore point `chosen` of a Trusted Launch disk names, read and
/// checked against its record (Ok(Err): the reason the restore is refused).
async fn guest_state_of(
    blobs: &dyn PageBlobs,
    disk: &DiskConfig,
    chosen: &crate::restore::Chosen,
) -> Result<Result<Vec<u8>, String>, RestoreError> {
    let point = &chosen.snapshot;
    let g = match &chosen.guest_state {
        Some(Ok(g)) => g,
        Some(Err(why)) => return Ok(Err(format!("restore point {point}: {why}"))),
        None => {
            return Ok(Err(format!(
                "restore point {point} of a Trusted Launch disk names no copy of its VM guest \
                 state (vTPM, UEFI): a disk made from it would boot with a blank vTPM \
                 (BitLocker recovery, TPM-sealed keys lost); restore it with --to to a page blob \
                 to reach its data"
            )))
        }
    };
    let read = crate::restore::verify::read_guest_state(blobs, &disk.backup, g)
        .await
        .map_err(blob_err(format!("read the VM guest state copy {}", g.blob)))?;
    Ok(read.map_err(|why| format!("restore point {point}: {why}")))
}

/// Writes the VM guest state `data` through the upload disk's `securityDataAccessSAS`
/// (its write grant's second SAS); zero chunks are skipped, as for the disk.
async fn upload_guest_state(
    sas: &dyn ExportBlobs,
    target: &str,
    url: Option<&crate::model::secrets::SasUrl>,
    data: &[u8],
) -> Result<(), RestoreError> {
    let no_sas = || RestoreError::Blob {
        what: format!("write the VM guest state of {target}"),
        source: crate::storage::BlobError::bad_response(
            crate::storage::Resource::Managed(target.to_string()),
            200,
            crate::source::managed_disk::NO_GUEST_STATE_SAS,
            "the write grant of the UploadPreparedSecure disk answered no securityDataAccessSAS"
                .into(),
        ),
    };
    let url = url.ok_or_else(no_sas)?;
    let room = sas
        .size(target, url)
        .await
        .map_err(blob_err(format!("size of the VM guest state of {target}")))?;
    if data.len() as u64 > room {
        return Err(RestoreError::ManagedTarget {
            target: target.to_string(),
            reason: format!(
                "the VM guest state copy is {} bytes, the new disk's guest state blob {room}",
                data.len()
            ),
        });
    }
    for r in crate::cycle::guest_state::chunks(data.len() as u64) {
        // Both bounds are within `data`: the chunks cover exactly its length.
        let piece = &data[r.start as usize..r.end as usize];
        if piece.iter().all(|b| *b == 0) {
            continue;
        }
        sas.put_pages(target, url, r.start, bytes::Bytes::copy_from_slice(piece))
            .await
            .map_err(blob_err(format!(
                "write the VM guest state of {target} {r}"
            )))?;
    }
    Ok(())
}

/// Restarts `disk`'s chain on the restored disk `target`, which holds restore point `point`:
///
/// 1. `S(0)`: a snapshot resource of `target`, tagged as a cycle's.
/// 2. `B(0)`: the restore point copied over the backup base blob (a copy from its own
///    snapshot, inside the account), then snapshotted with `S(0)` recorded. Both hold the
///    restore point's bytes, so the pair is a finished cycle.
/// 3. The state records that cycle with `target` as the disk's bound source, so once the
///    config names `target` (`managed_disk`) the runner sees no re-pointing and the next
///    cycle diffs against `S(0)`. Older restore points stay (they are snapshots).
/// 4. The old chain is retired: read access to the old disk's snapshots is ended and its
///    tagged snapshot resources deleted (no cycle will diff against them again).
#[allow(clippy::too_many_arguments)]
async fn rebase(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    disk: &DiskConfig,
    (arm, sas): Clients<'_>,
    target: &ResourceId,
    (old, old_group): (&ResourceId, &ResourceGroup),
    chosen: &crate::restore::Chosen,
    copy_stall: Duration,
    lease: Option<&DiskLease>,
) -> Result<ManagedRebase, RestoreError> {
    let point = chosen.snapshot.as_str();
    let now = chrono::Utc::now().timestamp();
    let tag = format!("rebase{:010x}", rand::random::<u64>() >> 24);
    // The snapshot group follows the disk when it was left to its default.
    let group = if old_group == &old.group {
        target.group.clone()
    } else {
        old_group.clone()
    };
    let chain = lease.map(DiskLease::chain);
    let new_source =
        ManagedDiskSource::new(arm.clone(), sas.clone(), target.clone(), group).in_chain(chain);
    let s0 = new_source
        .take_snapshot(&disk.name, &tag)
        .await
        .map_err(blob_err(format!(
            "first snapshot of the restored disk {target}"
        )))?
        .id;
    new_source
        .release(&disk.name)
        .await
        .map_err(blob_err(format!("end access to the snapshots of {target}")))?;

    // The old chain's unfinished cycle must not resume against the rewritten base.
    if let Some(open) = store.open_cycle(&disk.name)? {
        store.abandon_cycle(open.id)?;
    }
    let backup = &disk.backup;
    // Onto the backup only as it was when its token was checked: a later owner's blob is
    // never copied over.
    let condition = match lease {
        None => IfBlob::Any,
        Some(lease) => {
            let props = blobs
                .properties(backup, None)
                .await
                .map_err(blob_err(format!("properties of {backup}")))?;
            match props {
                None => IfBlob::Absent,
                Some(p) => IfBlob::Is(leased_etag(blobs, lease, &disk.name, backup, &p).await?),
            }
        }
    };
    let base_tags = tags::in_chain(tags::backup_base(&disk.name), chain);
    let copy_id = blobs
        .start_copy(backup, backup, Some(point), &base_tags, &condition)
        .await
        .map_err(blob_err(format!(
            "copy restore point {point} over {backup}"
        )))?;
    let end = crate::storage::copy::wait(
        blobs,
        backup,
        &copy_id,
        (Duration::from_millis(200), Duration::from_secs(10)),
        copy_stall,
        &tokio_util::sync::CancellationToken::new(),
        |copied, total| tracing::info!(%backup, copied, total, "rebase: promoting the restore point"),
    )
    .await
    .map_err(blob_err(format!("status of the copy to {backup}")))?;
    if let CopyWait::Ended(e) = end {
        let status = match e {
            CopyEnd::Success => None,
            CopyEnd::Failed(why) => Some(format!("failed: {why}")),
            CopyEnd::Aborted(why) => Some(format!("was aborted: {why}")),
            CopyEnd::Gone => Some("is no longer reported on the destination".into()),
            CopyEnd::Stalled(stall) => {
                // Still pending on the service: aborted, so that it does not go on writing
                // over the backup blob after the rebase has failed.
                if let Err(e) = blobs.abort_copy(backup, &copy_id).await {
                    tracing::warn!(%backup, error = %e, "cannot abort the stalled copy");
                }
                Some(stall.to_string())
            }
        };
        if let Some(status) = status {
            return Err(RestoreError::CopyFailed {
                source_blob: format!("{backup} snapshot {point}"),
                dest: backup.to_string(),
                copy_id,
                status,
                then: "the rebase stopped before the new chain's first restore point".into(),
            });
        }
    }
    // B(0) records the base's ETag (a snapshot leaves it alone), as a cycle's restore point
    // does: the chain then survives a lost state.
    let b0 = finish_first_cycle(
        blobs,
        store,
        lease,
        FirstCycle {
            disk: &disk.name,
            source: target.to_string(),
            backup,
            tag: &tag,
            s0: &s0,
            guest_state: chosen.guest_state.as_ref().and_then(|g| g.as_ref().ok()),
            note: format!("rebased onto managed disk {target}"),
            now,
        },
    )
    .await?;

    // Only this chain's snapshots and access grants: another installation may back up the
    // old disk under the same name.
    let old_source =
        ManagedDiskSource::new(arm.clone(), sas.clone(), old.clone(), old_group.clone())
            .in_chain(chain);
    old_source
        .release(&disk.name)
        .await
        .map_err(blob_err(format!("end access to the snapshots of {old}")))?;
    let mut retired = Vec::new();
    for s in old_source
        .own_snapshots(&disk.name)
        .await
        .map_err(blob_err(format!("snapshots of {old}")))?
    {
        old_source
            .delete_snapshot(&s)
            .await
            .map_err(blob_err(format!("delete the old chain's snapshot {s}")))?;
        retired.push(s.as_str().to_string());
    }
    Ok(ManagedRebase {
        source_snapshot: s0.as_str().to_string(),
        restore_point: b0.as_str().to_string(),
        retired,
    })
}

/// What restore point `point` recorded of the source disk: None for a point from before
/// records were kept; an unreadable record refuses the restore (nothing written) rather
/// than making a disk whose properties are guessed.
async fn recorded_disk(
    blobs: &dyn PageBlobs,
    disk: &DiskConfig,
    point: &str,
    target: &str,
) -> Result<Option<RecordedDisk>, RestoreError> {
    let snapshots = blobs
        .list_snapshots(&disk.backup)
        .await
        .map_err(blob_err(format!("restore points of disk {}", disk.name)))?;
    let Some(info) = snapshots.into_iter().find(|s| s.snapshot == point) else {
        return Ok(None);
    };
    match RecordedDisk::from_metadata(&info.metadata) {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(reason)) => Err(RestoreError::ManagedTarget {
            target: target.to_string(),
            reason: format!("restore point {point}: {reason}"),
        }),
    }
}
