//! The only code in snapback that speaks to Azure Resource Manager: the few
//! Microsoft.Compute requests managed-disk backups need (incremental snapshots, read and
//! write SAS, disks for upload), hand-written on azure_core's pipeline because no
//! maintained ARM Compute crate exists (see docs/managed-disks.md).
//!
//! - [`id`]: resource ids of disks and snapshots, validated.
//! - [`api`]: [`Arm`], the operations snapback uses, as a trait (the client and the fake).
//! - [`fake`]: [`fake::MemArm`], an in-memory ARM and export data plane for simulation tests.
//! - [`client`]: [`ArmClient`], retries per `Retry-After` and long-running operations.
//! - [`models`]: the request and response bodies.
//! - [`credential`]: the azure_identity credential an `[azure]` table names.
//! - [`options`]: where ARM and Entra ID are and how snapback signs in (built by `config`).
//! - [`export`]: who may read a disk's export and from where (Entra-only disks, network policy).
//! - [`error`]: typed errors (kind, resource id, HTTP status, ARM error code).

pub mod api;
pub mod client;
pub mod credential;
pub mod error;
pub mod export;
pub mod fake;
pub mod id;
pub mod models;
pub mod options;

pub use api::Arm;
pub use client::{ArmClient, ArmOptions, PollPolicy, RetryPolicy};
pub use error::{ArmError, ArmErrorKind};
pub use export::{ExportBlocked, ExportPolicy, ExportProperty};
pub use id::{ResourceGroup, ResourceId, ResourceKind};
pub use models::{
    Access, AccessGrant, Disk, DiskRecipe, Encryption, SecurityProfile, Snapshot,
    SupportedCapabilities, Tags, UploadDiskSpec, TRUSTED_LAUNCH,
};

/// The Microsoft.Compute (DiskRP) REST version of every request.
pub const API_VERSION: &str = "2024-03-02";
