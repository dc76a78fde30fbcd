//! The guards around the backup blob: this owner's fencing token checked before every
//! write that carries no sequence-number condition, the backup created tagged and fenced in
//! one request, a stranger's blob refused, and the [`CycleError`] each refusal from storage
//! becomes (a later owner's fence, a managed disk's limit, a source that refuses reads).
//! Apart from the runner's loop: every action and the apply call these.

use super::error::{CycleError, SnapshotLimit};
use super::runner::Runner;
use crate::model::record::{CycleRecord, PhaseName};
use crate::model::tags;
use crate::storage::{
    BlobError, BlobProps, ErrorKind, Fence, IfBlob, NewPageBlob, PageBlobs, Resource, ServiceCode,
};

impl Runner<'_> {
    /// Whether the source account refused a read of one of its snapshots (400
    /// `InvalidOperation`: older premium page-blob accounts allow only the service to copy
    /// from snapshots).
    pub(super) fn refuses_snapshot_reads(&self, e: &BlobError) -> bool {
        let of_source_snapshot = matches!(&*e.resource,
            Resource::Snapshot(b, _) if Some(b) == self.disk.source.blob());
        of_source_snapshot
            && e.kind == ErrorKind::BadRequest
            && e.service_code() == Some(ServiceCode::InvalidOperation)
    }

    pub(super) fn blob_err(&self, source: BlobError) -> CycleError {
        // A managed disk's snapshot or access refused for one of Azure's limits (named by the
        // source when the refusal came): typed, with its wait, wherever in the cycle it was.
        // Only a given source can tell (a page blob's limits are `SnapshotLimit::of`'s), and
        // `source()` must not be built here: it panics for a managed disk given none.
        if let Some(limit) = self.other_source.and_then(|s| s.limit_of(&source)) {
            return CycleError::SnapshotLimit {
                disk: self.disk.name.clone(),
                of: Box::new(self.disk.source.clone()),
                limit: SnapshotLimit::Managed(Box::new(limit)),
            };
        }
        if self.refuses_snapshot_reads(&source) {
            return CycleError::SnapshotReadRefused {
                disk: self.disk.name.clone(),
                source,
            };
        }
        CycleError::Blob {
            disk: self.disk.name.clone(),
            source,
        }
    }

    /// The error of a cycle a later owner fenced off in `phase`.
    pub(super) fn fenced_off(&self, phase: PhaseName) -> CycleError {
        CycleError::Fenced {
            disk: self.disk.name.clone(),
            backup: self.disk.backup.clone(),
            phase,
            token: self.fence.map_or(0, |Fence(t)| t),
        }
    }

    /// A storage error of a cycle in `phase`: a write the fence refused stops it as fenced.
    pub(super) fn write_err(&self, phase: PhaseName, e: BlobError) -> CycleError {
        if e.kind == ErrorKind::Fenced {
            return self.fenced_off(phase);
        }
        self.blob_err(e)
    }

    /// Before a write that takes no sequence-number condition onto the backup as `props`
    /// shows it: the ETag to send it `If-Match` on (see [`crate::ownership::token_etag`]).
    pub(super) async fn fenced_etag(
        &self,
        props: &BlobProps,
        phase: PhaseName,
    ) -> Result<String, CycleError> {
        let Some(Fence(token)) = self.fence else {
            return Ok(props.etag.clone());
        };
        match crate::ownership::token_etag(&self.blobs, &self.disk.backup, props, token).await {
            Ok(Some(etag)) => Ok(etag),
            Ok(None) => Err(self.fenced_off(phase)),
            Err(e) => Err(self.unmatched(phase, e).await),
        }
    }

    /// The error of a write to the backup sent `If-Match` an ETag that carried this owner's
    /// token ([`Runner::fenced_etag`]): refused because the backup changed since, it is
    /// fenced if the token is no longer the backup's.
    pub(super) async fn unmatched(&self, phase: PhaseName, e: BlobError) -> CycleError {
        if let (ErrorKind::PreconditionFailed, Some(Fence(token))) = (e.kind, self.fence) {
            let now = self.blobs.properties(&self.disk.backup, None).await;
            if let Ok(Some(p)) = now {
                if p.sequence_number != Some(token) {
                    return self.fenced_off(phase);
                }
            }
        }
        self.write_err(phase, e)
    }

    /// Makes the backup base blank, tagged as this disk's and carrying this owner's token, in
    /// one Put Blob, so it never exists untagged (a kill between a create and a separate tag
    /// would leave a blob the next owner refuses as foreign). An existing backup is replaced
    /// only `If-Match` the ETag read with this owner's token: never a later owner's blob.
    pub(super) async fn create_backup(
        &self,
        rec: &mut CycleRecord,
        size: u64,
    ) -> Result<(), CycleError> {
        let backup = &self.disk.backup;
        let metadata = tags::in_chain(tags::backup_base(&rec.disk), self.chain.as_deref());
        let mut refused = None;
        // Twice: a create whose answer was lost and that is retried meets its own blob.
        for _ in 0..2 {
            let props = self
                .blobs
                .properties(backup, None)
                .await
                .map_err(|e| self.blob_err(e))?;
            let condition = match &props {
                None => IfBlob::Absent,
                Some(p) => IfBlob::Is(self.fenced_etag(p, PhaseName::Apply).await?),
            };
            let new = NewPageBlob {
                metadata: metadata.clone(),
                sequence_number: self.fence.map(|Fence(t)| t),
                condition,
            };
            let size = crate::model::pages::round_up_to_page(size);
            match self.blobs.create_page_blob(backup, size, &new).await {
                Ok(_) => {
                    rec.backup_touched = true;
                    return Ok(());
                }
                // The blob changed between the read and the create; `If-None-Match: *` over
                // a blob that exists answers 409 BlobAlreadyExists.
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists
                    ) =>
                {
                    refused = Some(e)
                }
                Err(e) => return Err(self.blob_err(e)),
            }
        }
        match refused {
            Some(e) => Err(self.unmatched(PhaseName::Apply, e).await),
            None => Ok(()),
        }
    }

    /// Whether the backup carries a token above this owner's (a later owner took the disk).
    pub(super) async fn fenced_now(&self) -> Result<bool, BlobError> {
        let Some(Fence(token)) = self.fence else {
            return Ok(false);
        };
        let props = self.blobs.properties(&self.disk.backup, None).await?;
        Ok(props
            .and_then(|p| p.sequence_number)
            .is_some_and(|n| n > token))
    }

    /// The backup base's ETag now.
    pub(super) async fn backup_etag(&self) -> Result<String, CycleError> {
        let backup = &self.disk.backup;
        match self.blobs.properties(backup, None).await {
            Ok(Some(p)) => Ok(p.etag),
            Ok(None) => Err(self.blob_err(BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(backup),
                "the backup blob vanished right after it was written",
            ))),
            Err(e) => Err(self.blob_err(e)),
        }
    }

    /// Before the first write of a seed: the backup blob must be absent (snapback creates
    /// it) or carry snapback's tag for this disk, unless the operator adopts it. snapback
    /// never overwrites a blob it did not create by mistake (a typo in `backup`).
    pub(super) async fn check_backup_is_ours(&self) -> Result<(), CycleError> {
        let backup = &self.disk.backup;
        let props = self
            .blobs
            .properties(backup, None)
            .await
            .map_err(|e| self.blob_err(e))?;
        let Some(props) = props else { return Ok(()) };
        if tags::backup_of(&props.metadata) == Some(self.disk.name.as_str()) {
            return Ok(());
        }
        if self.adopt_backup {
            tracing::warn!(disk = %self.disk.name, %backup, "adopting an existing backup blob snapback did not create (adopt_existing_backup = true)");
            return Ok(());
        }
        Err(CycleError::ForeignBackup {
            disk: self.disk.name.clone(),
            backup: backup.clone(),
        })
    }
}
