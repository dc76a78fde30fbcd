//! [`Arm`]: the Microsoft.Compute operations snapback uses, and nothing else, as one narrow
//! trait. The managed-disk source and the restore to a managed disk see ARM only through it;
//! [`super::ArmClient`] implements it over HTTP and [`super::fake::MemArm`] in memory, so a
//! managed-disk cycle, a restore and a rebase run in simulation tests as page blobs do
//! (docs/managed-disks.md, "The ARM layer").
//!
//! The shapes are Azure's as recorded (tests/recordings/arm, tests/conformance.rs), not an
//! emulator's: a grant answers a SAS URL of its own per resource (`accessSAS`, and
//! `securityDataAccessSAS` when the VM guest state is asked for); a snapshot may come back
//! still copying (`completionPercent` below 100, Premium SSD v2 / Ultra) and the caller
//! waits for it; the limits are refused with ARM's status and code ([`ArmError::code`]).
//! Each call returns once its long-running operation ended, as [`super::ArmClient`] polls
//! it to the end.

use super::client::ArmClient;
use super::error::ArmError;
use super::id::{ResourceGroup, ResourceId};
use super::models::{Access, AccessGrant, Disk, DiskRecipe, Snapshot, Tags, UploadDiskSpec};
use async_trait::async_trait;
use std::time::Duration;

/// The ARM operations of managed-disk backups and restores.
#[async_trait]
pub trait Arm: Send + Sync {
    /// `GET` of a disk.
    async fn get_disk(&self, id: &ResourceId) -> Result<Disk, ArmError>;

    /// `GET` of a snapshot: as it is now (a background copy moves on between two reads).
    async fn get_snapshot(&self, id: &ResourceId) -> Result<Snapshot, ArmError>;

    /// Creates (or, if it exists, returns) the incremental snapshot `id` of `source`, tagged
    /// `tags`; idempotent by name. Returns once provisioned, which is not yet readable for a
    /// disk that copies in the background ([`Snapshot::is_ready`]).
    async fn create_incremental_snapshot(
        &self,
        id: &ResourceId,
        source: &Disk,
        tags: &Tags,
    ) -> Result<Snapshot, ArmError>;

    /// The snapshots in `group` made from `source` (every page of the listing).
    async fn list_snapshots(
        &self,
        group: &ResourceGroup,
        source: &ResourceId,
    ) -> Result<Vec<Snapshot>, ArmError>;

    /// Deletes a snapshot; a missing one is not an error.
    async fn delete_snapshot(&self, id: &ResourceId) -> Result<(), ArmError>;

    /// Deletes a disk; a missing one is not an error.
    async fn delete_disk(&self, id: &ResourceId) -> Result<(), ArmError>;

    /// `beginGetAccess`: a SAS URL on the resource's export (`Read`) or on a disk awaiting
    /// its upload (`Write`), for `duration`; with `guest_state`, also the VM guest state's
    /// (`getSecureVMGuestStateSAS`), answered only where the resource has one.
    async fn grant_access(
        &self,
        id: &ResourceId,
        access: Access,
        duration: Duration,
        guest_state: bool,
    ) -> Result<AccessGrant, ArmError>;

    /// `endGetAccess`: revokes the resource's SAS; on a disk being uploaded, ends the upload.
    async fn end_get_access(&self, id: &ResourceId) -> Result<(), ArmError>;

    /// Creates an empty disk awaiting an upload (`Upload`, or `UploadPreparedSecure` for a
    /// Trusted Launch `recipe`); a disk of that name that exists already is refused (409).
    async fn create_upload_disk(
        &self,
        id: &ResourceId,
        spec: &UploadDiskSpec,
        recipe: &DiskRecipe,
    ) -> Result<Disk, ArmError>;
}

/// The HTTP client: each operation is the request (and polls) documented on its method.
#[async_trait]
impl Arm for ArmClient {
    async fn get_disk(&self, id: &ResourceId) -> Result<Disk, ArmError> {
        ArmClient::get_disk(self, id).await
    }

    async fn get_snapshot(&self, id: &ResourceId) -> Result<Snapshot, ArmError> {
        ArmClient::get_snapshot(self, id).await
    }

    async fn create_incremental_snapshot(
        &self,
        id: &ResourceId,
        source: &Disk,
        tags: &Tags,
    ) -> Result<Snapshot, ArmError> {
        ArmClient::create_incremental_snapshot(self, id, source, tags).await
    }

    async fn list_snapshots(
        &self,
        group: &ResourceGroup,
        source: &ResourceId,
    ) -> Result<Vec<Snapshot>, ArmError> {
        ArmClient::list_snapshots(self, group, source, None).await
    }

    async fn delete_snapshot(&self, id: &ResourceId) -> Result<(), ArmError> {
        ArmClient::delete_snapshot(self, id).await
    }

    async fn delete_disk(&self, id: &ResourceId) -> Result<(), ArmError> {
        ArmClient::delete_disk(self, id).await
    }

    async fn grant_access(
        &self,
        id: &ResourceId,
        access: Access,
        duration: Duration,
        guest_state: bool,
    ) -> Result<AccessGrant, ArmError> {
        ArmClient::begin_get_access_with(self, id, access, duration, guest_state).await
    }

    async fn end_get_access(&self, id: &ResourceId) -> Result<(), ArmError> {
        ArmClient::end_get_access(self, id).await
    }

    async fn create_upload_disk(
        &self,
        id: &ResourceId,
        spec: &UploadDiskSpec,
        recipe: &DiskRecipe,
    ) -> Result<Disk, ArmError> {
        ArmClient::create_upload_disk_with(self, id, spec, recipe).await
    }
}
