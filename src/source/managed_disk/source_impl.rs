//! The [`Source`] a cycle sees, over a managed disk: each operation of the trait mapped onto
//! the ARM lookups, grants and reads of [`ManagedDiskSource`]. Apart from the machinery
//! behind it so the contract reads as one piece (docs/managed-disks.md, "The cycle").

use super::grants::Ending;
use super::{
    admit, arm_err, gone, key, limits, lock_map, ManagedDiskSource, MANAGED_DIFF_BOUNDARY,
};
use crate::arm::ResourceId;
use crate::model::pages::ByteRange;
use crate::model::BaseState;
use crate::model::{tags, SnapshotId};
use crate::source::snapshot_limits::ManagedLimit;
use crate::source::{CopySource, DiffQuery, GuestState, Source, SourceSnapshot};
use crate::storage::{BlobError, BlobResult, ErrorKind, PageList, PageListQuery, Resource};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::Ordering;

#[async_trait]
impl Source for ManagedDiskSource {
    fn check(&self) -> BlobResult<()> {
        Ok(())
    }

    fn snapshot_resource(&self, snapshot: &SnapshotId) -> Resource {
        // Canonical casing, as the errors above write it.
        match snapshot.as_str().parse::<ResourceId>() {
            Ok(id) => Resource::Managed(id.to_string()),
            Err(_) => Resource::Managed(snapshot.as_str().to_string()),
        }
    }

    async fn find_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<Option<SourceSnapshot>> {
        let id = self.snapshot_id(cycle)?;
        // The listing this cycle began with (`release`) holds every snapshot of the chain: one
        // that is not there was not made (and if it was, its PUT is idempotent by name).
        let found = {
            let seen = self.seen();
            seen.listed.then(|| seen.snapshots.get(&key(&id)).cloned())
        };
        let found = match found {
            Some(found) => found,
            None => self.get(&id).await?,
        };
        match found {
            Some(s) if tags::disk(&s.tags) == Some(disk) => Ok(Some(self.ready(&id, s).await?)),
            _ => Ok(None),
        }
    }

    async fn take_snapshot(&self, disk: &str, cycle: &str) -> BlobResult<SourceSnapshot> {
        let id = self.snapshot_id(cycle)?;
        // Invariant 9: the disk is read first; a missing disk or a refused token fails here.
        let source = self.disk().await?;
        // A disk whose network settings stop every export fails here too, named.
        crate::source::managed_disk::access::check_export(
            &source.properties.export,
            &self.disk.to_string(),
        )?;
        admit(&source)?;
        let snap = self
            .arm
            .create_incremental_snapshot(
                &id,
                &source,
                &tags::in_chain(tags::source_snapshot(disk, cycle), self.chain.as_deref()),
            )
            .await;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                let e = arm_err(&id, e);
                let copies = crate::source::managed_disk::props::DiskType::of(&source)
                    .copies_in_background();
                self.note_limit(&e, &id, limits::on_create, copies).await;
                return Err(e);
            }
        };
        self.remember(&snap);
        self.ready(&id, snap).await
    }

    async fn own_snapshots(&self, disk: &str) -> BlobResult<Vec<SnapshotId>> {
        Ok(self
            .tagged(disk)
            .await?
            .into_iter()
            .map(|s| SnapshotId::new(s.id))
            .collect())
    }

    /// None too for a snapshot of another disk: after `restore --to-managed-disk --rebase`
    /// the newest restore point records `S(0)` of the new disk, and a cycle still configured
    /// on the old disk must seed rather than diff across disks.
    async fn snapshot_size(&self, snapshot: &SnapshotId) -> BlobResult<Option<u64>> {
        let id = self.parse_id(snapshot)?;
        Ok(self
            .known(&id)
            .await?
            .filter(|s| self.of_this_disk(s))
            .and_then(|s| s.properties.disk_size_bytes))
    }

    /// Compares `sourceUniqueId` too: a disk deleted and re-created under the same name
    /// keeps its resource id (and so `sourceResourceId`), but not its unique id, and a diff
    /// across the two disks is meaningless. `S(n)` and `S(n-1)` are both known in the cycle
    /// (made and listed), so this costs no request.
    async fn diff_base(&self, base: &SnapshotId, snapshot: &SnapshotId) -> BlobResult<BaseState> {
        let base_id = self.parse_id(base)?;
        let Some(b) = self.known(&base_id).await? else {
            return Ok(BaseState::Gone);
        };
        if !self.of_this_disk(&b) {
            return Ok(BaseState::OtherSource);
        }
        let now = self.known(&self.parse_id(snapshot)?).await?;
        let was = b.properties.creation_data.source_unique_id.clone();
        let is = now.and_then(|s| s.properties.creation_data.source_unique_id);
        if let (Some(was), Some(now)) = (was, is) {
            if !was.eq_ignore_ascii_case(&now) {
                return Ok(BaseState::Recreated { was, now });
            }
        }
        Ok(match b.properties.disk_size_bytes {
            Some(size) => BaseState::Present { size },
            None => BaseState::Gone,
        })
    }

    fn diff_boundary(&self) -> Option<u64> {
        Some(MANAGED_DIFF_BOUNDARY)
    }

    async fn diff(&self, q: DiffQuery<'_>) -> BlobResult<PageList> {
        let id = self.parse_id(q.snapshot)?;
        // Access to S(n) and S(n-1) is asked for at once: two operations waited for together.
        let (sas, previous) = match q.base {
            Some(b) => {
                let base = self.parse_id(b)?;
                let (sas, previous) =
                    tokio::try_join!(self.sas_or_gone(&id), self.sas_or_gone(&base))?;
                (sas, Some(previous))
            }
            None => (self.sas_or_gone(&id).await?, None),
        };
        let query = PageListQuery {
            snapshot: None,
            prev_snapshot: None,
            range: Some(q.range),
            marker: q.marker,
            max_results: Some(q.max_results),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let page = match self
            .sas
            .page_ranges(&id.to_string(), &sas, previous.as_ref(), &query)
            .await
        {
            Err(e) if e.kind == ErrorKind::Auth => return Err(self.explain_refusal(&id, e).await),
            r => r?,
        };
        self.ranges
            .fetch_add(page.items.len() as u64, Ordering::Relaxed);
        Ok(page)
    }

    /// Starts the end of `base`'s access (if this process granted it) and returns at once:
    /// the apply goes on writing from `S(n)` while ARM ends it, so by the time prune deletes
    /// `base` its end has usually landed and the DELETE goes beside the end of `S(n)`'s
    /// access. Needs a Tokio runtime (the apply runs in one).
    fn diff_listed(&self, base: &SnapshotId) {
        let Ok(id) = self.parse_id(base) else {
            return;
        };
        let k = key(&id);
        if self.lock().remove(&k).is_none() {
            return;
        }
        lock_map(&self.guest).remove(&k);
        let arm = self.arm.clone();
        let task = tokio::spawn(async move { arm.end_get_access(&id).await });
        self.ending_lock().insert(k, Some(Ending(task)));
    }

    async fn read(&self, snapshot: &SnapshotId, range: ByteRange) -> BlobResult<Bytes> {
        let id = self.parse_id(snapshot)?;
        let sas = self.sas_or_gone(&id).await?;
        self.read_through(&id, &sas, range).await
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> BlobResult<()> {
        let id = self.parse_id(snapshot)?;
        self.delete_one(&id).await
    }

    /// Ends access and deletes at once: each older snapshot's access is ended and then it
    /// is deleted (ARM refuses to delete a snapshot with an active SAS), while access to the
    /// rest (`S(n)`) is ended beside it. `S(n-1)`'s end was started when the diff was listed
    /// ([`Source::diff_listed`]): its DELETE waits for it only if it is still running.
    async fn retire(&self, _disk: &str, older: &[SnapshotId]) -> BlobResult<()> {
        let older = older
            .iter()
            .map(|s| self.parse_id(s))
            .collect::<BlobResult<Vec<_>>>()?;
        let gone: std::collections::HashSet<String> = older.iter().map(key).collect();
        let rest: Vec<ResourceId> = self
            .with_access()
            .into_iter()
            .filter(|id| !gone.contains(&key(id)))
            .collect();
        let deletes = futures::future::try_join_all(older.iter().map(|id| self.delete_one(id)));
        let ends = futures::future::try_join_all(rest.iter().map(|id| self.end_access(id)));
        tokio::try_join!(deletes, ends)?;
        Ok(())
    }

    async fn grant_read(&self, snapshot: &SnapshotId) -> BlobResult<CopySource> {
        let id = self.parse_id(snapshot)?;
        let url = self.sas_or_gone(&id).await?;
        crate::source::managed_disk::access::server_copy_allowed(&url, &id.to_string())?;
        Ok(CopySource::Url {
            url,
            resource: id.to_string(),
        })
    }

    async fn revoke_read(&self, _snapshot: &SnapshotId) -> BlobResult<()> {
        // The same SAS serves this process's reads of the snapshot; it is ended with the
        // rest by `release` when the cycle is done.
        Ok(())
    }

    fn sibling(&self, recorded: &str, chain: Option<&str>) -> Option<Box<dyn Source + '_>> {
        let (disk, group) = crate::config::DiskSource::parse_managed(recorded)?;
        let old =
            ManagedDiskSource::new(self.arm.clone(), self.sas.clone(), disk, group).in_chain(chain);
        Some(Box::new(old))
    }

    async fn point_metadata(&self, snapshot: &SnapshotId) -> BlobResult<crate::storage::Metadata> {
        self.recorded_disk(snapshot).await
    }

    async fn guest_state(&self, snapshot: &SnapshotId) -> BlobResult<Option<GuestState>> {
        let id = self.parse_id(snapshot)?;
        let snap = self.known(&id).await?.ok_or_else(|| gone(&id))?;
        if !self.has_guest_state(Some(&snap)).await? {
            return Ok(None);
        }
        let url = self.guest_sas(&id).await?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let size = self.sas.size(&id.to_string(), &url).await?;
        let copy_from =
            crate::source::managed_disk::access::server_copy_allowed(&url, &id.to_string())
                .ok()
                .map(|()| CopySource::Url {
                    url,
                    resource: id.to_string(),
                });
        Ok(Some(GuestState {
            name: id.name.clone(),
            size,
            copy_from,
        }))
    }

    async fn read_guest_state(&self, snapshot: &SnapshotId, range: ByteRange) -> BlobResult<Bytes> {
        let id = self.parse_id(snapshot)?;
        let url = self.guest_sas(&id).await?;
        self.read_through(&id, &url, range).await
    }

    fn limit_of(&self, e: &BlobError) -> Option<ManagedLimit> {
        let noted = self.limit_lock().clone()?;
        let same = matches!(&*e.resource, Resource::Managed(r) if r.eq_ignore_ascii_case(&noted.resource))
            && e.status == Some(noted.status)
            && e.code.as_deref() == Some(noted.code.as_str());
        same.then_some(noted)
    }

    fn take_counts(&self) -> (u64, u64) {
        (
            self.requests.swap(0, Ordering::Relaxed),
            self.ranges.swap(0, Ordering::Relaxed),
        )
    }

    async fn release(&self, disk: &str) -> BlobResult<()> {
        self.tagged(disk).await?;
        let ends = self.with_access();
        futures::future::try_join_all(ends.iter().map(|id| self.end_access(id))).await?;
        Ok(())
    }
}
