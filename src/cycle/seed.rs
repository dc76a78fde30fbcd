//! The seed of a new backup base: a server-side Copy Blob of `S(n)` (started at most
//! [`MAX_COPY_STARTS`] times per run, found again after a crash by its copy id), or snapback's
//! own copy path when the backup service cannot read the source.

use super::error::CycleError;
use super::find_or_make::find_or_make;
use super::machine::Outcome;
use super::runner::Runner;
use crate::config::CopyMode;
use crate::model::record::{CycleRecord, PhaseName};
use crate::model::{tags, SnapshotId};
use crate::source::CopySource;
use crate::storage::copy::{self, CopyWait};
use crate::storage::{BlobError, ErrorKind, IfBlob, PageBlobs, Resource};
use std::sync::atomic::Ordering;

/// Seed copies started per run before it gives up on a copy the service keeps failing (a
/// source it cannot read, an account limit): the error goes to `status` and the daemon's
/// backoff decides when to try again, instead of restarting the copy forever.
pub const MAX_COPY_STARTS: u32 = 3;

impl Runner<'_> {
    /// Starts the seed copy of `snapshot` onto the backup: only onto no blob, or onto the
    /// backup as read with this owner's token (`If-Match`), so a later owner's blob is never
    /// copied over.
    pub(super) async fn start_copy(
        &self,
        rec: &CycleRecord,
        snapshot: &SnapshotId,
    ) -> Result<Outcome, CycleError> {
        let backup = &self.disk.backup;
        let err = |e| self.blob_err(e);
        self.blobs.ensure_container(backup).await.map_err(err)?;
        // A copy left pending by a crash before its id was recorded would make ours fail.
        let mut props = self.blobs.properties(backup, None).await.map_err(err)?;
        if let Some((id, crate::storage::CopyStatus::Pending { .. })) =
            props.as_ref().and_then(|p| p.copy.as_ref())
        {
            self.blobs.abort_copy(backup, id).await.map_err(err)?;
            props = self.blobs.properties(backup, None).await.map_err(err)?;
        }
        let condition = match &props {
            None => IfBlob::Absent,
            Some(p) => IfBlob::Is(self.fenced_etag(p, PhaseName::Copy).await?),
        };
        let before = props.and_then(|p| p.copy).map(|(id, _)| id);
        match self.start_copy_if(rec, snapshot, before, &condition).await {
            Err(e) if e.kind == ErrorKind::PreconditionFailed => {
                Err(self.unmatched(PhaseName::Copy, e).await)
            }
            r => r.map_err(err),
        }
    }

    async fn start_copy_if(
        &self,
        rec: &CycleRecord,
        snapshot: &SnapshotId,
        before: Option<String>,
        condition: &IfBlob,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let source = self.source();
        let unavailable = |e: BlobError| {
            tracing::info!(disk = %rec.disk, error = %e, "seeding by copying every page through snapback");
            Ok(Outcome::CopyUnavailable {
                reason: e.to_string(),
            })
        };
        let (blob, s) = match source.grant_read(snapshot).await {
            Ok(CopySource::Blob { blob, snapshot }) => (blob, snapshot),
            // A managed disk is seeded by copying its pages through snapback (its SAS is
            // not handed to a Copy Blob that could outlive the cycle).
            Ok(CopySource::Url { resource, .. }) => {
                return unavailable(BlobError::local(
                    ErrorKind::NoReadAccess,
                    Resource::Managed(resource),
                    "a managed disk is seeded by client copy",
                ))
            }
            Err(e) if e.kind == ErrorKind::NoReadAccess => return unavailable(e),
            Err(e) => return Err(e),
        };
        // Explicit metadata: without it Copy Blob copies the source snapshot's snapback tags
        // onto the backup base, and Snapshot Blob without metadata (someone else's snapshot
        // of the backup) would inherit them and pass for one of our restore points.
        let meta = tags::in_chain(tags::backup_base(&rec.disk), self.chain.as_deref());
        // A copy id on the backup other than the one it had before is the copy a lost answer
        // started: found, not started a second time (Azure refuses a second one onto a blob
        // with a pending copy, `409 PendingCopyOperation`).
        let started = find_or_make(
            || async {
                let now = self.blobs.properties(backup, None).await?;
                Ok(now
                    .and_then(|p| p.copy)
                    .map(|(id, _)| id)
                    .filter(|id| Some(id) != before.as_ref()))
            },
            || {
                self.blobs
                    .start_copy(backup, &blob, Some(s.as_str()), &meta, condition)
            },
        )
        .await;
        if started.is_err() {
            // No copy reads S(n): end the access granted for it.
            if let Err(e) = source.revoke_read(snapshot).await {
                tracing::warn!(disk = %rec.disk, error = %e, "could not revoke the backup service's read access");
            }
        }
        match started {
            Ok(copy_id) => Ok(Outcome::CopyStarted { copy_id }),
            // 404 CannotVerifyCopySource also comes from a service that cannot reach a source
            // that is there (a firewall, a private endpoint): only a snapshot that is really
            // gone is taken again, else every retry would take a new one, forever.
            Err(e) if e.is_not_found() && e.concerns(&source.snapshot_resource(snapshot)) => {
                match source.snapshot_size(snapshot).await? {
                    None => Ok(Outcome::SourceSnapshotGone),
                    Some(_) => self.seed_without_server_copy(e, unavailable),
                }
            }
            Err(e) if e.refuses_server_copy() => self.seed_without_server_copy(e, unavailable),
            Err(e) => Err(e),
        }
    }

    /// The backup service cannot read `S(n)`: seed through snapback's own copy path, unless
    /// the disk asks for server copy only (`copy_mode = "server"`), where the error names
    /// the cause.
    fn seed_without_server_copy(
        &self,
        e: BlobError,
        unavailable: impl FnOnce(BlobError) -> Result<Outcome, BlobError>,
    ) -> Result<Outcome, BlobError> {
        if self.disk.copy_mode == CopyMode::Server {
            return Err(BlobError {
                detail: format!(
                    "{}; the backup service cannot read the source snapshot and copy_mode = \
                     \"server\" forbids copying it through snapback",
                    e.detail
                ),
                ..e
            });
        }
        unavailable(e)
    }

    pub(super) async fn await_copy(
        &self,
        rec: &mut CycleRecord,
        snapshot: &SnapshotId,
        copy_id: &str,
    ) -> Result<Outcome, CycleError> {
        let backup = &self.disk.backup;
        let progress = |copied, total| {
            tracing::info!(disk = %rec.disk, copied, total, "seed copy in progress");
            if let Some(p) = &self.progress {
                p.report("seed copy", copied, total);
            }
        };
        let end = copy::wait(
            &self.blobs,
            backup,
            copy_id,
            self.copy_poll,
            self.copy_stall,
            &self.stop,
            progress,
        )
        .await
        .map_err(|e| self.blob_err(e))?;
        let end = match end {
            CopyWait::Stopped => {
                return Err(CycleError::Interrupted {
                    disk: rec.disk.clone(),
                    phase: PhaseName::Copy,
                })
            }
            CopyWait::Ended(end) => end,
        };
        if let copy::CopyEnd::Stalled(_) = end {
            // Still pending on the service: aborted, so that it stops reading S(n) and the
            // next start is not refused (409 PendingCopyOperation).
            if let Err(e) = self.blobs.abort_copy(backup, copy_id).await {
                tracing::warn!(disk = %rec.disk, error = %e, "could not abort the stalled copy");
            }
        }
        // The copy no longer reads S(n): end the access `start_copy` granted (a retry grants
        // it again).
        if let Err(e) = self.source().revoke_read(snapshot).await {
            tracing::warn!(disk = %rec.disk, error = %e, "could not revoke the backup service's read access");
        }
        let reason = match end {
            copy::CopyEnd::Success => {
                if let Some(p) = &self.progress {
                    p.complete();
                }
                // Copy Blob gave the backup its source's sequence number: raised to this
                // owner's token again before anything is written or snapshotted on it.
                let props = self
                    .blobs
                    .properties(backup, None)
                    .await
                    .map_err(|e| self.blob_err(e))?
                    .ok_or_else(|| {
                        self.blob_err(BlobError::local(
                            ErrorKind::NotFound,
                            Resource::blob(backup),
                            "the backup blob vanished right after its seed copy",
                        ))
                    })?;
                rec.written_etag = Some(self.fenced_etag(&props, PhaseName::Copy).await?);
                return Ok(Outcome::CopyDone);
            }
            copy::CopyEnd::Gone => format!("copy {copy_id} to {backup} is no longer there"),
            copy::CopyEnd::Failed(r) | copy::CopyEnd::Aborted(r) => r,
            copy::CopyEnd::Stalled(stall) => format!("copy {copy_id} to {backup} {stall}"),
        };
        let starts = self.copy_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if starts >= MAX_COPY_STARTS {
            return Err(CycleError::CopyKeepsFailing {
                disk: rec.disk.clone(),
                backup: backup.clone(),
                starts,
                reason,
            });
        }
        tracing::warn!(disk = %rec.disk, %reason, "copy to the backup failed; starting it again");
        Ok(Outcome::CopyFailed { reason })
    }
}
