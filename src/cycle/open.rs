//! Opening or resuming a disk's cycle: a re-pointed disk's old chain abandoned and its
//! snapshots swept, the lock blob's record taken over, and a new cycle's diff base read from
//! Azure's tags rather than the state alone. Apart from the runner's loop: it runs once per
//! cycle, before the first step.

use super::error::CycleError;
use super::runner::Runner;
use crate::model::record::{CycleRecord, DiffBase};
use crate::model::{tags, SnapshotId};
use crate::ownership::DiskLease;
use crate::source::{PageBlobSource, Source};
use crate::storage::{BlobError, BlobRef, ErrorKind, PageBlobs};

impl Runner<'_> {
    /// The disk's unfinished cycle, or a new one (invariant 1: never two at once). A cycle is
    /// bound to the source and backup it started with: when the config names others, it is
    /// abandoned first (see `Runner::rebind`).
    ///
    /// Under a lease, the record in the disk's lock blob is reconciled first (Azure's open
    /// cycle is resumed here; a local one the disk moved past is abandoned: see
    /// `Runner::take_over`), and the cycle opened or resumed is recorded there before its
    /// first step.
    pub async fn open_or_resume(&self) -> Result<CycleRecord, CycleError> {
        let d = self.disk;
        self.rebind().await?;
        self.store
            .register_disk(&d.name, &d.source.to_string(), &d.backup.to_string())?;
        self.take_over().await?;
        let mut rec = match self.store.open_cycle(&d.name)? {
            Some(rec) => rec,
            None => {
                // Read after the takeover, which may have moved the chain on.
                let state = self.store.disk(&d.name)?.unwrap_or_default();
                let local = state.base_snapshot.map(|s| DiffBase {
                    snapshot: SnapshotId::new(s),
                    backup_etag: state.backup_etag,
                });
                let base = self.chain_from_azure(local).await?;
                let rec = CycleRecord::new(&d.name, random_tag(), base, self.now());
                self.store.insert_cycle(rec)?
            }
        };
        // This owner raised the backup's sequence number when it took the lease: the base a
        // record expects is the same after that raise, under its new ETag (the raise was
        // If-Match the old one, so nothing else can have happened in between).
        if let Some((before, after)) = self.lease.and_then(DiskLease::raised) {
            if rec.replace_etag(before, after) {
                self.store.save_cycle(&rec, self.now())?;
            }
        }
        self.publish(&rec).await?;
        Ok(rec)
    }

    /// The disk was re-pointed (config `source` or `backup` differs from what the state
    /// recorded): the open cycle, if any, is abandoned without a restore point, and the old
    /// source's snapback snapshots (`S(n)`, `S(n-1)`) are deleted, since they belong to a chain
    /// that ends here; `register_disk` then forgets the diff base, so the next cycle seeds.
    /// Runs before the state is updated, so a failed sweep is tried again by the next run.
    async fn rebind(&self) -> Result<(), CycleError> {
        let d = self.disk;
        let Some(prev) = self.store.disk(&d.name)? else {
            return Ok(());
        };
        let (source, backup) = (d.source.to_string(), d.backup.to_string());
        if d.source.is_recorded_as(&prev.source) && prev.backup == backup {
            return Ok(());
        }
        tracing::warn!(disk = %d.name, old_source = %prev.source, old_backup = %prev.backup, %source, %backup, "disk re-pointed: its open cycle is abandoned and a new chain starts");
        // The old chain's snapshots carry its id, kept in the lock blob beside the old
        // backup (the same blob as now when only the source moved).
        let old_chain = if prev.backup == backup {
            self.chain.clone()
        } else {
            self.chain_beside(&prev.backup).await
        };
        self.sweep_recorded(&prev.source, old_chain.as_deref())
            .await?;
        if let Some(open) = self.store.open_cycle(&d.name)? {
            self.store.abandon_cycle(open.id)?;
        }
        Ok(())
    }

    /// The chain id the lock blob beside `backup` (a display form) names, if any.
    async fn chain_beside(&self, backup: &str) -> Option<String> {
        let backup = backup.parse::<BlobRef>().ok()?;
        let lock = crate::ownership::lock_blob(&backup);
        let props = self.blobs.properties(&lock, None).await.ok()??;
        tags::chain(&props.metadata).map(str::to_string)
    }

    /// Deletes this chain's snapback snapshots of the source `recorded` names (a page blob,
    /// or a managed disk with its snapshot resource group): one the disk no longer backs up.
    /// (`chain` None: storage without leases, where every snapshot of the disk is its one
    /// chain's.)
    pub(super) async fn sweep_recorded(
        &self,
        recorded: &str,
        chain: Option<&str>,
    ) -> Result<(), CycleError> {
        let d = self.disk;
        if let Ok(old) = recorded.parse::<BlobRef>() {
            let old_source = PageBlobSource::new(&self.blobs, &old).in_chain(chain);
            return self.sweep(&old_source).await;
        }
        match self.source().sibling(recorded, chain) {
            Some(old_source) => self.sweep(old_source.as_ref()).await,
            None => {
                tracing::warn!(disk = %d.name, old_source = %recorded, "old source not recognised; its snapshots are not swept");
                Ok(())
            }
        }
    }

    /// Deletes the disk's snapback snapshots of a source it no longer backs up.
    pub(super) async fn sweep(&self, old_source: &dyn Source) -> Result<(), CycleError> {
        let d = self.disk;
        let sweep = async {
            for s in old_source.own_snapshots(&d.name).await? {
                old_source.delete_snapshot(&s).await?;
            }
            Ok::<_, BlobError>(())
        };
        match sweep.await {
            Ok(()) => Ok(()),
            // The old source is gone, or its account is no longer configured: there is
            // nothing snapback can delete.
            Err(e) if e.is_not_found() || e.kind == ErrorKind::Unusable => {
                tracing::warn!(disk = %d.name, error = %e, "cannot sweep the old source's snapshots");
                Ok(())
            }
            Err(e) => Err(self.blob_err(e)),
        }
    }

    /// The diff base of a new cycle, from Azure's tags rather than the state alone: the
    /// newest restore point records `S(n-1)` and the backup ETag it was taken on. The state
    /// directory may be lost (no base: without this, a full re-seed) or rolled back (an older
    /// base: a diff onto the wrong base), so when the two disagree Azure wins. The ETag is
    /// checked against the backup before the first write as usual (invariant 7).
    async fn chain_from_azure(
        &self,
        local: Option<DiffBase>,
    ) -> Result<Option<DiffBase>, CycleError> {
        let d = self.disk;
        let snapshots = match self.blobs.list_snapshots(&d.backup).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(self.blob_err(e)),
        };
        let newest = snapshots
            .into_iter()
            .rfind(|s| tags::is_restore_point(&s.metadata, &d.name));
        let Some(newest) = newest else {
            // No restore point in Azure: nothing to diff onto, whatever the state says.
            return Ok(None);
        };
        let Some(source) = tags::source_of(&newest.metadata) else {
            return Ok(None);
        };
        if local.as_ref().is_some_and(|l| l.snapshot == source) {
            return Ok(local);
        }
        let Some(etag) = tags::base_etag(&newest.metadata) else {
            // A restore point that does not record its base: the base is unknown; seed.
            tracing::warn!(disk = %d.name, restore_point = %newest.snapshot, "the state does not match the newest restore point, which records no base ETag; seeding");
            return Ok(None);
        };
        tracing::warn!(disk = %d.name, state = ?local.as_ref().map(|l| l.snapshot.as_str()), azure = %source, "the state's diff base is not the newest restore point's source snapshot; using Azure's");
        Ok(Some(DiffBase {
            snapshot: source,
            backup_etag: Some(etag.to_string()),
        }))
    }
}

/// 16 random hex digits: the tag of one cycle's snapshots.
fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}
