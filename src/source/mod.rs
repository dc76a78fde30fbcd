//! What a backup cycle needs from the disk it backs up, whatever kind of disk it is.
//!
//! The cycle runner sees a source only through [`Source`]: take a tagged snapshot, find the
//! ones it took, diff two of them page by page, read a range, delete one, and let the backup
//! account's service read one for a server-side copy. Snapshot ids are opaque
//! ([`SnapshotId`]): a blob snapshot's timestamp for [`PageBlobSource`]; for a managed disk
//! (`crate::source::managed_disk`), the resource id of an incremental snapshot, read through a SAS URL
//! granted with `beginGetAccess` and revoked with `endGetAccess`.

pub mod managed_disk;
pub mod snapshot_limits;

use crate::model::pages::ByteRange;
use crate::model::secrets::SasUrl;
use crate::model::{tags, BaseState, BlobRef, SnapshotId};
use crate::storage::{BlobResult, PageBlobs, PageList, PageListQuery, Resource};
use async_trait::async_trait;
use bytes::Bytes;

/// A snapshot a source holds, with its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSnapshot {
    pub id: SnapshotId,
    pub size: u64,
}

/// How the backup account's service reads a source snapshot for a server-side copy (Put Page
/// From URL, Copy Blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopySource {
    /// A snapshot of a blob in a configured account; the storage layer authorises each read
    /// itself (a short-lived read SAS, or a bearer token).
    Blob { blob: BlobRef, snapshot: SnapshotId },
    /// A managed disk's snapshot exported by `beginGetAccess`: the SAS URL, and the snapshot's
    /// resource id for messages.
    Url { url: SasUrl, resource: String },
}

/// The VM guest state exported with a source snapshot: a Trusted Launch managed disk's UEFI
/// and vTPM state, a page blob beside the disk (`securityDataAccessSAS`). A restore point of
/// such a disk keeps a copy of it (docs/managed-disks.md, "Trusted Launch").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// Unique to the source snapshot (a managed snapshot's ARM name, which carries the
    /// cycle id): with the backup blob's name it names the copy, so no other cycle's or
    /// owner's copy has its name.
    pub name: String,
    /// Its length in bytes (a page blob: a multiple of 512).
    pub size: u64,
    /// Where the backup account's service can read it (Put Page From URL); None where only
    /// snapback can (an Entra-only export: see `managed_access::server_copy_allowed`).
    pub copy_from: Option<CopySource>,
}

/// One page of a diff: the changed and cleared ranges of `snapshot` since `base` (every
/// written range of `snapshot` without a base), within `range`, from `marker` on.
#[derive(Clone, Copy, Debug)]
pub struct DiffQuery<'q> {
    pub snapshot: &'q SnapshotId,
    pub base: Option<&'q SnapshotId>,
    pub range: ByteRange,
    pub marker: Option<&'q str>,
    pub max_results: u32,
}

/// The operations a cycle needs from its source. Implementations retry transient failures
/// themselves; an error returned is final for this attempt and names the resource it is
/// about, which [`Source::snapshot_resource`] lets the caller compare with.
#[async_trait]
pub trait Source: Send + Sync {
    /// Whether requests can be made at all (credentials loaded); checked before a cycle.
    fn check(&self) -> BlobResult<()>;

    /// The resource errors about `snapshot` name (to tell "this snapshot is gone" from a
    /// 404 about anything else).
    fn snapshot_resource(&self, snapshot: &SnapshotId) -> Resource;

    /// The snapshot cycle `cycle` of `disk` took, if it exists (a crash may have come
    /// between taking it and recording it).
    async fn find_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<Option<SourceSnapshot>>;

    /// Takes a snapshot tagged with `disk` and `cycle`.
    async fn take_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<SourceSnapshot>;

    /// Every snapshot tagged for `disk` in this source's chain (see
    /// `model::tags::of_chain`), oldest first.
    async fn own_snapshots(&self, disk: &str) -> BlobResult<Vec<SnapshotId>>;

    /// A snapshot's size, or None if it does not exist (any more).
    async fn snapshot_size(&self, snapshot: &SnapshotId) -> BlobResult<Option<u64>>;

    /// The diff base `S(n-1)` as the source sees it, for a diff onto `S(n)` = `snapshot`
    /// (the machine decides: [`crate::cycle::machine::base_verdict`]).
    async fn diff_base(&self, base: &SnapshotId, _snapshot: &SnapshotId) -> BlobResult<BaseState> {
        Ok(match self.snapshot_size(base).await? {
            Some(size) => BaseState::Present { size },
            None => BaseState::Gone,
        })
    }

    /// A disk size no diff between two snapshots can cross (one at or below it, the other
    /// above), if the source has one.
    fn diff_boundary(&self) -> Option<u64> {
        None
    }

    /// One page of the diff (see [`DiffQuery`]).
    async fn diff(&self, query: DiffQuery<'_>) -> BlobResult<PageList>;

    /// The diff listing against `base` is complete: every page that needed `base` was read,
    /// and what a resumed apply needs is in its checkpoint (a resume lists again from there,
    /// with `base` granted anew). The rest of the apply reads `S(n)` only, so the source may
    /// let go of `base` beside it: a managed disk ends `base`'s read access in the
    /// background (docs/managed-disks.md, "Round trips of an incremental cycle"). A page
    /// blob holds nothing per snapshot.
    fn diff_listed(&self, _base: &SnapshotId) {}

    /// Reads `range` of a snapshot.
    async fn read(&self, snapshot: &SnapshotId, range: ByteRange) -> BlobResult<Bytes>;

    /// Deletes a snapshot; one already gone is not an error.
    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> BlobResult<()>;

    /// Lets the backup service read `snapshot` (for server-side copy) until
    /// [`Source::revoke_read`]. A source that cannot grant it says so with
    /// `ErrorKind::NoReadAccess`.
    async fn grant_read(&self, snapshot: &SnapshotId) -> BlobResult<CopySource>;

    /// Ends a [`Source::grant_read`].
    async fn revoke_read(&self, snapshot: &SnapshotId) -> BlobResult<()>;

    /// Ends every read access held on `disk`'s tagged snapshots, also access a killed
    /// process granted (a managed disk allows 5 at once). Called before a cycle and when it
    /// is done; later reads grant access again.
    async fn release(&self, _disk: &str) -> BlobResult<()> {
        Ok(())
    }

    /// Prune's work on the source: deletes `older` (the chain's snapshots before `S(n)`)
    /// and ends every read access held on `disk`'s snapshots. A source may do both at once.
    async fn retire(&self, disk: &str, older: &[SnapshotId]) -> BlobResult<()> {
        for s in older {
            self.delete_snapshot(s).await?;
        }
        self.release(disk).await
    }

    /// A source of this kind for the one `recorded` names (its display form, as the state
    /// and the lock blob's record keep it), whose snapshots are swept in `chain`: the old
    /// source of a re-pointed disk. None if it is not of this kind.
    fn sibling(&self, _recorded: &str, _chain: Option<&str>) -> Option<Box<dyn Source + '_>> {
        None
    }

    /// The VM guest state exported with `snapshot`, or None when the source has none (a page
    /// blob, an ordinary managed disk). A source that should have one and cannot export it
    /// fails: a restore point is never taken without it.
    async fn guest_state(&self, _snapshot: &SnapshotId) -> BlobResult<Option<GuestState>> {
        Ok(None)
    }

    /// Reads `range` of the guest state of `snapshot` ([`Source::guest_state`]).
    async fn read_guest_state(&self, snapshot: &SnapshotId, range: ByteRange) -> BlobResult<Bytes> {
        Err(crate::storage::BlobError::local(
            crate::storage::ErrorKind::NotFound,
            self.snapshot_resource(snapshot),
            format!("no VM guest state to read {range} of"),
        ))
    }

    /// Metadata the restore point of `snapshot` carries besides snapback's tags: what a
    /// restore needs to know about the source after it is gone (a managed disk's
    /// properties, `crate::source::managed_disk::props::RecordedDisk`). Empty for a page blob.
    async fn point_metadata(&self, _snapshot: &SnapshotId) -> BlobResult<crate::storage::Metadata> {
        Ok(crate::storage::Metadata::new())
    }

    /// The Azure snapshot limit `e` (an error of this source) was refused for, if the
    /// source could tell (managed disks: decided by `crate::source::managed_disk::limits`).
    fn limit_of(
        &self,
        _e: &crate::storage::BlobError,
    ) -> Option<crate::source::snapshot_limits::ManagedLimit> {
        None
    }

    /// Storage requests made and diff ranges listed since the last call, for sources whose
    /// requests do not go through the runner's metered storage (a managed disk's SAS reads).
    fn take_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A page blob (the disk of an unmanaged VM, or any page blob) as a source: its snapshots are
/// blob snapshots tagged with snapback's metadata.
pub struct PageBlobSource<'a> {
    blobs: &'a dyn PageBlobs,
    blob: &'a BlobRef,
    /// The backup chain whose snapshots this source takes and sweeps (`snapback_chain`).
    chain: Option<&'a str>,
}

impl<'a> PageBlobSource<'a> {
    pub fn new(blobs: &'a dyn PageBlobs, blob: &'a BlobRef) -> Self {
        PageBlobSource {
            blobs,
            blob,
            chain: None,
        }
    }

    /// Snapshots taken are tagged with `chain`, and [`Source::own_snapshots`] are only this
    /// chain's (and untagged ones from before chain ids).
    pub fn in_chain(mut self, chain: Option<&'a str>) -> Self {
        self.chain = chain;
        self
    }
}

#[async_trait]
impl Source for PageBlobSource<'_> {
    fn check(&self) -> BlobResult<()> {
        self.blobs.check_account(&self.blob.account)
    }

    fn snapshot_resource(&self, snapshot: &SnapshotId) -> Resource {
        Resource::of(self.blob, Some(snapshot.as_str()))
    }

    async fn find_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<Option<SourceSnapshot>> {
        Ok(self
            .blobs
            .list_snapshots(self.blob)
            .await?
            .into_iter()
            .find(|s| {
                tags::disk(&s.metadata) == Some(disk) && tags::cycle(&s.metadata) == Some(cycle)
            })
            .map(|s| SourceSnapshot {
                id: SnapshotId::new(s.snapshot),
                size: s.size,
            }))
    }

    async fn take_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<SourceSnapshot> {
        let id = self
            .blobs
            .create_snapshot(
                self.blob,
                &tags::in_chain(tags::source_snapshot(disk, cycle), self.chain),
            )
            .await?;
        let id = SnapshotId::new(id);
        // The size of the snapshot itself: the base blob may be resized right after.
        match self.blobs.properties(self.blob, Some(id.as_str())).await? {
            Some(p) => Ok(SourceSnapshot { id, size: p.size }),
            None => Err(crate::storage::BlobError::local(
                crate::storage::ErrorKind::NotFound,
                self.snapshot_resource(&id),
                "the snapshot just taken is not there",
            )),
        }
    }

    async fn own_snapshots(&self, disk: &str) -> BlobResult<Vec<SnapshotId>> {
        Ok(self
            .blobs
            .list_snapshots(self.blob)
            .await?
            .into_iter()
            .filter(|s| tags::of_chain(&s.metadata, disk, self.chain))
            .map(|s| SnapshotId::new(s.snapshot))
            .collect())
    }

    async fn snapshot_size(&self, snapshot: &SnapshotId) -> BlobResult<Option<u64>> {
        Ok(self
            .blobs
            .properties(self.blob, Some(snapshot.as_str()))
            .await?
            .map(|p| p.size))
    }

    async fn diff(&self, q: DiffQuery<'_>) -> BlobResult<PageList> {
        let query = PageListQuery {
            snapshot: Some(q.snapshot.as_str()),
            prev_snapshot: q.base.map(SnapshotId::as_str),
            range: Some(q.range),
            marker: q.marker,
            max_results: Some(q.max_results),
        };
        self.blobs.page_ranges(self.blob, &query).await
    }

    async fn read(&self, snapshot: &SnapshotId, range: ByteRange) -> BlobResult<Bytes> {
        self.blobs
            .read(self.blob, Some(snapshot.as_str()), range)
            .await
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> BlobResult<()> {
        self.blobs
            .delete_snapshot(self.blob, snapshot.as_str())
            .await
    }

    async fn grant_read(&self, snapshot: &SnapshotId) -> BlobResult<CopySource> {
        // Nothing to grant ahead: the storage layer authorises each copy request itself.
        Ok(CopySource::Blob {
            blob: self.blob.clone(),
            snapshot: snapshot.clone(),
        })
    }

    async fn revoke_read(&self, _snapshot: &SnapshotId) -> BlobResult<()> {
        // The per-request SAS expires by itself (15 minutes for Put Page From URL, 48 hours
        // for Copy Blob), and a bearer token is not per snapshot.
        Ok(())
    }
}
