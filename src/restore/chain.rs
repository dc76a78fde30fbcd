//! The first cycle of a rebased chain, and the disk lease it is finished under. Both rebases
//! (onto a page blob in `restore`, onto a managed disk in `managed_disk`) end the same way: the
//! restored disk's lease taken as a cycle would take it, `B(0)` snapshotted `If-Match` the
//! fenced backup, and the finished cycle recorded in the state and the lock blob. It stands
//! apart from the page-blob restore because it is the part the two restores share.

use super::{blob_err, RestoreError};
use crate::cycle::handover::publish_record;
use crate::model::record::CycleRecord;
use crate::model::tags;
use crate::model::SnapshotId;
use crate::ownership::{DiskLease, Owner, OwnershipError};
use crate::state::StateStore;
use crate::storage::lease::LeaseBlobs;
use crate::storage::{BlobError, BlobRef, ErrorKind, PageBlobs, Resource};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a rebase needs to take the lease of the disk whose chain it restarts, as a cycle
/// would: the lease store and the owner (see `ownership`).
#[derive(Clone)]
pub struct Leasing {
    pub leases: Arc<dyn LeaseBlobs>,
    pub owner: Owner,
}

impl Leasing {
    /// Takes `disk`'s lease (its backup is `backup`), naming the holder if it is held (a
    /// cycle running there now): nothing is written then.
    pub(crate) async fn acquire(
        &self,
        blobs: &dyn PageBlobs,
        disk: &str,
        backup: &BlobRef,
    ) -> Result<DiskLease, RestoreError> {
        Ok(DiskLease::acquire(
            self.leases.clone(),
            blobs,
            disk,
            backup,
            &self.owner,
            CancellationToken::new(),
        )
        .await?)
    }
}

/// The ETag to write `backup` (as `props` shows it) `If-Match` on under `lease`, once it
/// carries the lease's token (see `ownership::token_etag`); an error if a later owner's does.
pub(crate) async fn leased_etag(
    blobs: &dyn PageBlobs,
    lease: &DiskLease,
    disk: &str,
    backup: &BlobRef,
    props: &crate::storage::BlobProps,
) -> Result<String, RestoreError> {
    let etag = crate::ownership::token_etag(blobs, backup, props, lease.token())
        .await
        .map_err(blob_err(format!("fencing token of {backup}")))?;
    Ok(etag.ok_or_else(|| OwnershipError::Unfenced {
        disk: disk.to_string(),
        backup: backup.clone(),
        token: lease.token(),
        reason: "another owner took the disk over during the rebase".into(),
    })?)
}

/// The first restore point `B(0)` of a rebased chain on `backup`, whose bytes are those of
/// `S(0)`: under the disk's lease (when there is one) the backup must carry its token (it is
/// raised again after the copy that made it), and the snapshot is taken `If-Match` the ETag
/// read with it and records the token, as a cycle's restore point does. Returns `B(0)` and
/// the ETag it was taken on (the next cycle's base).
async fn first_restore_point(
    blobs: &dyn PageBlobs,
    lease: Option<&DiskLease>,
    disk: &str,
    backup: &BlobRef,
    (tag, s0): (&str, &SnapshotId),
    guest_state: Option<&tags::GuestStateCopy>,
) -> Result<(SnapshotId, String), RestoreError> {
    let what = |w: &str| format!("{w} of {backup}");
    let props = blobs
        .properties(backup, None)
        .await
        .and_then(|p| {
            p.ok_or_else(|| {
                BlobError::local(
                    ErrorKind::NotFound,
                    Resource::blob(backup),
                    "the backup blob vanished right after the restore point was copied to it",
                )
            })
        })
        .map_err(blob_err(what("properties")))?;
    let etag = match lease {
        None => props.etag.clone(),
        Some(lease) => leased_etag(blobs, lease, disk, backup, &props).await?,
    };
    let meta = tags::with_fence(
        tags::in_chain(
            tags::restore_point_on(disk, tag, s0, &etag),
            lease.map(DiskLease::chain),
        ),
        lease.map(DiskLease::token),
    );
    // A Trusted Launch disk's B(0) names the guest state copy of the point it was restored
    // from: the new disk was uploaded with exactly that guest state (retention keeps the
    // copy while either names it).
    let meta = match guest_state {
        Some(g) => tags::with_guest_state(meta, g),
        None => meta,
    };
    let b0 = blobs
        .create_snapshot_if_match(backup, &meta, &etag)
        .await
        .map_err(blob_err(what("first restore point")))?;
    Ok((SnapshotId::new(b0), etag))
}

/// The first cycle of a rebased chain: `S(0)` taken of the restored disk, `backup` holding
/// the same bytes (both are copies of one restore point).
pub(crate) struct FirstCycle<'a> {
    pub(crate) disk: &'a str,
    /// The new chain's source, as the state binds it (a blob path or a resource id).
    pub(crate) source: String,
    pub(crate) backup: &'a BlobRef,
    pub(crate) tag: &'a str,
    pub(crate) s0: &'a SnapshotId,
    /// The guest state copy `B(0)` names (a Trusted Launch disk's).
    pub(crate) guest_state: Option<&'a tags::GuestStateCopy>,
    /// Why the chain started, for `status` and the record.
    pub(crate) note: String,
    pub(crate) now: i64,
}

/// Finishes a rebased chain's first cycle as a cycle finishes one: `B(0)` taken
/// ([`first_restore_point`]), the finished cycle recorded in the state and, under the new
/// disk's lease, in its lock blob, so the next cycle is incremental against `S(0)`. Both
/// rebases (onto a page blob, onto a managed disk) end here. Returns `B(0)`.
pub(crate) async fn finish_first_cycle(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    lease: Option<&DiskLease>,
    first: FirstCycle<'_>,
) -> Result<SnapshotId, RestoreError> {
    let (b0, etag) = first_restore_point(
        blobs,
        lease,
        first.disk,
        first.backup,
        (first.tag, first.s0),
        first.guest_state,
    )
    .await?;
    let rec = CycleRecord::rebased(
        first.disk,
        first.tag.to_string(),
        first.s0.clone(),
        b0.clone(),
        etag,
        first.note,
        first.now,
    );
    let backup = first.backup.to_string();
    store.start_chain(&rec, &first.source, &backup, first.now)?;
    if let Some(lease) = lease {
        publish_record(lease, &first.source, &backup, &rec).await?;
    }
    Ok(b0)
}
