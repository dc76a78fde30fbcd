//! The actions on snapshots: take the source snapshot `S(n)`, check the diff base, take the
//! backup snapshot `B(n)` (the restore point, `If-Match` this cycle's last write) and prune
//! the source's older snapshots. Each reconciles with what storage holds first (tagged
//! snapshots), so repeating one after a crash never duplicates its effect.

use super::find_or_make::find_or_make;
use super::machine::{self, Outcome};
use super::runner::Runner;
use crate::model::record::{CycleRecord, Phase};
use crate::model::{tags, SnapshotId};
use crate::storage::{BlobError, ErrorKind, Fence, PageBlobs, Resource};

impl Runner<'_> {
    pub(super) async fn take_source_snapshot(
        &self,
        rec: &CycleRecord,
    ) -> Result<Outcome, BlobError> {
        let source = self.source();
        // Invariant 9: this is the first request of a cycle; a missing source or a bad key
        // fails here, before anything is written anywhere.
        let s = find_or_make(
            || source.find_snapshot(&rec.disk, &rec.tag),
            || source.take_snapshot(&rec.disk, &rec.tag),
        )
        .await?;
        Ok(Outcome::SourceSnapshot {
            snapshot: s.id,
            size: s.size,
        })
    }

    pub(super) async fn check_diff_base(
        &self,
        phase: &Phase,
        base: &SnapshotId,
        expected_backup_etag: Option<String>,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let Some(props) = self.blobs.properties(backup, None).await? else {
            return Ok(Outcome::Repair {
                reason: format!("backup blob {backup} does not exist"),
            });
        };
        if let Some(expected) = expected_backup_etag {
            if props.etag != expected {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "backup blob {backup} was modified since the last restore point \
                         (ETag {} instead of {expected})",
                        props.etag
                    ),
                });
            }
        }
        let Phase::Diff { source, size, .. } = phase else {
            // `CheckDiffBase` is the action of the Diff phase only (`machine::next_action`).
            return Ok(Outcome::DiffBaseOk);
        };
        let src = self.source();
        let state = src.diff_base(base, source).await?;
        let verdict = machine::base_verdict(
            base,
            &state,
            *size,
            src.diff_boundary(),
            &self.disk.source.to_string(),
        );
        Ok(match verdict {
            Some(reason) => Outcome::Repair { reason },
            None => Outcome::DiffBaseOk,
        })
    }

    pub(super) async fn take_backup_snapshot(
        &self,
        rec: &CycleRecord,
        source: &SnapshotId,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let found =
            |s: &crate::storage::SnapshotInfo| tags::cycle(&s.metadata) == Some(rec.tag.as_str());
        let now = self.blobs.properties(backup, None).await?;
        // Snapshot Blob takes no sequence-number condition: the token is checked on the
        // properties read here, and the snapshot is sent `If-Match` the ETag read with it
        // (a later owner's raise changes the ETag, so it fails once that has happened).
        if let (Some(Fence(token)), Some(n)) = (self.fence, now.as_ref().map(|p| p.sequence_number))
        {
            if n.is_some_and(|n| n > token) {
                return Err(BlobError::local(
                    ErrorKind::Fenced,
                    Resource::blob(backup),
                    format!(
                        "the backup's sequence number is {n:?}, above this owner's token {token}"
                    ),
                ));
            }
        }
        // The base this cycle's writes left (a record from before this field: the base now).
        let written = match (&rec.written_etag, &now) {
            (Some(e), _) => e.clone(),
            (None, Some(p)) => p.etag.clone(),
            (None, None) => String::new(),
        };
        // The source's own record first, so that snapback's tags always win a clash.
        let mut meta = self.source().point_metadata(source).await?;
        meta.extend(tags::with_fence(
            tags::in_chain(
                tags::restore_point_on(&rec.disk, &rec.tag, source, &written),
                self.chain.as_deref(),
            ),
            self.fence.map(|Fence(t)| t),
        ));
        let src = self.source();
        let made = find_or_make(
            || async {
                Ok(self
                    .blobs
                    .list_snapshots(backup)
                    .await?
                    .into_iter()
                    .find(found)
                    .map(|s| s.snapshot))
            },
            // A Trusted Launch disk's VM guest state is copied first, every time B(n) is
            // still to be made: the restore point names a complete copy or is not taken.
            || async {
                let guest = self
                    .copy_guest_state(&*src, &rec.disk, &rec.tag, source)
                    .await?;
                let meta = match &guest {
                    Some(g) => tags::with_guest_state(meta.clone(), g),
                    None => meta.clone(),
                };
                self.blobs
                    .create_snapshot_if_match(backup, &meta, &written)
                    .await
            },
        )
        .await;
        let snapshot = match made {
            Ok(s) => s,
            // S(n) vanished before its guest state was copied: no restore point can name
            // it; a new S(n) is taken (as for a backup written by someone else).
            Err(e)
                if e.is_not_found()
                    && *e.resource == src.snapshot_resource(source)
                    && src.snapshot_size(source).await?.is_none() =>
            {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "source snapshot {source} vanished before its VM guest state was copied"
                    ),
                })
            }
            Err(e) if e.kind == ErrorKind::PreconditionFailed && self.fenced_now().await? => {
                return Err(BlobError {
                    kind: ErrorKind::Fenced,
                    ..e
                })
            }
            Err(e) if e.kind == ErrorKind::PreconditionFailed => {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "backup blob {backup} was written by someone else after this cycle's \
                         last write (ETag no longer {written}); no restore point is taken of it"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        let Some(props) = self.blobs.properties(backup, None).await? else {
            return Err(BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(backup),
                "the backup blob vanished right after its snapshot was taken",
            ));
        };
        Ok(Outcome::BackupSnapshot {
            snapshot: SnapshotId::new(snapshot),
            etag: props.etag,
        })
    }

    pub(super) async fn prune_source(
        &self,
        rec: &CycleRecord,
        keep: &SnapshotId,
    ) -> Result<Outcome, BlobError> {
        let source = self.source();
        if self.fenced_now().await? {
            return Err(BlobError::local(
                ErrorKind::Fenced,
                Resource::blob(&self.disk.backup),
                "a later owner raised the backup's sequence number before the prune",
            ));
        }
        // Only the snapshots older than `keep`: a prune of an owner that lost the disk (and
        // woke late) must not delete `S(n+1)` of the owner that took it over. Their deletes
        // and the end of access to `S(n)` go together (`Source::retire`).
        let older: Vec<SnapshotId> = source
            .own_snapshots(&rec.disk)
            .await?
            .into_iter()
            .take_while(|s| s != keep)
            .collect();
        source.retire(&rec.disk, &older).await?;
        // A Snapshot Blob still in flight when a previous run of this cycle was killed can
        // land after the resumed run looked for it and made its own: two snapshots carry this
        // cycle's tag. Both were taken of the same, unwritten base; only the recorded `B(n)`
        // stays a restore point (invariant 2: exactly one per cycle).
        if let Some((recorded, _)) = rec.phase.restore_point() {
            let backup = &self.disk.backup;
            for s in self.blobs.list_snapshots(backup).await? {
                let ours = tags::cycle(&s.metadata) == Some(rec.tag.as_str())
                    && tags::disk(&s.metadata) == Some(rec.disk.as_str());
                if ours && s.snapshot != recorded.as_str() {
                    tracing::warn!(disk = %rec.disk, snapshot = %s.snapshot, "deleting a second snapshot of this cycle (a request of a killed run landed late)");
                    self.blobs.delete_snapshot(backup, &s.snapshot).await?;
                }
            }
        }
        Ok(Outcome::Pruned)
    }
}
